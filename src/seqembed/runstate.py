"""What the jobs of one run know about each other: the order in which files finished, and
whether the run was aborted.

Three runtime failures in a row (not bad input) point at the model, the driver, the node or
the disk rather than at the files; they are counted by input file, so the shards of one large
file that fail together are one failure, and any job that succeeds (a shard too) breaks the
streak; carrying on would only burn hours producing failures. The job whose failure
completes the streak declares the abort here. Everything that is running
watches for it: the batch loop stops the file it computes at the next batch, and the
Snakemake process that started the run (`watch_for_abort`, on the submitting host even when
the jobs run on cluster nodes) interrupts itself as Ctrl-C would, so it submits nothing more,
and writes the summary in its failure handler. A job that starts after the abort fails at
once, before any model work.

The events live in one log file whose space is reserved when the run starts: when the output
disk fills up, failures are still counted, the abort is still declared, and the summary still
learns why files failed whose records could not be written. The Snakefile's onstart handler
clears this folder, so every run starts afresh.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from seqembed.output import write_json

#: consecutive runtime failures across all jobs that abort the run
ABORT_AFTER = 3
EVENTS = "events.log"
STARTED = "started.json"
#: reserved when a run starts: about 3,000 failures, long after an abort
RESERVED_BYTES = 1 << 20


def reset(state_dir: str | Path, scheduler_pid: int | None = None) -> None:
    """A new run: forget the last one's events, note when this one started (throughput
    figures cover the files computed since) and which process schedules it."""
    shutil.rmtree(state_dir, ignore_errors=True)
    started = {"started": time.time(), "host": socket.gethostname(), "pid": scheduler_pid}
    write_json(Path(state_dir) / STARTED, started)
    fd = os.open(Path(state_dir) / EVENTS, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # as much as the disk gives, down to a few dozen events
        for size in (RESERVED_BYTES, RESERVED_BYTES // 16, RESERVED_BYTES // 128):
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError:
                continue  # too little space, or no fallocate: appends need space then
    finally:
        os.close(fd)


def run_started(state_dir: str | Path) -> float | None:
    try:
        return json.loads((Path(state_dir) / STARTED).read_text())["started"]
    except (OSError, ValueError, KeyError):
        return None


def _parse(data: bytes) -> list[dict]:
    events = []
    for line in data.split(b"\0", 1)[0].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash mid-write
    return events


def events(state_dir: str | Path) -> list[dict]:
    try:
        return _parse((Path(state_dir) / EVENTS).read_bytes())
    except OSError:
        return []


_abort_cache: dict[str, tuple[tuple, str | None]] = {}


def abort_reason(state_dir: str | Path) -> str | None:
    """Why the run was aborted, or None. Cheap enough to ask between batches: the log is
    read again only when it changed."""
    path = Path(state_dir) / EVENTS
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _abort_cache.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    reason = next((e["reason"] for e in events(state_dir) if e.get("kind") == "abort"), None)
    _abort_cache[str(path)] = (stamp, reason)
    return reason


def _append(fd: int, data: bytes, event: dict) -> None:
    end = data.find(b"\0")
    os.pwrite(fd, (json.dumps(event) + "\n").encode(), len(data) if end < 0 else end)


def record_outcome(
    state_dir: str | Path,
    name: str,
    file: str,
    error_type: str | None,
    message: str = "",
    *,
    counts: bool = True,
    **details,
) -> str | None:
    """Append one finished attempt (error_type None = success) and return the abort reason
    if this outcome completes a streak of ABORT_AFTER files failing at run time. A failure
    that does not `count` (bad input, an abort) is logged for the summary but neither extends
    nor breaks a streak. Raises OSError when the event cannot be written even into the
    reserved space."""
    path = Path(state_dir) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {"kind": "outcome", "name": name, "file": file, "error_type": error_type}
    event.update(message=message, counts=counts, time=time.time(), **details)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # one writer at a time, and the streak is judged on the log as this writer left it
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, max(os.fstat(fd).st_size, 1), 0)
        _append(fd, data, event)
        past = [*_parse(data), event]
        if error_type is None or not counts or any(e.get("kind") == "abort" for e in past):
            return None
        # failures of distinct input files since the last success: the retries of one bad
        # file are one failure, not a streak, and so are the failing shards of one file
        streak, files = [], set()
        for earlier in reversed([e for e in past if e.get("kind") == "outcome"]):
            if earlier["error_type"] is None:
                break
            if earlier.get("counts", True) and earlier["file"] not in files:
                files.add(earlier["file"])
                streak.append(earlier)
        if len(streak) < ABORT_AFTER:
            return None
        named = "; ".join(
            f"{e['file']} ({e['error_type']}: {e['message']})"
            for e in reversed(streak[:ABORT_AFTER])
        )
        reason = f"run aborted after {ABORT_AFTER} runtime failures in a row: {named}"
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        _append(fd, data, {"kind": "abort", "reason": reason, "time": time.time()})
        return reason
    finally:
        os.close(fd)


def attempt_outcome(state_dir: str | Path, name: str, attempt: int) -> dict | None:
    """What attempt `attempt` of `name` reported, if it could (its record may not say: a full
    disk); None when it ended without a word."""
    found = None
    for event in events(state_dir):
        if (event.get("kind"), event.get("name"), event.get("attempt")) == (
            "outcome",
            name,
            attempt,
        ):
            found = event
    return found


def last_failures(state_dir: str | Path) -> dict[str, dict]:
    """name -> the last failed outcome of this run, for files whose record was never written
    (a full disk): the summary still says why they failed."""
    failures: dict[str, dict] = {}
    for event in events(state_dir):
        if event.get("kind") == "outcome":
            if event["error_type"] is None:
                failures.pop(event["name"], None)
            else:
                failures[event["name"]] = event
    return failures


def watch_for_abort(
    state_dir: str | Path, on_abort: Callable[[str], None], interval_s: float = 1.0
) -> threading.Thread:
    """In the process that schedules the run: call `on_abort(reason)` once, as soon as a job
    anywhere (this host or a cluster node sharing the output folder) declares the abort."""

    def watch() -> None:
        while True:
            reason = abort_reason(state_dir)
            if reason:
                on_abort(reason)
                return
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="seqembed-abort-watch", daemon=True)
    thread.start()
    return thread
