"""The gather job of a sharded file: its shards' outputs joined into the file's one output,
and the file's record, which adds up what its shards' records say.

It runs once every shard is done, on no device. A failure (a full disk) leaves a failed
record and one line naming the file, as an embed job's does; the shards' outputs stay, so a
rerun redoes the gather alone.
"""

from __future__ import annotations

import resource
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from seqembed.compute.gather import gather
from seqembed.errors import classify, failure_line
from seqembed.job.attempts import count_failure
from seqembed.job.records import (
    code_stamp,
    input_stamp,
    keep_receipt,
    read_record,
    receipt_path,
    write_record,
)
from seqembed.output import commit, output_error, stale_temporaries
from seqembed.shards import shard_job_name

#: figures of the file that are the sums of its shards'
SUMMED = ("residues", "truncated_sequences", "windowed_sequences", "windows")


@dataclass(frozen=True)
class GatherJob:
    name: str
    fasta: str
    output: str
    output_format: str
    record: str
    state_dir: str
    #: the shards' labels, outputs and records, in the file's order
    labels: list[str]
    shards: list[str]
    shard_records: list[str]
    settings: dict = field(default_factory=dict)
    attempt: int = 1


def _forget_other_shardings(job: GatherJob) -> None:
    """Shards and shard records of the file cut another way (shard_size changed after a run
    that failed): the output they were for is made now."""
    current = set(job.labels)
    folders = {Path(shard).parent for shard in job.shards}
    folders |= {Path(record).parent for record in job.shard_records}
    for folder in folders:
        for path in folder.glob("*-of-*"):
            label = path.name.split(".")[0]
            if label not in current and path.is_file():
                path.unlink(missing_ok=True)


def run_gather_job(job: GatherJob) -> dict:
    started = time.time()
    base = {
        "name": job.name,
        "file": job.fasta,
        "output": job.output,
        "input": input_stamp(job.fasta),
        "settings": job.settings,
        "code": code_stamp(),
        "shards": job.labels,
        "device": None,
        "host": socket.gethostname(),
        "attempt": job.attempt,
        "started": started,
    }
    try:
        for stale in stale_temporaries(job.output):
            stale.unlink(missing_ok=True)
        write_record(job.record, job.state_dir, {**base, "status": "running"})
        temporary, ids = gather(
            job.shards, job.output, job.output_format, name=job.name, source=job.fasta
        )
        try:
            commit(temporary, job.output)
        except OSError as error:
            raise output_error(job.output, error) from None
        keep_receipt(job.state_dir, job.name, job.output)
        for label in job.labels:  # their hard links would keep the shards on the disk
            receipt_path(job.state_dir, shard_job_name(job.name, label)).unlink(missing_ok=True)
        _forget_other_shardings(job)
        parts = [read_record(path) or {} for path in job.shard_records]
        finished = time.time()
        record = {
            **base,
            **{key: sum(part.get(key, 0) for part in parts) for key in SUMMED},
            "sequences": len(ids),
            # across shards too
            "duplicate_ids": len(ids) - len(set(ids)),
            "status": "done",
            "finished": finished,
            "gather_seconds": finished - started,
            "wall_seconds": finished - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        write_record(job.record, job.state_dir, record)
    except Exception as error:  # noqa: BLE001 - every failure must leave a record
        verdict = classify(error)
        verdict = replace(verdict, message=f"gathering its shards: {verdict.message}")
        count_failure(job, verdict, job.attempt)
        failed = {**base, "status": "failed", "finished": time.time(), **verdict.as_dict()}
        unrecorded = ""
        try:
            write_record(job.record, job.state_dir, failed)
        except Exception:  # noqa: BLE001 - the line below says it
            unrecorded = " (its record could not be written either)"
        line = failure_line(job.fasta, verdict.error_type, verdict.message)
        raise SystemExit(line + unrecorded) from None
    return record
