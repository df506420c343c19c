"""What the live view shows: one line per device (the file on it, sequences done of its
total) and the files done overall. Pure functions of the jobs' progress files (see
seqembed.job.progress), so tests render it from recorded progress; drawing it on a terminal or
as periodic plain lines is seqembed.report.display's business.

The Snakefile announces a run here (`attach`) when it starts and ends it (`detach`) before
its failure handler prints the summary; whatever display listens in the same process (the
Snakemake logger plugin) is told. No ETA: file sizes vary too much for an honest one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from seqembed import errors
from seqembed.devices import lane_of

BAR_WIDTH = 20


@dataclass(frozen=True)
class RunInfo:
    """What the Snakefile knows when a run starts."""

    state_dir: str
    files_total: int  # every input file, computed in this run or not (with shards: every job)
    devices: tuple[str, ...]  # this host's pool, listed even while idle (none on a cluster)
    verbosity: str = "normal"
    local: bool = True  # the jobs run on this host, their output reaches this terminal
    #: what the counts count: files, or with sharded files the jobs (files and shards)
    unit: str = "files"
    #: bundle rule -> its files' names (seqembed.bundles)
    bundles: Mapping[str, list[str]] = field(default_factory=dict)

    def files_of(self, rule: str) -> int:
        """How many of the counted units one job of `rule` computes."""
        if rule in ("embed", "embed_shard"):
            return 1
        return len(self.bundles.get(rule, ()))


@dataclass
class Snapshot:
    files_total: int
    files_done: int
    files_failed: int
    waiting: int
    devices: list[tuple[str, dict | None]] = field(default_factory=list)  # label, job on it
    queued: int = 0  # scheduled, not started (on a cluster: pending in SLURM's queue)
    unit: str = "files"

    @property
    def running(self) -> int:
        return sum(job is not None for _, job in self.devices)


def _alive(job: dict, host: str) -> bool:
    """A job on this host whose process is gone crashed without its last word (a retry will
    overwrite its file); on another host we cannot tell and believe the file."""
    if job.get("host") != host or not job.get("pid"):
        return True
    try:
        os.kill(job["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def with_endings(jobs: dict[str, dict], ended: Mapping[str, float]) -> dict[str, dict]:
    """Jobs Snakemake reported failed (at the time given) while their file still says waiting
    or running: killed without a last word (SLURM's time or memory limit, a lost node)."""
    return {
        name: {**job, "status": "failed"}
        if name in ended
        and job.get("status") in ("waiting", "running")
        and job.get("updated", 0) <= ended[name]
        else job
        for name, job in jobs.items()
    }


def lane_label(job: dict, host: str) -> str:
    label = lane_of(job)
    if job.get("host") != host and "/" not in label:
        label = f"{job.get('host')}/{label}"
    return label


def snapshot(
    run: RunInfo,
    jobs: dict[str, dict],
    files_to_compute: int | None,
    *,
    host: str | None = None,
    alive: Callable[[dict, str], bool] = _alive,
) -> Snapshot:
    """`jobs`: name -> progress of this run's jobs; `files_to_compute`: the embed jobs
    Snakemake scheduled (the other input files were up to date when the run started)."""
    host = host or socket.gethostname()
    up_to_date = run.files_total - files_to_compute if files_to_compute is not None else 0
    on_device: dict[str, dict] = {}
    waiting = 0
    for job in jobs.values():
        if job.get("status") not in ("waiting", "running") or not alive(job, host):
            continue
        if job["status"] == "waiting" or not job.get("device"):
            waiting += 1
            continue
        label = lane_label(job, host)
        if label not in on_device or job.get("updated", 0) > on_device[label].get("updated", 0):
            on_device[label] = job
    labels = list(run.devices) + sorted(set(on_device) - set(run.devices))
    done = sum(job.get("status") == "done" for job in jobs.values())
    failed = sum(job.get("status") == "failed" for job in jobs.values())
    started = done + failed + waiting + len(on_device)
    return Snapshot(
        files_total=run.files_total,
        files_done=up_to_date + done,
        files_failed=failed,
        waiting=waiting,
        devices=[(label, on_device.get(label)) for label in labels],
        queued=max(0, files_to_compute - started) if files_to_compute is not None else 0,
        unit=run.unit,
    )


def _bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def device_line(label: str, job: dict | None, width: int = 100) -> str:
    if job is None:
        return f"  {label:<12} idle"
    total = job.get("total") or 0
    done = min(job.get("done", 0), total)
    fraction = done / total if total else 0.0
    name_width = max(8, width - 2 - 13 - BAR_WIDTH - 30)
    name = job["name"]
    if job.get("windows"):  # long sequences in windows: a sequence is done with its last
        name = f"{name} ({job['windows']:,} windows)"
    name = name if len(name) <= name_width else name[: name_width - 1] + "…"
    return (
        f"  {label:<12} {name:<{name_width}} {_bar(fraction)} "
        f"{done:>9,} / {total:<9,} {fraction:>4.0%}"
    ).rstrip()


def failure_line(job: dict) -> str:
    """A failed attempt in the words the job itself prints (which, on a cluster, ends up in
    SLURM's log instead of on this terminal)."""
    message = " ".join(str(job.get("error_message", "")).split())
    return errors.failure_line(
        str(job.get("file", "")), job.get("error_type", "Error"), message, job.get("shard")
    )


def header_line(snap: Snapshot) -> str:
    share = snap.files_done / snap.files_total if snap.files_total else 1.0
    parts = [
        f"{snap.unit} {snap.files_done:,} / {snap.files_total:,} done ({share:.1%})",
        f"{snap.files_failed:,} failed",
        f"{snap.running} running",
    ]
    if snap.waiting:
        parts.append(f"{snap.waiting} waiting for a device")
    if snap.queued:
        parts.append(f"{snap.queued} queued")
    return "seqembed  " + " · ".join(parts)


def render_lines(snap: Snapshot, width: int = 100) -> list[str]:
    return [header_line(snap)] + [device_line(label, job, width) for label, job in snap.devices]


def clock(now: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


# --- the run announced by the Snakefile, for a display in the same process -----------------

_listeners: list = []


def listen(listener) -> None:
    """`listener` has configure(verbosity), attach(RunInfo) and detach(); the logger plugin
    registers its display."""
    _listeners.append(listener)


def configure(verbosity: str) -> None:
    """The verbosity of this invocation, as soon as the config is read."""
    for listener in _listeners:
        listener.configure(verbosity)


def attach(run: RunInfo) -> bool:
    """A run starts; True if a display shows it."""
    for listener in _listeners:
        listener.attach(run)
    return bool(_listeners)


def detach() -> None:
    """The run's jobs are over: the display stops before the summary is printed. Never
    raises: the Snakefile's failure handler calls it before the summary."""
    for listener in _listeners:
        try:
            listener.detach()
        except Exception:  # noqa: BLE001 - a display must not cost the run its summary
            pass
