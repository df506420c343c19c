"""seqembed: language-model embeddings for many FASTA files, one job per file.

Quick start: `make demo`. Configuration: config/config.yaml (every key documented there).
"""

import atexit
import gc
import os
import signal
import sys
from pathlib import Path

# The package lives next to this file; no installation needed to run from a clone.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from seqembed import bundles, runstate
from seqembed.devices import resolve_pool, slots_warning
from seqembed.layout import RunLayout
from seqembed.report import view
from seqembed.report.summary import exit_code_after_failure
from seqembed.run.config import (
    ConfigError,
    check_writable,
    input_files,
    unusable_inputs,
    validate_config,
)
from seqembed.run.last_word import LastWord
from seqembed.run.preflight import preflight_in_subprocess
from seqembed.shards import idle_warning

# The DAG of many files is millions of objects that live until the process ends: the
# collector's full passes over them while it is built (50,000 files: ~9 s) and its last one at
# exit (~6 s) free nothing. Off while the workflow is read and the DAG built (a dry run ends
# that way); onstart puts the DAG out of its sight and turns it back on.
gc.disable()
atexit.register(gc.freeze)


# the documented defaults travel with the workflow; --configfile / --config override them
configfile: Path(workflow.basedir) / "config/config.yaml"


try:
    config.update(
        validate_config(
            config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
        )
    )
    FILES = input_files(config)
    check_writable(config["output_dir"])
except ConfigError as error:
    sys.exit(f"seqembed: {error}")
UNUSABLE = unusable_inputs(config)
for path, reason in UNUSABLE.items():
    print(f"seqembed: warning: skipped input {path}: {reason}", file=sys.stderr)
view.configure(config["verbosity"])

LAYOUT = RunLayout(config["output_dir"], config["output_format"])
# the failure report, also where Snakemake ends before its handler (seqembed.run.last_word)
LAST_WORD = LastWord()
# every file's output, for rule all and the summary
EMBEDDINGS = [LAYOUT.embedding(name) for name in FILES]


# The embeddings are targets themselves, not only inputs of the summary: Snakemake does not
# rebuild a missing intermediate file while the files made from it are up to date, and a
# deleted or failed embedding must always be redone.
rule all:
    default_target: True
    input:
        EMBEDDINGS,
        LAYOUT.plan_tsv,
        LAYOUT.summary,
        LAYOUT.failed,


include: "workflow/rules/common.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/bundle.smk"
include: "workflow/rules/gather.smk"
include: "workflow/rules/summary.smk"


# Runs only when there is work to do, never in a dry run, before the first job starts.
# The checks run in a child process: the Snakemake process never imports torch or
# creates a CUDA context.
onstart:
    # the DAG is built: out of the collector's passes while the jobs run
    gc.freeze()
    gc.enable()
    # on a cluster the devices are the nodes': each job checks its own
    failure = preflight_in_subprocess(dict(config), devices=workflow.local_exec)
    if failure:
        sys.exit(f"seqembed: pre-flight failed: {failure}")
    # a fresh run: earlier failures no longer count towards an abort, speed is measured anew
    runstate.reset(LAYOUT.state, scheduler_pid=os.getpid())
    # a bundle runs again for its files that failed or are missing: the others come back
    bundles.keep_finished(LAYOUT, BUNDLES)
    LAST_WORD.arm(
        lambda: view.detach()
        or exit_code_after_failure(LAYOUT, FILES, OUTPUT_SETTINGS, UNUSABLE, SHARDS)
    )
    # an abort declared by any job, here or on a cluster node, stops this process as Ctrl-C
    # would: nothing more is started or submitted, and onerror writes the summary
    runstate.watch_for_abort(
        LAYOUT.state,
        lambda reason: os.kill(os.getpid(), signal.SIGINT),
        interval_s=0.5,
    )
    if BUNDLES and not workflow.local_exec:
        print(
            "seqembed: warning: bundle_size is for runs on one host: its rules do not get "
            "the profile's embed resources; on a cluster pack files with --groups (README)",
            file=sys.stderr,
        )
    # the view lists this host's devices; on a cluster it learns the nodes' from the jobs
    pool = []
    if workflow.local_exec:
        pool = resolve_pool(config["device"], config["gpus"], config["cpu_slots"])
        warnings = [
            slots_warning(
                workflow.global_resources.get("gpu").value,
                workflow.global_resources.get("_cores").value,
                pool,
            ),
            idle_warning(FILES, pool, config["shard_size"]),
            bundles.idle_warning(BUNDLES, pool),
        ]
        for warning in filter(None, warnings):
            print(f"seqembed: warning: {warning}", file=sys.stderr)
    view.attach(
        view.RunInfo(
            LAYOUT.state,
            # with shards the view counts jobs: a sharded file is as many as its shards
            files_total=len(FILES) + sum(SHARDS.values()) - len(SHARDS),
            devices=tuple(pool),
            verbosity=config["verbosity"],
            local=workflow.local_exec,
            unit="jobs" if SHARDS else "files",
            bundles=BUNDLES,
        )
    )


onsuccess:
    LAST_WORD.said()


# With keep-going, the summary rule does not run once a job failed: the same summary is
# written here, and the exit code says what happened (sys.exit in a handler is how Snakemake
# lets a workflow choose it; its locks are still released).
onerror:
    view.detach()
    LAST_WORD.said()
    sys.exit(
        exit_code_after_failure(LAYOUT, FILES, OUTPUT_SETTINGS, UNUSABLE, SHARDS)
    )
