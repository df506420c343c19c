"""The failure semantics of one embed job across its attempts.

Every failure leaves a record (the rule's log, which Snakemake keeps after a failure) and one
line naming the file, and exits non-zero so Snakemake retries or gives up on this file while
the others go on. A retry learns what happened to the attempts before it from the copy of the
last record in the run state (Snakemake deletes the log before each attempt):
- a verdict that would repeat (bad input, a sequence too large for the device) is repeated
  without any model work;
- a crash, a device error or an unforeseen error is retried on another device: every device
  an earlier attempt failed on is avoided, and the retry waits for a healthy one rather than
  take the failing one because it happens to be free;
- an attempt that had finished, whose embedding Snakemake removed because another job of its
  group failed, is restored from its receipt rather than computed again.
When the disk cannot take the record, the one line still names the file and the reason, and
the run state (whose space is reserved) still counts the failure towards the abort.
"""

from __future__ import annotations

import contextlib
import socket
import time

from seqembed import runstate
from seqembed.devices import slurm_job
from seqembed.errors import (
    Aborted,
    Crash,
    OutputError,
    Verdict,
    classify,
    failure_line,
)
from seqembed.job.embed import EmbedJob, run_embed_job
from seqembed.job.progress import JobProgress, publish_outcome
from seqembed.job.records import last_attempt_path, read_record, restore, write_record

#: failures that may be the device's fault: a retry stays away from the device
DEVICE_SUSPECT = {"Crash", "DeviceError", "Error", "OOM"}


def run_or_record_failure(job: EmbedJob) -> dict:
    previous = read_record(last_attempt_path(job.state_dir, job.name))
    retry_of = previous if previous and previous.get("attempt", 0) < job.attempt else None
    history = list((retry_of or {}).get("previous_attempts", []))
    try:
        if retry_of and retry_of["status"] == "done":
            restored = restore_finished(job, retry_of)
            if restored:
                return restored
            retry_of = None  # computed again, as a first attempt would
        if retry_of and retry_of["status"] == "running":
            reported = runstate.attempt_outcome(job.state_dir, job.name, retry_of["attempt"])
            if reported and reported["error_type"]:
                # it failed, and said so where the disk had room, but not in its record
                retry_of = {**retry_of, **_verdict_of_event(reported).as_dict()}
            else:
                # the previous attempt of this run died without a word: killed, segfault, node
                verdict = classify(
                    Crash(
                        f"attempt {retry_of['attempt']} ended without a result on "
                        f"{retry_of['device']}"
                    )
                )
                retry_of = {**retry_of, **verdict.as_dict()}
                count_failure(job, verdict, retry_of["attempt"])
        if retry_of:
            history.append(_attempt(retry_of))
            if retry_of.get("deterministic"):
                _fail(job, history, Verdict.from_dict(retry_of))
        avoid = [
            attempt["device"]
            for attempt in history
            if attempt.get("device") and attempt["error_type"] in DEVICE_SUSPECT
        ]
        reason = runstate.abort_reason(job.state_dir)
        if reason:
            raise Aborted(f"not started: {reason}")
        record = run_embed_job(job, avoid=avoid, history=history)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - every failure must leave a record
        verdict = classify(error)
        if verdict.error_type == Aborted.error_type and history:
            # a retry the abort kept from starting or stopped on its way (in this process or
            # in the worker): what the file last failed with stays its verdict
            last = history[-1]
            message = f"{last['error_message']} (not retried: the run was aborted)"
            verdict = Verdict(last["error_type"], False, True, message)
        count_failure(job, verdict, job.attempt)
        _fail(job, history, verdict)
    with contextlib.suppress(OSError):  # the success is on disk; only the streak misses it
        runstate.record_outcome(job.state_dir, job.name, job.fasta, None, attempt=job.attempt)
    return record


def restore_finished(job: EmbedJob, done: dict) -> dict | None:
    """An attempt before this one finished, and Snakemake removed its output (its group or
    bundle failed, the job was killed after the rename, or a bundle runs again for its other
    files): put it back if it is still valid. The record says when, so that the failure
    handler puts it back again should this job fail too."""
    if not restore(done, job.state_dir, job.settings):
        return None
    record = {
        **done,
        "attempt": job.attempt,
        "restored_from_attempt": done["attempt"],
        "restored": time.time(),
    }
    with contextlib.suppress(OutputError):
        write_record(job.record, job.state_dir, record)
    # the live view counts it done, also where no attempt of this run computed it
    progress = JobProgress(job.state_dir, job.name, file=job.fasta, attempt=job.attempt)
    progress.update(status="done", total=record.get("sequences"), done=record.get("sequences"))
    return record


def count_failure(job, verdict: Verdict, attempt: int) -> None:
    """Into the run's event log (whose space is reserved): towards the abort if the failure
    counts, and for the summary and the next attempt in any case, should the record not make
    it to the disk. `job`: an embed or a gather job (its state_dir, name and fasta)."""
    try:
        runstate.record_outcome(
            job.state_dir,
            job.name,
            job.fasta,
            verdict.error_type,
            verdict.message,
            counts=verdict.counts_towards_abort,
            deterministic=verdict.deterministic,
            attempt=attempt,
        )
    except OSError as error:
        print(
            f"seqembed: warning: {job.fasta}: the failure could not be counted towards the "
            f"abort ({error.strerror or error})",
            flush=True,
        )


def _verdict_of_event(event: dict) -> Verdict:
    return Verdict(
        event["error_type"],
        bool(event.get("counts", True)),
        bool(event.get("deterministic")),
        event["message"],
    )


def _attempt(record: dict) -> dict:
    return {
        "attempt": record["attempt"],
        "device": record.get("device"),
        "error_type": record["error_type"],
        "error_message": record["error_message"],
    }


def _fail(job: EmbedJob, history: list[dict], verdict: Verdict):
    # the device this attempt had claimed, from its "running" record, so a retry avoids it
    current = read_record(last_attempt_path(job.state_dir, job.name)) or {}
    this_attempt = current if current.get("attempt") == job.attempt else {}
    record = {
        "status": "failed",
        "name": job.name,
        "file": job.fasta,
        "output": job.output,
        "shard": job.shard,
        "attempt": job.attempt,
        "device": this_attempt.get("device"),
        "lane": this_attempt.get("lane"),
        # when it held the device, for the timeline
        "started": this_attempt.get("started"),
        "claimed": this_attempt.get("claimed"),
        "host": socket.gethostname(),
        "slurm_job_id": slurm_job(),
        **verdict.as_dict(),
        "previous_attempts": history,
        "finished": time.time(),
    }
    unrecorded = ""
    try:
        write_record(job.record, job.state_dir, record)
    except OutputError:
        unrecorded = " (its record could not be written either)"
    publish_outcome(
        job.state_dir,
        job.name,
        status="failed",
        file=job.fasta,
        shard=job.shard,
        attempt=job.attempt,
        error_type=verdict.error_type,
        error_message=verdict.message,
    )
    line = failure_line(job.fasta, verdict.error_type, verdict.message, job.shard)
    raise SystemExit(line + unrecorded)
