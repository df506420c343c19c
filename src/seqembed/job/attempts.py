"""The failure semantics of one embed job across its attempts.

Every failure leaves a record (the rule's log, which Snakemake keeps after a failure) and one
line naming the file, and exits non-zero so Snakemake retries or gives up on this file while
the others go on. A retry learns what happened to the attempt before it from the copy of its
record in the run state (Snakemake deletes the log before each attempt): a verdict that would
repeat (bad input, a sequence too large for the device) is repeated without loading the model
again; a crash or a device error is retried on another device.
"""

from __future__ import annotations

import socket
import time
import traceback

from seqembed import runstate
from seqembed.compute.backends import ModelError
from seqembed.compute.batch_loop import SequenceTooLarge
from seqembed.devices import DeviceError, slurm_job
from seqembed.fasta import InputError
from seqembed.job.embed import EmbedJob, last_attempt_path, read_record, run_embed_job, write_record
from seqembed.job.progress import publish_outcome


class Aborted(Exception):
    """The run was aborted by earlier failures; this file was not attempted."""


#: error type for failed_files.txt; whether it counts towards the systemic abort (input
#: problems say nothing about the model, driver or node); whether a retry would fail the
#: same way, so that the retry repeats the verdict instead of loading the model again
ERROR_TYPES = {
    InputError: ("InputError", False, True),
    Aborted: ("Aborted", False, True),
    ModelError: ("ModelError", True, True),
    SequenceTooLarge: ("OOM", True, True),
    DeviceError: ("DeviceError", True, False),
}


def _classify(error: BaseException) -> tuple[str, bool, bool, str]:
    """error type, counts towards the abort, deterministic, one-line message"""
    message = " ".join(str(error).split())
    for kind, (error_type, runtime, deterministic) in ERROR_TYPES.items():
        if isinstance(error, kind):
            return error_type, runtime, deterministic, message
    if type(error).__name__ == "OutOfMemoryError":
        # outside the batch loop (moving the model to a busy GPU): another device may do
        return "OOM", True, False, message
    # a bug, a failing GPU or an unforeseen library error: keep the traceback for whoever
    # debugs it, and let the retry try another device
    traceback.print_exc()
    return "Error", True, False, f"{type(error).__name__}: {message}"


def run_or_record_failure(job: EmbedJob) -> dict:
    """Run the job with the failure semantics of a run: every failure leaves a record (the
    rule's log, which Snakemake keeps after a failure) and one line naming the file, and
    exits non-zero so Snakemake retries or gives up on this file while the others go on."""
    previous = read_record(last_attempt_path(job))
    retry_of = previous if previous and previous.get("attempt", 0) < job.attempt else None
    history = list((retry_of or {}).get("previous_attempts", []))
    avoid: list[str] = []
    completed_streak = False  # this job's outcome aborts the run: it stops the scheduler
    try:
        if retry_of and retry_of["status"] == "running":
            # the previous attempt of this run died without a word: killed, segfault, node
            crash = f"attempt {retry_of['attempt']} ended without a result on {retry_of['device']}"
            retry_of = {**retry_of, "error_type": "Crash", "error_message": crash}
            completed_streak = bool(
                runstate.record_outcome(job.state_dir, job.name, job.fasta, "Crash", crash)
            )
        if retry_of:
            history.append(_attempt(retry_of))
            if retry_of.get("deterministic"):
                _fail(job, history, retry_of["error_type"], retry_of["error_message"], True)
            avoid = [retry_of["device"]] if retry_of.get("device") else []
        reason = runstate.abort_reason(job.state_dir)
        if reason:
            raise Aborted(reason)
        record = run_embed_job(job, avoid=avoid)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - every failure must leave a record
        error_type, runtime, deterministic, message = _classify(error)
        if runtime and runstate.record_outcome(
            job.state_dir, job.name, job.fasta, error_type, message
        ):
            completed_streak = True
        _fail(job, history, error_type, message, deterministic, stop_run=completed_streak)
    if history:
        record["previous_attempts"] = history
        write_record(job, record)
    runstate.record_outcome(job.state_dir, job.name, job.fasta, None)
    return record


def _attempt(record: dict) -> dict:
    return {
        "attempt": record["attempt"],
        "device": record.get("device"),
        "error_type": record["error_type"],
        "error_message": record["error_message"],
    }


def _fail(
    job: EmbedJob,
    history: list[dict],
    error_type: str,
    message: str,
    deterministic: bool,
    stop_run: bool = False,
):
    # the device this attempt had claimed, from its "running" record, so a retry avoids it
    current = read_record(last_attempt_path(job)) or {}
    this_attempt = current if current.get("attempt") == job.attempt else {}
    write_record(
        job,
        {
            "status": "failed",
            "name": job.name,
            "file": job.fasta,
            "attempt": job.attempt,
            "device": this_attempt.get("device"),
            "lane": this_attempt.get("lane"),
            # when it held the device, for the timeline
            "started": this_attempt.get("started"),
            "claimed": this_attempt.get("claimed"),
            "host": socket.gethostname(),
            "slurm_job_id": slurm_job(),
            "error_type": error_type,
            "error_message": message,
            "deterministic": deterministic,
            "previous_attempts": history,
            "finished": time.time(),
        },
    )
    publish_outcome(
        job.state_dir,
        job.name,
        status="failed",
        file=job.fasta,
        attempt=job.attempt,
        error_type=error_type,
        error_message=message,
    )
    if stop_run:
        # after the record is safe: stopping the scheduler ends this job too
        runstate.stop_scheduler(job.state_dir)
    where = "" if job.fasta in message else f"{job.fasta}: "
    raise SystemExit(f"seqembed: {error_type}: {where}{message}")
