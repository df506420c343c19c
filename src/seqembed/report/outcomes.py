"""What became of each input file, as the summary counts it: the per-file records, believed
only as far as the disk agrees, the run's event log where a record could not be written, and
the finished embeddings Snakemake removed with a failed group, put back."""

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
    settings: Mapping | None = None,
) -> tuple[dict[str, dict | None], list[str]]:
    """name -> the record that says what became of the file, as the summary counts it, and
    the names of the files put back. A record is believed only as far as the disk agrees: a
    `done` whose embedding is gone is not done, and a record from an earlier run says nothing
    about this one. A file whose failure record could not be written (a full disk) is known
    from the run's event log. With `settings` (the failure handler), the embeddings this run
    finished that Snakemake removed because another job of their group failed (a packed
    submission) are put back from their receipts: same input, same settings."""
    from seqembed.job.records import restore

    records = read_records(layout.records, list(files))
    failures = runstate.last_failures(layout.state)
    restored = []
    for name, record in records.items():
        if Path(layout.embedding(name)).exists():
            continue  # done; without a record, summarize counts it as "missing"
        this_run = record is not None and _this_run(record, since)
        if this_run and record["status"] != "done":
            continue  # its failure, as its record tells it
        if this_run and settings is not None and restore(record, layout.state, dict(settings)):
            restored.append(name)
            continue
        records[name] = _not_done(name, files[name], record, failures.get(name), aborted)
    return records, restored


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
