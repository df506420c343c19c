"""The run as a picture: one lane per device, one bar per file (or shard of a large file)
from the moment its job claimed the device to its end, coloured by outcome, so load balance
and idle gaps show at a glance; the start-up and model load a file paid for (a worker started
for it) is the bar's first part, in a colour of its own, so fixed costs read as what they
are. Beside it the throughput of each device. Drawn from the per-file records only, like
the summary, and written next to summary.json (and into Snakemake's HTML report).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from seqembed.devices import lane_of

#: bar colour by outcome (colour-blind safe, Okabe-Ito); failures by error type
OUTCOME_COLOURS = {
    "done": "#009E73",
    "OOM": "#E69F00",
    "Crash": "#D55E00",
    "Error": "#CC79A7",
    "ModelError": "#CC79A7",
    "DeviceError": "#CC79A7",
    "InputError": "#999999",
    "Aborted": "#56B4E9",
}
#: start-up and model load, before a file's first batch
SETUP_COLOUR = "#F0E442"
SETUP = "start-up + model load"
FALLBACK_COLOUR = "#000000"


@dataclass(frozen=True)
class Bar:
    name: str
    start: float  # seconds since the first bar's start
    seconds: float
    outcome: str  # "done" or the error type
    setup: float = 0.0  # of `seconds`, start-up and model load

    @property
    def colour(self) -> str:
        return OUTCOME_COLOURS.get(self.outcome, FALLBACK_COLOUR)


def lanes(records: Mapping[str, dict | None], since: float | None = None) -> dict[str, list[Bar]]:
    """device -> its bars in time order, for the jobs of this run (started at `since`) that
    held a device; a job that failed before claiming one (bad input) occupied none."""
    held = [
        r
        for r in records.values()
        if r and r.get("device") and r.get("claimed") and r.get("finished")
        if since is None or r["claimed"] >= since
    ]
    origin = min((r["claimed"] for r in held), default=0.0)
    by_device: dict[str, list[Bar]] = {}
    for r in sorted(held, key=lambda r: r["claimed"]):
        outcome = "done" if r["status"] == "done" else r.get("error_type") or "Error"
        seconds = r["finished"] - r["claimed"]
        setup = 0.0 if r.get("model_was_loaded", True) else r.get("worker_start_seconds", 0.0)
        bar = Bar(r["name"], r["claimed"] - origin, seconds, outcome, min(setup, seconds))
        by_device.setdefault(lane_of(r), []).append(bar)
    return dict(sorted(by_device.items()))


def _thousands(value: float, _position) -> str:
    return f"{value / 1000:,.0f}k" if value >= 1000 else f"{value:,.0f}"


def draw_timeline(
    records: Mapping[str, dict | None],
    summary: dict,
    path: str | os.PathLike,
    since: float | None = None,
):
    """Write the picture to `path` (the format follows the suffix); returns the figure's
    timeline axes for inspection."""
    import matplotlib

    matplotlib.use("Agg")  # no display, and never a GUI toolkit in Snakemake's process
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    by_device = lanes(records, since)
    devices = list(by_device)
    figure, (timeline, throughput) = plt.subplots(
        1,
        2,
        figsize=(12, 1.2 + 0.45 * max(1, len(devices))),
        gridspec_kw={"width_ratios": [4, 1]},
        layout="constrained",
    )
    for lane, device in enumerate(devices):
        bars = by_device[device]
        timeline.broken_barh(
            [(bar.start, bar.seconds) for bar in bars],
            (lane - 0.4, 0.8),
            facecolors=[bar.colour for bar in bars],
            edgecolor="white",
            linewidth=0.5,
        )
        setups = [bar for bar in bars if bar.setup > 0]
        if setups:
            timeline.broken_barh(
                [(bar.start, bar.setup) for bar in setups],
                (lane - 0.4, 0.8),
                facecolors=SETUP_COLOUR,
                linewidth=0,
            )
    timeline.set_yticks(range(len(devices)), devices)
    timeline.set_ylim(-0.6, max(1, len(devices)) - 0.4)
    timeline.invert_yaxis()
    timeline.set_xlabel("seconds since the first job claimed a device")
    files = summary["files"]
    timeline.set_title(
        f"{files['computed_this_run']} files computed in {summary['wall_seconds']:.0f} s; "
        f"{files['failed']} failed"
        if devices
        else "no file was computed in this run",
        loc="left",
        fontsize=10,
    )
    outcomes = sorted({bar.outcome for bars in by_device.values() for bar in bars})
    handles = [
        Patch(color=OUTCOME_COLOURS.get(outcome, FALLBACK_COLOUR), label=outcome)
        for outcome in outcomes
    ]
    if any(bar.setup > 0 for bars in by_device.values() for bar in bars):
        handles.append(Patch(color=SETUP_COLOUR, label=SETUP))
    if handles:
        timeline.legend(
            handles=handles,
            # above the lanes, right of the title: never over a bar
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=len(handles),
            fontsize=8,
            frameon=False,
        )

    rates = [(summary["devices"].get(d, {}).get("residues_per_s") or 0.0) for d in devices]
    throughput.barh(range(len(devices)), rates, color="#0072B2")
    throughput.set_yticks(range(len(devices)), [""] * len(devices))
    throughput.set_ylim(timeline.get_ylim())
    throughput.set_xlabel("residues / s (busy time)")
    # a narrow panel: few ticks, in thousands, or the labels run into each other
    throughput.locator_params(axis="x", nbins=3)
    throughput.xaxis.set_major_formatter(FuncFormatter(_thousands))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return timeline
