"""What the jobs of one run know about each other: the order in which files finished, and
whether the run was aborted.

Three runtime failures in a row (not bad input) point at the model, the driver or the node
rather than at the files; carrying on would only burn hours producing failures. The first
job to see the third failure writes the abort file and interrupts the Snakemake process that
started the run (when it runs on the same host), which stops scheduling, ends the running
jobs and writes the summary in its failure handler. Where the scheduler cannot be reached
(a cluster node), every job that starts after the abort fails at once, before loading a
model. The Snakefile's onstart handler clears this folder, so every run starts afresh.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil

from seqembed.output import write_json

#: consecutive runtime failures across all jobs that abort the run
ABORT_AFTER = 3
OUTCOMES = "outcomes.jsonl"
ABORT = "abort.json"
STARTED = "started.json"


def reset(state_dir: str | Path, scheduler_pid: int | None = None) -> None:
    """A new run: forget the last one's outcomes, note when this one started (throughput
    figures cover the files computed since) and which process schedules it."""
    shutil.rmtree(state_dir, ignore_errors=True)
    started = {"started": time.time(), "host": socket.gethostname(), "pid": scheduler_pid}
    write_json(Path(state_dir) / STARTED, started)


def stop_scheduler(state_dir: str | Path) -> bool:
    """Interrupt the run's Snakemake process, as Ctrl-C would: it starts no more jobs, ends
    the running ones and runs its failure handler. Only on its own host, and only if the
    process is still that Snakemake (a pid can be reused)."""
    try:
        started = json.loads((Path(state_dir) / STARTED).read_text())
        if not started.get("pid") or started.get("host") != socket.gethostname():
            return False
        process = psutil.Process(started["pid"])
        if process.create_time() > started["started"] or "snakemake" not in " ".join(
            process.cmdline()
        ):
            return False
        os.kill(started["pid"], signal.SIGINT)
        return True
    except (OSError, ValueError, KeyError, psutil.Error):
        return False


def run_started(state_dir: str | Path) -> float | None:
    try:
        return json.loads((Path(state_dir) / STARTED).read_text())["started"]
    except (OSError, ValueError, KeyError):
        return None


def abort_reason(state_dir: str | Path) -> str | None:
    try:
        return json.loads((Path(state_dir) / ABORT).read_text())["reason"]
    except (OSError, ValueError, KeyError):
        return None


def record_outcome(
    state_dir: str | Path, name: str, file: str, error_type: str | None, message: str = ""
) -> str | None:
    """Append one finished attempt (error_type None = success) and return the abort reason
    if this outcome completes a streak of ABORT_AFTER files failing at run time."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    event = {"name": name, "file": file, "error_type": error_type, "message": message}
    event["time"] = time.time()
    with open(state_dir / OUTCOMES, "a+") as log:
        # one writer at a time, and the streak is judged on the log as this writer left it
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps(event) + "\n")
        log.flush()
        log.seek(0)
        events = [json.loads(line) for line in log if line.strip()]
        # failures of distinct files since the last success: the retries of one bad file
        # are one failure, not a streak
        streak, files = [], set()
        for past in reversed(events):
            if past["error_type"] is None:
                break
            if past["name"] not in files:
                files.add(past["name"])
                streak.append(past)
        if error_type is None or len(streak) < ABORT_AFTER or abort_reason(state_dir):
            return None
        named = "; ".join(
            f"{e['file']} ({e['error_type']}: {e['message']})"
            for e in reversed(streak[:ABORT_AFTER])
        )
        reason = f"run aborted after {ABORT_AFTER} runtime failures in a row: {named}"
        write_json(state_dir / ABORT, {"reason": reason, "failures": streak[:ABORT_AFTER]})
        return reason
