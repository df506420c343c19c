"""The run summary, computed from the per-file records only, so the summary rule and the
failure handler (which runs when some jobs failed) produce the same figures."""

from __future__ import annotations

import base64
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

from seqembed import runstate
from seqembed.devices import lane_of
from seqembed.layout import RunLayout
from seqembed.output import write_atomically, write_json, write_text
from seqembed.report.outcomes import outcomes, shard_records, work_records
from seqembed.report.table import render_table
from seqembed.report.timeline import draw_timeline

#: summary.json's layout, documented field by field in workflow/schemas/summary.schema.yaml
SCHEMA_VERSION = 1
#: a 1x1 white PNG, in place of a timeline that could not be drawn
BLANK_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAsTj2FAAAAABJRU5ErkJggg=="
)


def _as_failure(record: dict, aborted: str | None) -> dict:
    """A record still "running" when the run is summarized belongs to a job that was stopped
    by the abort or died without a word (killed, segfault, lost node)."""
    if record["status"] != "running":
        return record
    if aborted:
        return {**record, "error_type": "Aborted", "error_message": f"stopped: {aborted}"}
    where = f"on {record['device']}, " if record.get("device") else ""
    return {
        **record,
        "error_type": "Crash",
        "error_message": f"job ended without a result (killed, segfault or lost node) "
        f"{where}attempt {record.get('attempt')}",
    }


def _setup_seconds(record: dict) -> float:
    """Start-up and model load that held the device for this file: a worker started for it
    (or, per-file, the job's own imports and load); nothing when the model was resident."""
    if record.get("model_was_loaded"):
        return 0.0
    return record.get("worker_start_seconds", record.get("model_load_seconds", 0.0))


def _precisions(records: list[dict]) -> dict:
    """dtype -> the jobs computed in it and why (seqembed.precision): one entry in a run,
    more where hosts decided `auto` differently (CPU nodes with and without bf16 units)."""
    used: dict[str, dict] = {}
    for record in records:
        entry = used.setdefault(record.get("precision", "unknown"), {"jobs": 0, "reason": ""})
        entry["jobs"] += 1
        entry["reason"] = entry["reason"] or record.get("precision_reason", "")
    return dict(sorted(used.items()))


def _rates(sequences: int, residues: int, seconds: float) -> dict:
    return {
        "sequences_per_s": sequences / seconds if seconds > 0 else None,
        "residues_per_s": residues / seconds if seconds > 0 else None,
    }


def summarize(
    records: Mapping[str, dict | None],
    planned_load: Mapping[str, int] | None = None,
    aborted: str | None = None,
    since: float | None = None,
    unusable: Mapping[str, str] | None = None,
    shard_records: Mapping[str, list[dict]] | None = None,
) -> dict:
    """File counts and failures cover every input; speed figures only the files computed in
    this run (started at `since`), so a rerun of one file reports that file's speed, not the
    hours between two runs. Wall time spans the first start to the last finish of those;
    per-device rates use the device's busy time (claim to release), excluding waits for a
    free device. `shard_records` (name -> its shards' records): a sharded file is counted as
    one file, and its shards as what the devices computed."""
    done = [r for r in records.values() if r and r["status"] == "done"]
    failed = [_as_failure(r, aborted) for r in records.values() if r and r["status"] != "done"]
    missing = sorted(name for name, r in records.items() if r is None)

    def this_run(r: dict) -> bool:
        # a file put back from an attempt of this run counts: that attempt computed it
        return since is None or r["started"] >= since

    computed = [r for r in done if this_run(r)]
    # what the devices computed in this run: whole files, and the shards of sharded files
    # (those of a file that is not done yet too: they are kept for the rerun)
    shard_records = shard_records or {}
    work = [r for r in computed if r["name"] not in shard_records] + [
        r
        for shards in shard_records.values()
        for r in shards
        if r["status"] == "done" and this_run(r)
    ]
    ran = [r for r in work if r["device"] is not None]  # an empty file ran nowhere
    sequences = sum(r["sequences"] for r in work)
    residues = sum(r["residues"] for r in work)
    busy = sum(r["finished"] - r["claimed"] for r in ran)
    load = sum(r["model_load_seconds"] for r in ran)
    tokens = sum(r["computed_tokens"] for r in work)
    # from the first start to the last finish, gathers included
    wall = max((r["finished"] for r in work + computed), default=0) - min(
        (r["started"] for r in work + computed), default=0
    )
    devices: dict[str, dict] = defaultdict(
        lambda: {
            "files": 0,
            "shards": 0,
            "files_on_planned_device": 0,
            "sequences": 0,
            "residues": 0,
            "busy_seconds": 0.0,
            "compute_seconds": 0.0,
            "setup_seconds": 0.0,
            "models_loaded": 0,
        }
    )
    for record in ran:
        device = devices[lane_of(record)]
        device["shards" if record.get("shard") else "files"] += 1
        device["files_on_planned_device"] += record.get("planned_device") == record["device"]
        device["sequences"] += record["sequences"]
        device["residues"] += record["residues"]
        device["busy_seconds"] += record["finished"] - record["claimed"]
        device["compute_seconds"] += record.get("compute_seconds", 0.0)
        device["setup_seconds"] += _setup_seconds(record)
        device["models_loaded"] += not record.get("model_was_loaded", False)
    for name, device in devices.items():
        device.update(_rates(device["sequences"], device["residues"], device["busy_seconds"]))
        device["planned_residues"] = (planned_load or {}).get(name)
        device["utilisation"] = device["compute_seconds"] / wall if wall > 0 else None
    device_seconds = wall * len(devices)
    setup = sum(device["setup_seconds"] for device in devices.values())
    return {
        "schema_version": SCHEMA_VERSION,
        "aborted": aborted,
        "files": {
            "total": len(records),
            "done": len(done),
            "failed": len(failed),
            "missing": len(missing),
            "computed_this_run": len(computed),
            "skipped": len(done) - len(computed),
        },
        "missing": missing,
        "sequences": sequences,
        "residues": residues,
        "truncated_sequences": sum(r["truncated_sequences"] for r in work),
        # long sequences embedded whole in windows, and the windows computed for them
        "windowed_sequences": sum(r.get("windowed_sequences", 0) for r in work),
        "windows": sum(r.get("windows", 0) for r in work),
        "wall_seconds": wall,
        **_rates(sequences, residues, wall),
        "busy_seconds": busy,
        "model_load_seconds": load,
        "model_load_share": load / busy if busy > 0 else None,
        "compute_seconds": sum(device["compute_seconds"] for device in devices.values()),
        "utilisation": (
            sum(device["compute_seconds"] for device in devices.values()) / device_seconds
            if device_seconds > 0
            else None
        ),
        "setup_seconds": setup,
        "setup_share": setup / device_seconds if device_seconds > 0 else None,
        "models_loaded": sum(device["models_loaded"] for device in devices.values()),
        "padding_efficiency": sum(r["real_tokens"] for r in work) / tokens if tokens else None,
        "precision": _precisions(ran),
        "devices": dict(sorted(devices.items())),
        "failures_by_type": dict(sorted(Counter(r["error_type"] for r in failed).items())),
        "failures": [
            {
                "file": r["file"],
                "error_type": r["error_type"],
                # a sharded file failed as one of its shards did: which one
                "error_message": (f"shard {r['shard']}: " if r.get("shard") else "")
                + r["error_message"],
            }
            for r in failed
        ],
        "unusable_inputs": dict(unusable or {}),
    }


def failed_lines(summary: dict) -> list[str]:
    """`path|error_type|error_message`: one line each, the message kept on one line and free of
    the separator so the file stays machine-readable."""
    lines = []
    for failure in summary["failures"]:
        message = " ".join(str(failure["error_message"]).split()).replace("|", "/")
        lines.append(f"{failure['file']}|{failure['error_type']}|{message}")
    return lines


def write_summary(summary: dict, json_path: str, failed_path: str) -> None:
    write_json(json_path, summary)
    write_text(failed_path, "".join(line + "\n" for line in failed_lines(summary)))


def report_run(
    layout: RunLayout,
    files: Mapping[str, str],
    *,
    aborted: str | None = None,
    unusable: Mapping[str, str] | None = None,
    settings: Mapping | None = None,
    shards: Mapping[str, int] | None = None,
) -> dict:
    """Summarize the outcomes of `files` (name -> input path; `shards`: name -> count for
    the sharded ones), write summary.json,
    failed_files.txt and the timeline picture, print the table; the summary rule and the
    failure handler both end a run here, when no job runs any more. What cannot be written
    (a full disk) is printed instead: the user learns what failed and why either way."""
    try:
        plan = json.loads(Path(layout.plan_json).read_text())
        # the table compares residues; a plan in a nucleotide model's tokens is not comparable
        planned = plan["planned_load"] if plan.get("load_unit", "residues") == "residues" else None
    except (OSError, ValueError, KeyError):
        planned = None
    since = runstate.run_started(layout.state)
    shards = dict(shards or {})
    records, restored = outcomes(
        layout, files, aborted=aborted, since=since, settings=settings, shards=shards
    )
    by_shard = shard_records(layout, shards)
    if restored:
        print(
            f"seqembed: {len(restored)} finished embedding(s) that Snakemake removed when "
            f"another file of their group or bundle failed were put back: {', '.join(restored[:5])}"
            + (" ..." if len(restored) > 5 else ""),
            flush=True,
        )
    summary = summarize(records, planned, aborted, since, unusable, by_shard)
    table = render_table(summary)
    try:
        write_summary(summary, layout.summary, layout.failed)
    except OSError as error:
        print(
            f"seqembed: cannot write {layout.summary} and {layout.failed}: "
            f"{error.strerror or error}; the failed files follow",
            flush=True,
        )
        print("\n".join(failed_lines(summary)), flush=True)
        print(table, flush=True)
        return summary
    try:
        draw_timeline(work_records(records, by_shard), summary, layout.timeline, since)
    except Exception as error:  # noqa: BLE001 - a picture must not cost the run its summary
        print(f"seqembed: warning: no timeline picture: {error}", flush=True)
        # the summary rule declares the picture: an empty one, not a failed step
        with contextlib.suppress(OSError):
            write_atomically(layout.timeline, lambda stream: stream.write(BLANK_PNG))
    print(table, flush=True)
    return summary


def exit_code_after_failure(
    layout: RunLayout,
    files: Mapping[str, str],
    settings: Mapping | None = None,
    unusable: Mapping[str, str] | None = None,
    shards: Mapping[str, int] | None = None,
) -> int:
    """For Snakemake's onerror handler: put back what Snakemake removed of finished files,
    write the summary from whatever finished and tell the caller's script what happened: 2
    some files done and some failed; 1 nothing done, the run was aborted, or every file is
    done but another step failed. The reason is the last line seqembed prints."""
    summary = report_run(
        layout,
        files,
        aborted=runstate.abort_reason(layout.state),
        unusable=unusable,
        settings=settings,
        shards=shards,
    )
    counts = summary["files"]
    if summary["aborted"]:
        print(f"seqembed: {summary['aborted']}", flush=True)
        return 1
    failed = counts["failed"]
    if not failed:
        print(
            f"seqembed: all {counts['total']} files are done, but a workflow step failed: "
            "see Snakemake's error above",
            flush=True,
        )
        return 1
    print(f"seqembed: {failed} of {counts['total']} files failed: see {layout.failed}", flush=True)
    return 2 if counts["done"] else 1
