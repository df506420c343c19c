"""Where each embed job says what it is doing, for the live view to read.

Snakemake's job events carry no device and no progress within a file, so every job publishes
one small JSON file, `<state>/progress/<name>.json`, that it rewrites (atomically, at most
every `MIN_INTERVAL` seconds) as batches complete: waiting for a device, running on one with
so many sequences done, then done or failed. The view only reads these files; it works the
same whether the jobs run on this host or on cluster nodes sharing the output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqembed.output import write_json

PROGRESS = "progress"
#: seconds between two rewrites of a running job's file: a GPU finishes many batches a second
MIN_INTERVAL = 0.5
#: set in the environment of the jobs when a view shows their progress: jobs then leave the
#: per-file "done" lines to the view
VIEW_ENV = "SEQEMBED_LIVE_VIEW"


def progress_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / PROGRESS


def view_is_on() -> bool:
    return os.environ.get(VIEW_ENV) == "1"


class JobProgress:
    """The progress file of one job attempt."""

    def __init__(self, state_dir: str | os.PathLike, name: str, **fields) -> None:
        self.path = progress_dir(state_dir) / f"{name}.json"
        self.fields = {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": None,
            "done": 0,
            "total": None,
            **fields,
        }
        self._written = 0.0

    def _write(self) -> None:
        self.fields["updated"] = time.time()
        # a lost update costs nothing, an fsync per job every half second on a shared disk does;
        # nor does one the disk refused (full): the view misses it, the job goes on
        with contextlib.suppress(OSError):
            write_json(self.path, self.fields, durable=False)
        self._written = time.monotonic()

    def update(self, **fields) -> None:
        """Publish now (a change of state: waiting, running, finished)."""
        self.fields.update(fields)
        self._write()

    def advance(self, done: int) -> None:
        """Sequences done so far; written only if the last write is old enough."""
        self.fields["done"] = done
        if time.monotonic() - self._written >= MIN_INTERVAL:
            self._write()


def publish_outcome(state_dir: str | os.PathLike, name: str, **fields) -> None:
    """A failed attempt's last word, written where the attempt had no JobProgress (or lost it
    to the exception)."""
    path = progress_dir(state_dir) / f"{name}.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {"name": name}
    with contextlib.suppress(OSError):  # a full disk: the record or the event log says it
        write_json(path, {**current, **fields, "updated": time.time()}, durable=False)


def say(config: dict, level: str, message: str) -> None:
    """A line from the job on its stderr, at `level` (quiet, normal, verbose) or above."""
    order = {"quiet": 0, "normal": 1, "verbose": 2}
    if order[config["verbosity"]] >= order[level]:
        print(message, file=sys.stderr, flush=True)


def news_level() -> str:
    """The level of per-file news (waiting for a device, done): a live view shows it
    already, so without verbose the job keeps quiet."""
    return "verbose" if view_is_on() else "normal"


@dataclass
class ProgressReader:
    """Reads the progress folder incrementally. A file whose job is done never changes again
    in this run, so a refresh costs one directory listing plus a stat of each unfinished
    job's file (re-read only when it changed), not a read of every file."""

    state_dir: str
    jobs: dict[str, dict] = field(default_factory=dict)
    _seen: dict[str, tuple] = field(default_factory=dict)

    def scan(self) -> dict[str, dict]:
        try:
            entries = list(os.scandir(progress_dir(self.state_dir)))
        except OSError:
            return self.jobs
        for entry in entries:
            name = entry.name.removesuffix(".json")
            if name == entry.name or self.jobs.get(name, {}).get("status") == "done":
                continue  # a writer's hidden temporary, or finished for good
            try:
                # every write is a new file renamed into place: a new inode, even where the
                # modification time is counted in whole seconds
                stat = entry.stat()
                stamp = (entry.inode(), stat.st_size, stat.st_mtime_ns)
                if self._seen.get(name) == stamp:
                    continue
                job = json.loads(Path(entry.path).read_text())
            except (OSError, ValueError):
                continue  # replaced while we looked: read on the next scan
            self._seen[name] = stamp
            self.jobs[name] = job
        return self.jobs
