"""What became of each input file, as the summary counts it: the per-file records, believed
only as far as the disk agrees, the run's event log where a record could not be written, and
the finished embeddings Snakemake removed with a failed group, put back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from seqembed import runstate
from seqembed.job.records import read_record
from seqembed.layout import RunLayout
from seqembed.shards import labels, shard_job_name


def read_records(records_dir: str | os.PathLike, names: list[str]) -> dict[str, dict | None]:
    """name -> record, None where a file has no (readable) record yet."""
    found: dict[str, dict | None] = {}
    for name in names:
        try:
            found[name] = json.loads((Path(records_dir) / f"{name}.json").read_text())
        except (OSError, ValueError):
            found[name] = None
    return found


def _this_run(record: dict, since: float | None) -> bool:
    # a file put back from its receipt is this run's when it was put back
    moment = record.get("restored") or record.get("finished") or record.get("started") or 0.0
    return since is None or moment >= since


def outcomes(
    layout: RunLayout,
    files: Mapping[str, str],
    *,
    aborted: str | None,
    since: float | None,
    settings: Mapping | None = None,
    shards: Mapping[str, int] | None = None,
) -> tuple[dict[str, dict | None], list[str]]:
    """name -> the record that says what became of the file, as the summary counts it, and
    the names of the files put back. A record is believed only as far as the disk agrees: a
    `done` whose embedding is gone is not done, and a record from an earlier run says nothing
    about this one. A file whose failure record could not be written (a full disk) is known
    from the run's event log. With `settings` (the failure handler), the embeddings this run
    finished that Snakemake removed because another job of their group failed (a packed
    submission) are put back from their receipts: same input, same settings. A file in
    `shards` (name -> count) that has no output failed as its first failed shard did."""
    from seqembed.job.records import restore

    records = read_records(layout.records, list(files))
    failures = runstate.last_failures(layout.state)
    restored = []
    for name, record in records.items():
        if Path(layout.embedding(name)).exists():
            continue  # done; without a record, summarize counts it as "missing"
        this_run = record is not None and _this_run(record, since)
        if this_run and record["status"] == "running":
            event = failures.get(name)
            if event is not None and event.get("attempt") == record.get("attempt"):
                # it failed and said so in the event log, and was stopped (the abort it
                # declared itself, SLURM's cancel) before its record could say so too
                records[name] = {
                    **record,
                    "status": "failed",
                    "error_type": event["error_type"],
                    "error_message": event["message"],
                }
            continue
        if this_run and record["status"] != "done":
            continue  # its failure, as its record tells it
        if this_run and settings is not None and restore(record, layout.state, dict(settings)):
            restored.append(name)
            continue
        if name in (shards or {}):
            failed = _failed_shard(layout, name, shards[name], since, failures, settings)
            if failed:
                records[name] = failed
                continue
        records[name] = _not_done(name, files[name], record, failures.get(name), aborted)
    return records, restored


def shard_records(layout: RunLayout, shards: Mapping[str, int]) -> dict[str, list[dict]]:
    """name -> the records of its shards' jobs (those that have one), in the file's order."""
    found: dict[str, list[dict]] = {}
    for name, count in shards.items():
        paths = [layout.shard_record(name, label) for label in labels(count)]
        found[name] = [record for path in paths if (record := read_record(path))]
    return found


def _failed_shard(layout, name, count, since, failures, settings) -> dict | None:
    """Why a sharded file has no output: the failure of its shards in this run that says the
    most (a shard's own error before one that was only stopped by the abort or died without
    a word; then the earliest), from its record or, where the record could not be written,
    from the event log. The finished shards that Snakemake removed with a failed group are
    put back meanwhile, so that the rerun redoes only the failed ones."""
    from seqembed.job.records import restore

    failed = []
    for label in labels(count):
        record = read_record(layout.shard_record(name, label))
        event = failures.get(shard_job_name(name, label))
        if record is not None and _this_run(record, since):
            if record["status"] == "done":
                if settings is not None:
                    restore(record, layout.state, dict(settings))
                continue
            failed.append({**record, "name": name, "shard": label})
        elif event is not None:
            failed.append(
                {
                    "status": "failed",
                    "name": name,
                    "file": event["file"],
                    "shard": label,
                    "error_type": event["error_type"],
                    "error_message": event["message"],
                    "finished": event.get("time"),
                }
            )

    def telling(record: dict) -> tuple:
        vague = record["status"] == "running" or record.get("error_type") in ("Aborted", "Crash")
        return vague, record.get("finished") or float("inf")

    return min(failed, key=telling, default=None)


def _not_done(name: str, file: str, record: dict | None, event: dict | None, aborted) -> dict:
    if event:
        why, message = event["error_type"], event["message"]
    elif aborted:
        why, message = "Aborted", f"not started: {aborted}"
    elif record is not None and record["status"] == "done":
        why = "Missing"
        message = "its embedding is gone although its job finished; run again to redo it"
    else:
        why = "Missing"
        message = (
            "no embedding and no record from this run: the job never ran or died before "
            "writing one (see Snakemake's log)"
        )
    return {"status": "failed", "name": name, "file": file, "error_type": why,
            "error_message": message}  # fmt: skip


def work_records(
    records: Mapping[str, dict | None], by_shard: Mapping[str, list[dict]]
) -> dict[str, dict]:
    """The jobs that held a device, for the timeline: a sharded file's shards stand in for
    the file."""
    work = {name: record for name, record in records.items() if record and name not in by_shard}
    for shards in by_shard.values():
        work.update({record["name"]: record for record in shards})
    return work
