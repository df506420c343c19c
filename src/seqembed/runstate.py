"""What the jobs of one run know about each other: the order in which files finished, and
whether the run was aborted.

Three runtime failures in a row (not bad input) point at the model, the driver or the node
rather than at the files; carrying on would only burn hours producing failures. The first
job to see the third failure writes the abort file; every job that starts after it fails at
once, before loading a model. The Snakefile's onstart handler clears this folder, so every
run starts with a clean slate.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from pathlib import Path

from seqembed.output import write_json

#: consecutive runtime failures across all jobs that abort the run
ABORT_AFTER = 3
OUTCOMES = "outcomes.jsonl"
ABORT = "abort.json"
STARTED = "started.json"


def reset(state_dir: str | Path) -> None:
    """A new run: forget the last one's outcomes, note when this one started (throughput
    figures cover the files computed since)."""
    shutil.rmtree(state_dir, ignore_errors=True)
    write_json(Path(state_dir) / STARTED, {"started": time.time()})


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
    if this outcome completes a streak of ABORT_AFTER runtime failures."""
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
        streak = []
        for past in reversed(events):
            if past["error_type"] is None:
                break
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
