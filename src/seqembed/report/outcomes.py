"""What became of each input file, as the summary counts it: the per-file records, believed
only as far as the disk agrees, and the run's event log where a record could not be written;
and the finished embeddings Snakemake removed with a failed group, put back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from seqembed import runstate
from seqembed.layout import RunLayout


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
    moment = record.get("finished") or record.get("started") or 0.0
    return since is None or moment >= since


def outcomes(
    layout: RunLayout,
    files: Mapping[str, str],
    *,
    aborted: str | None,
    since: float | None,
) -> dict[str, dict | None]:
    """name -> the record that says what became of the file, as the summary counts it. A
    record is believed only as far as the disk agrees: a `done` whose embedding is gone is not
    done, and a record from an earlier run says nothing about this one. A file whose failure
    record could not be written (a full disk) is known from the run's event log."""
    records = read_records(layout.records, list(files))
    failures = runstate.last_failures(layout.state)
    for name, record in records.items():
        exists = Path(layout.embedding(name)).exists()
        if record is not None and (exists or _this_run(record, since)):
            if record["status"] != "done" or exists:
                continue
        if record is None and exists:
            continue  # an embedding without a record: counted as "missing" by summarize
        event = failures.get(name)
        if event:
            records[name] = {
                "status": "failed",
                "name": name,
                "file": files[name],
                "error_type": event["error_type"],
                "error_message": event["message"],
            }
            continue
        if aborted:
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
        records[name] = {
            "status": "failed",
            "name": name,
            "file": files[name],
            "error_type": why,
            "error_message": message,
        }
    return records


def restore_removed(
    layout: RunLayout, files: Mapping[str, str], settings: Mapping, since: float | None
) -> list[str]:
    """Embeddings this run finished that Snakemake removed because another job of their group
    failed (a packed submission), put back from their receipts: same input, same settings.
    Returns their names."""
    from seqembed.job.records import restore

    restored = []
    for name, record in read_records(layout.records, list(files)).items():
        if (
            record
            and record["status"] == "done"
            and _this_run(record, since)
            and not Path(layout.embedding(name)).exists()
            and restore(record, layout.state, dict(settings))
        ):
            restored.append(name)
    return restored
