"""One embed job: one FASTA file in, one embedding file and one record out (the failure
semantics around it are in seqembed.job.attempts).

Order matters: the input is checked before a device is claimed or a model touched, so a bad
file costs a fraction of a second. The computing happens in the claimed device's resident
worker (seqembed.compute.worker), or with `worker: per_file` in this process; either way the
output arrives under a temporary name, and the job renames it only after a last look at the
run: an abort that came meanwhile wins.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import resource
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from seqembed import faults, runstate
from seqembed.claims import claim_device
from seqembed.compute.backends import PROTEIN_ALPHABET, alphabet_for
from seqembed.devices import (
    lane_for,
    resolve_pool,
    slurm_job,
)
from seqembed.errors import Aborted, Crash
from seqembed.fasta import read_fasta
from seqembed.job.handoff import compute
from seqembed.job.progress import JobProgress, news_level, say
from seqembed.job.records import code_stamp, input_stamp, keep_receipt, write_record
from seqembed.lock_holders import holder_line
from seqembed.output import commit, is_temporary_of, output_error, stale_temporaries
from seqembed.shards import parse_label


@dataclass(frozen=True)
class EmbedJob:
    name: str
    fasta: str
    output: str
    record: str
    config: dict  # validated (seqembed.run.config.validate_config)
    plan_path: str
    state_dir: str
    logs_dir: str
    #: the settings that make an embedding stale (the embed rule's params)
    settings: dict = field(default_factory=dict)
    threads: int = 1
    attempt: int = 1
    #: a shard (seqembed.shards): its label, the bytes of the content whose records it owns,
    #: and its file's output, which the gather will make anew
    shard: str | None = None
    section: tuple[int, int | None] = (0, None)
    replaces: str | None = None
    #: False for a bundle's files after its first: the process started once for them all
    startup_counted: bool = True

    @property
    def input_name(self) -> str:
        """The input file's name, as the plan lists it (a shard's job is named apart)."""
        return self.name.removesuffix(f".shard-{self.shard}") if self.shard else self.name

    @property
    def output_dir(self) -> str:
        """The run's output folder, as the device claims name it to other runs."""
        return str(Path(self.plan_path).resolve().parent)


def planned_device(tsv: str | os.PathLike, name: str, shard: str | None = None) -> str | None:
    """The planned device for `name` (for one of its shards: that shard's, from the file's
    comma-separated list), or None while the plan does not exist (yet) or does not list it:
    the plan rule may still be running when the first jobs start."""
    try:
        with open(tsv, newline="") as handle:
            text = handle.read()
        row = _plan_row(text, name)
        if row is None:
            return None
        devices = row["device"].split(",")
        index = parse_label(shard)[0] - 1 if shard else 0
        return devices[index] if index < len(devices) else None
    except (OSError, KeyError, ValueError, csv.Error):
        return None


def _plan_row(text: str, name: str) -> dict | None:
    """The plan's row of `name`: found by its line's start, where the name needs no quoting
    (one search through the text, where parsing every row cost every job 15 ms at 10,000
    files), else by reading the rows."""
    header, _, _ = text.partition("\n")
    start = text.find(f"\n{name}\t")
    if start >= 0 and not any(char in name for char in '\t\n\r"'):
        end = text.find("\n", start + 1)
        line = text[start + 1 : end if end >= 0 else len(text)]
        return next(csv.DictReader([header, line], delimiter="\t"))
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        if row["name"] == name:
            return row
    return None


def waiting_news(job: EmbedJob, holders: dict[str, dict]) -> None:
    """Waiting for a device is routine within a run; a device held by another run or user is
    not, and is said at any verbosity but quiet, naming the holder the kernel knows (another
    user's output folder is never shown)."""
    others = [
        holder_line(label, holder)
        for label, holder in holders.items()
        if holder
        and (holder.get("uid") != os.getuid() or holder.get("output_dir"))
        and holder.get("output_dir") != job.output_dir
    ]
    if others:
        say(
            job.config,
            "normal",
            f"{job.name}: waiting for a device held by another run: " + "; ".join(others),
        )
    else:
        say(job.config, news_level(), f"{job.name}: waiting for a free device")


def process_started() -> float:
    """When this process started, to the kernel's clock tick: its age, from its start in
    ticks since boot (/proc/self/stat) against the clock since boot. psutil dates it from a
    boot time rounded to whole seconds: up to a second early, startup figures too high."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, counted after "pid (comm)"
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        return psutil.Process().create_time()


def long_sequence_counts(lengths: list[int], config: dict) -> dict:
    """Sequences longer than the window (the truncation): cut, or embedded whole in windows
    (the worker's figures add `windows`, the windows computed)."""
    long = sum(n > config["truncation"] for n in lengths)
    if config["long_sequences"] == "windows":
        return {"truncated_sequences": 0, "windowed_sequences": long}
    return {"truncated_sequences": long, "windowed_sequences": 0}


def planned_windows(lengths: list[int], config: dict) -> int:
    """The windows the file's long sequences take (duplicates counted), for the live view."""
    if config["long_sequences"] != "windows":
        return 0
    from seqembed.compute.windows import window_count

    width, overlap = config["truncation"], config["window_overlap"]
    return sum(window_count(n, width, overlap) for n in lengths if n > width)


def empty_shard(output: str) -> dict:
    """What compute() returns, for a shard without records (past the first)."""
    from seqembed.compute.gather import write_empty_shard

    figures = ("unique_sequences", "real_tokens", "computed_tokens", "batches", "oom_backoffs")
    figures += ("windows",)
    return {
        "temporary": str(write_empty_shard(output)),
        **dict.fromkeys(figures, 0),
        "model": None,
        "layers": [],
        "compute_seconds": 0.0,
        "model_was_loaded": True,
        "model_load_seconds": 0.0,
    }


def run_embed_job(job: EmbedJob, *, avoid: list[str] = (), history: list[dict] = ()) -> dict:
    """Embed one file and write its output and record; returns the record."""
    started = time.time()
    config = job.config
    alphabet = alphabet_for(config["model"], config["model_cache"])
    # a trailing stop ends translated reads; nucleotide files have none
    records = read_fasta(
        job.fasta, alphabet, trailing_stop=alphabet == PROTEIN_ALPHABET, section=job.section
    )
    lengths = [len(sequence) for sequence in records.sequences]
    for stale in stale_temporaries(job.output):
        # a folder that refuses this says so once, where the writer reserves its temporary
        with contextlib.suppress(OSError):
            stale.unlink(missing_ok=True)
    if job.replaces:
        # as Snakemake removes a job's output when it starts: a shard that fails must not
        # leave its file's last output to be taken for this run's
        try:
            Path(job.replaces).unlink(missing_ok=True)
        except OSError as error:
            raise output_error(job.replaces, error) from None
    progress = JobProgress(
        job.state_dir,
        job.name,
        file=job.fasta,
        shard=job.shard,
        attempt=job.attempt,
        total=len(lengths),
    )
    progress.update(status="waiting")

    planned = planned_device(job.plan_path, job.input_name, job.shard)
    if lengths:
        claim = claim_device(
            resolve_pool(config["device"], config["gpus"], config["cpu_slots"]),
            config["lock_dir"],
            holder=job.name,
            prefer=[planned] if planned else [],
            avoid=avoid,
            note={"output_dir": job.output_dir},
            on_wait=lambda holders: waiting_news(job, holders),
        )
        label = claim.label
    else:
        # nothing to compute: the model is loaded on the CPU only for its layers and width
        claim, label = contextlib.nullcontext(), "cpu:0"
    base = {
        "name": job.name,
        "file": job.fasta,
        "output": job.output,
        "input": input_stamp(job.fasta),
        "settings": job.settings,
        "code": code_stamp(),
        "shard": job.shard,
        "section": list(job.section) if job.shard else None,
        "device": label if lengths else None,
        # the physical device, for reports (inside SLURM: node and GPU)
        "lane": lane_for(label) if lengths else None,
        "planned_device": planned,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # inside SLURM: which job, and the GPUs it was granted (the pool it claimed from)
        "slurm_job_id": slurm_job(),
        "slurm_gpus": slurm_job() and os.environ.get("CUDA_VISIBLE_DEVICES"),
        "attempt": job.attempt,
        "previous_attempts": list(history),
        "started": started,
    }
    with claim:
        base["claimed"] = time.time()
        # until this is replaced, a crash of this process leaves "running" behind: the retry
        # reads it to avoid the device (and keeps the earlier attempts), the summary to name
        # the crash
        write_record(job.record, job.state_dir, {**base, "status": "running"})
        if lengths:  # an empty file occupies no device
            progress.update(
                status="running",
                device=base["device"],
                lane=base["lane"],
                windows=planned_windows(lengths, config),
            )

        def on_event(event: dict) -> None:
            if event["event"] == "progress":
                progress.advance(event["done"])
            elif event["event"] == "log":
                say(config, "verbose", f"{job.name}: {event['message']}")
            elif event["event"] == "accepted":  # which worker computes the file
                progress.update(worker_pid=event["pid"])

        request = {
            "name": job.name,
            "attempt": job.attempt,
            "ids": records.ids,
            "sequences": records.sequences,
            "output": job.output,
            "layers": config["layers"],
            "toks_per_batch": config["toks_per_batch"],
            "truncation": config["truncation"],
            "long_sequences": config["long_sequences"],
            "window_overlap": config["window_overlap"],
            "output_layout": config["output_layout"],
            "include": config["include"],
            "output_format": config["output_format"],
            "store_float16": config["store_float16"],
            "source": job.fasta,
            "shards": parse_label(job.shard)[1] if job.shard else 1,
            "state_dir": job.state_dir,
        }
        if not lengths and job.shard and parse_label(job.shard)[0] > 1:
            stats = empty_shard(job.output)  # no model needed: the gather skips it
        else:
            stats = compute(job, label, request, on_event)
        temporary = stats.pop("temporary")
        reason = runstate.abort_reason(job.state_dir)
        if reason:
            Path(temporary).unlink(missing_ok=True)
            raise Aborted(f"stopped: {reason}")
        if not is_temporary_of(temporary, job.output):
            raise Crash(
                f"the output handed back for {job.output} ({temporary}) is not a file this "
                "job's writer makes: not used"
            )
        faults.maybe_pause_before_rename(job.name, job.attempt)
        try:
            commit(temporary, job.output)
        except OSError as error:
            raise output_error(job.output, error) from None
        keep_receipt(job.state_dir, job.name, job.output)

    finished = time.time()
    record = {
        **base,
        **stats,
        "status": "done",
        "sequences": len(lengths),
        "residues": sum(lengths),
        **long_sequence_counts(lengths, config),
        "duplicate_ids": len(records.ids) - len(set(records.ids)),
        "finished": finished,
        # interpreter, imports and Snakemake's script preamble, before this function ran
        "startup_seconds": max(0.0, started - process_started()) if job.startup_counted else 0.0,
        "waited_seconds": base["claimed"] - started,
        "wall_seconds": finished - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_record(job.record, job.state_dir, record)
    progress.update(status="done", done=len(lengths))
    say(
        config,
        news_level(),
        f"{job.name}: {len(lengths)} sequences on {record['device']} in "
        f"{finished - started:.1f} s"
        + (
            ""
            if record["model_was_loaded"]
            else f" (model load {stats['model_load_seconds']:.1f} s)"
        ),
    )
    return record
