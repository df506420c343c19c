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

No job reads the run's history: where the log ends, the current streak and the abort live in
one small state file of fixed size, reserved with the log and rewritten in place under the
log's lock, so that counting an outcome and asking whether the run was aborted cost the same
at the 10th file and the 50,000th. The summary reads the log once, at the end.
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
#: where the log ends, the streak of runtime failures, and the abort reason (JSON, padded)
STATE = "state"
STATE_BYTES = 8192
#: characters of a failure's message kept in the streak (the abort reason names them)
STREAK_MESSAGE = 500
#: reserved when a run starts: about 3,000 failures, long after an abort
RESERVED_BYTES = 1 << 20


def reset(state_dir: str | Path, scheduler_pid: int | None = None) -> None:
    """A new run: forget the last one's events, note when this one started (throughput
    figures cover the files computed since) and which process schedules it."""
    shutil.rmtree(state_dir, ignore_errors=True)
    _aborted.pop(str(Path(state_dir) / STATE), None)
    started = {
        "started": time.time(),
        "host": socket.gethostname(),
        "pid": scheduler_pid,
    }
    write_json(Path(state_dir) / STARTED, started)
    fd = os.open(Path(state_dir) / STATE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _write_state(fd, {"end": 0, "streak": [], "abort": None})
    finally:
        os.close(fd)
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


def _write_state(fd: int, state: dict) -> None:
    """In place, over the whole reserved size: no new block is needed on a full disk."""
    blob = json.dumps(state).encode()
    os.pwrite(fd, blob + b"\0" * max(0, STATE_BYTES - len(blob)), 0)


def _read_state(fd: int) -> dict | None:
    """The state as the last writer left it; None if there is none (or it cannot be read:
    a writer's crash mid-write), and then the log says it."""
    try:
        return json.loads(os.pread(fd, STATE_BYTES, 0).split(b"\0", 1)[0])
    except (OSError, ValueError):
        return None


def _state_from_log(data: bytes) -> dict:
    """The state rebuilt from the log itself: for a state file that is missing or torn."""
    state: dict = {"end": len(data.split(b"\0", 1)[0]), "streak": [], "abort": None}
    for event in _parse(data):
        if event.get("kind") == "abort":
            state["abort"] = state["abort"] or event["reason"]
        elif event.get("kind") == "outcome":
            _count(state, event)
    return state


def _count(state: dict, event: dict) -> None:
    """One finished attempt into the streak: a success ends it; a failure that counts puts its
    input file last (the retries of one bad file, and the failing shards of one file, are one
    failure); a failure that does not count (bad input, an abort) leaves it as it is."""
    if event["error_type"] is None:
        state["streak"] = []
    elif event.get("counts", True):
        streak = [entry for entry in state["streak"] if entry["file"] != event["file"]]
        message = str(event.get("message", ""))[:STREAK_MESSAGE]
        streak.append(
            {
                "file": event["file"],
                "error_type": event["error_type"],
                "message": message,
            }
        )
        state["streak"] = streak[-ABORT_AFTER:]


def abort_reason(state_dir: str | Path) -> str | None:
    """Why the run was aborted, or None: one read of the small state file, whatever the
    run's length (a timestamp cannot tell two writes within the filesystem's clock tick
    apart, so nothing is cached but the abort, which is never taken back)."""
    path = Path(state_dir) / STATE
    if str(path) in _aborted:
        return _aborted[str(path)]
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        state = _read_state(fd)
    finally:
        os.close(fd)
    if state is None:  # mid-write, or written by no one: the log says it
        reason = next((e["reason"] for e in events(state_dir) if e.get("kind") == "abort"), None)
    else:
        reason = state.get("abort")
    if reason:
        _aborted[str(path)] = reason
    return reason


#: state file -> its run's abort reason, once seen
_aborted: dict[str, str] = {}


def _append(fd: int, end: int, event: dict) -> int:
    """The event written where the log ends (into the reserved space); the new end."""
    line = (json.dumps(event) + "\n").encode()
    os.pwrite(fd, line, end)
    return end + len(line)


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
        # one writer at a time: the state is judged as the last writer left it
        fcntl.flock(fd, fcntl.LOCK_EX)
        state_fd = os.open(Path(state_dir) / STATE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            state = _read_state(state_fd)
            if state is None:
                state = _state_from_log(os.pread(fd, max(os.fstat(fd).st_size, 1), 0))
            state["end"] = _append(fd, state["end"], event)
            _count(state, event)
            reason = None
            if error_type and counts and not state["abort"] and len(state["streak"]) >= ABORT_AFTER:
                named = "; ".join(
                    f"{e['file']} ({e['error_type']}: {e['message']})" for e in state["streak"]
                )
                reason = f"run aborted after {ABORT_AFTER} runtime failures in a row: {named}"
                abort = {"kind": "abort", "reason": reason, "time": time.time()}
                state["end"] = _append(fd, state["end"], abort)
                state["abort"] = reason
            _write_state(state_fd, state)
            return reason
        finally:
            os.close(state_fd)
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
