"""The table printed at the end of a run, from the summary (seqembed.report.summary)."""

from __future__ import annotations


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _share(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def render_table(summary: dict) -> str:
    """The table printed at the end of a run, as plain text (fits 100 columns)."""
    files = summary["files"]
    # with shards, a device's jobs are files and shards: both counted, as "jobs"
    sharded = any(d.get("shards") for d in summary["devices"].values())
    lines = [
        f"seqembed: {files['done']}/{files['total']} files done ({files['skipped']} were up to "
        f"date), {files['failed']} failed; this run computed {files['computed_this_run']} in "
        f"{_number(summary['wall_seconds'])} s",
        f"{'device':<12}{'jobs' if sharded else 'files':>7}{'sequences':>12}{'residues':>14}"
        f"{'planned':>14}{'seq/s':>10}{'res/s':>12}{'busy s':>9}{'util':>6}",
    ]
    rows = [(name, d) for name, d in summary["devices"].items()]
    # the total row's time is the run's wall time, as its rates are
    total = {
        **summary,
        "files": files["computed_this_run"],
        "shards": sum(d.get("shards", 0) for d in summary["devices"].values()),
        "busy_seconds": summary["wall_seconds"],
        "planned_residues": None,
    }
    if sharded:  # the jobs of the run: its files' are their shards
        total["files"] = sum(d["files"] for d in summary["devices"].values())
    rows.append(("total", total))
    for name, d in rows:
        planned = d.get("planned_residues")
        jobs = d["files"] + d.get("shards", 0)
        lines.append(
            f"{name:<12}{jobs:>7}{d['sequences']:>12,}{d['residues']:>14,}"
            f"{'-' if planned is None else f'{planned:,}':>14}"
            f"{_number(d['sequences_per_s']):>10}{_number(d['residues_per_s'], 0):>12}"
            f"{_number(d['busy_seconds']):>9}{_share(d['utilisation']):>6}"
        )
    padding = summary["padding_efficiency"]
    lines.append(
        f"start-up and model load {_number(summary['setup_seconds'])} s "
        f"({_share(summary['setup_share'])} of device time); models loaded "
        f"{summary['models_loaded']}; device utilisation {_share(summary['utilisation'])}"
    )
    truncated = summary["truncated_sequences"]
    long = f"truncated sequences {truncated}" + (" (long_sequences: truncate)" if truncated else "")
    if summary.get("windowed_sequences"):
        long = (
            f"sequences embedded whole in windows {summary['windowed_sequences']} "
            f"({summary['windows']} windows); {long}"
        )
    lines.append(f"padding efficiency {'-' if padding is None else f'{padding:.1%}'}; {long}")
    if summary.get("precision"):
        lines.append(precision_line(summary["precision"]))
    if files["missing"]:
        lines.append(
            f"{files['missing']} file(s) with an embedding but no record, counted neither done "
            f"nor failed: {', '.join(summary['missing'][:3])}"
            + (" ..." if files["missing"] > 3 else "")
        )
    if summary["failures_by_type"]:
        counts = ", ".join(f"{kind} {n}" for kind, n in summary["failures_by_type"].items())
        lines.append(f"failures by type: {counts}")
    if summary.get("unusable_inputs"):
        shown = "; ".join(f"{p} ({why})" for p, why in summary["unusable_inputs"].items())
        lines.append(f"skipped inputs: {shown}")
    return "\n".join(lines)


def precision_line(used: dict) -> str:
    """`precision bfloat16 (auto: this CPU has AMX-BF16)`; with more than one, each with its
    jobs."""
    parts = []
    for dtype, entry in used.items():
        jobs = f" on {entry['jobs']} jobs" if len(used) > 1 else ""
        reason = f" ({entry['reason']})" if entry["reason"] else ""
        parts.append(f"{dtype}{jobs}{reason}")
    return "precision " + ", ".join(parts)
