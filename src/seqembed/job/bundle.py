"""One bundle job (seqembed.bundles): its files one after another, each with the failure
semantics of a job of its own (seqembed.job.attempts). A failed file does not stop the
others; the job fails at the end if any file did, so that Snakemake retries the bundle, and
each failure has printed its one line naming its file."""

from __future__ import annotations

import dataclasses
import sys

from seqembed import runstate
from seqembed.job.attempts import restore_finished, run_or_record_failure
from seqembed.job.embed import EmbedJob
from seqembed.job.records import last_attempt_path, read_record


def run_bundle(jobs: list[EmbedJob]) -> list[dict]:
    """The records of the files that are done; SystemExit(1) after the last file when any
    failed or the run was aborted meanwhile. After an abort the files not yet started stay
    so, as the jobs Snakemake did not start (the summary says why), but those an earlier run
    finished are still put back: Snakemake removed them when this job started."""
    done, failed, not_started, computed = [], 0, 0, 0
    aborted = None
    for job in jobs:
        # only the first file computed pays for the interpreter and Snakemake's preamble
        job = dataclasses.replace(job, startup_counted=not computed)
        kept = _kept(job)
        if kept:
            done.append(kept)
            continue
        aborted = runstate.abort_reason(job.state_dir)
        if aborted:
            not_started += 1
            continue
        computed += 1
        try:
            done.append(run_or_record_failure(job))
        except SystemExit as failure:
            failed += 1
            print(failure.code, file=sys.stderr, flush=True)
    if not_started:
        print(
            f"seqembed: Aborted: {not_started} file(s) of this bundle not started: {aborted}",
            file=sys.stderr,
            flush=True,
        )
    if failed or not_started:
        raise SystemExit(1)
    return done


def _kept(job: EmbedJob) -> dict | None:
    """The file's embedding from an earlier attempt or run, put back (seqembed.bundles
    keep_finished), or None to compute it."""
    previous = read_record(last_attempt_path(job.state_dir, job.name))
    if not previous or previous.get("status") != "done":
        return None
    return restore_finished(job, previous)
