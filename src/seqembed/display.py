"""Drawing the live view (seqembed.view) for the Snakemake logger plugin.

Three modes, picked when a run is attached:
- live: a terminal and verbosity normal. A Rich live area at the bottom, redrawn twice a
  second; Snakemake's messages scroll above it. The jobs are separate processes that write
  to the inherited terminal directly, which would tear a redrawn area, so while the area is
  up the terminal's file descriptors are swapped for a pipe: everything the jobs (and
  Snakemake) write is read back line by line and printed above the area.
- plain: output is not a terminal (CI, a log file, a SLURM batch script), or verbosity is
  verbose (per-batch lines from the jobs, which a redrawn area would only hide). A block of
  plain lines every `interval` seconds while something changed, and one at the end.
- off: verbosity quiet. Only errors and the final table reach the user.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from seqembed.progress import VIEW_ENV, ProgressReader
from seqembed.view import RunInfo, clock, render_lines, snapshot

REFRESH_SECONDS = 0.5


class _Capture:
    """The terminal's stdout and stderr swapped for a pipe whose lines go to `emit`."""

    def __init__(self, emit) -> None:
        self.emit = emit
        self.fds = [fd for fd in (1, 2) if os.isatty(fd)]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.saved = {fd: os.dup(fd) for fd in self.fds}
        read, write = os.pipe()
        for fd in self.fds:
            os.dup2(write, fd)
        os.close(write)
        self.reader = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self.reader.start()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "r", errors="replace") as pipe:
            for line in pipe:
                self.emit(line.rstrip("\n"))

    def restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        # the pipe ends when the last job holding it exits; what is in it is printed first
        self.reader.join(timeout=2)


class RunDisplay:
    def __init__(self, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.interval = interval
        self.lock = threading.RLock()
        self.run: RunInfo | None = None
        self.reader: ProgressReader | None = None
        self.files_to_compute: int | None = None
        self.mode = "none"  # until a run is attached: Snakemake's messages pass through
        self._verbosity = "normal"
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._live = None
        self._capture: _Capture | None = None
        self._last_plain: list[str] | None = None

    @property
    def verbosity(self) -> str:
        return self._verbosity

    def configure(self, verbosity: str) -> None:
        """Known when the workflow is parsed, before a run starts (or a dry run lists jobs)."""
        self._verbosity = verbosity

    # --- what Snakemake says ------------------------------------------------------------------

    def write(self, text: str) -> None:
        with self.lock:
            if self._live is not None:
                from rich.text import Text

                self._live.console.print(Text.from_ansi(text), soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    # --- the run --------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        jobs = self.reader.scan() if self.reader else {}
        width = self._live.console.width if self._live is not None else 100
        return render_lines(snapshot(self.run, jobs, self.files_to_compute), width)

    def attach(self, run: RunInfo) -> None:
        with self.lock:
            self.detach()
            self.run = run
            self._verbosity = run.verbosity
            self.reader = ProgressReader(run.state_dir)
            self._stop.clear()
            if run.verbosity == "quiet":
                self.mode = "off"
                return
            os.environ[VIEW_ENV] = "1"  # inherited by the jobs started from now on
            self.mode = "live" if self.terminal and run.verbosity == "normal" else "plain"
            if self.mode == "live":
                self._start_live()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        terminal = os.fdopen(os.dup(self.stream.fileno()), "w", buffering=1)
        console = Console(file=terminal)
        self._live = Live(
            get_renderable=lambda: Text("\n".join(self.lines()), no_wrap=True, overflow="crop"),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start(refresh=True)
        self._capture = _Capture(self.write)

    def _tick(self) -> None:
        period = REFRESH_SECONDS if self.mode == "live" else self.interval
        while not self._stop.wait(period):
            with self.lock:
                if self.mode == "live" and self._live is not None:
                    self._live.refresh()
                elif self.mode == "plain":
                    self._print_plain()

    def _print_plain(self, force: bool = False) -> None:
        lines = self.lines()
        if force or lines != self._last_plain:
            self._last_plain = lines
            self.write("\n".join([f"[{clock()}] {lines[0]}", *lines[1:]]))

    def detach(self) -> None:
        """Stop drawing: the last state stays on screen, and what follows (the summary table)
        is printed below it."""
        self._stop.set()
        with self.lock:
            if self._ticker is not None:
                ticker, self._ticker = self._ticker, None
                if ticker is not threading.current_thread():
                    self.lock.release()
                    try:
                        ticker.join(timeout=5)
                    finally:
                        self.lock.acquire()
            if self.mode == "live" and self._live is not None:
                live, self._live = self._live, None
                live.refresh()
                live.stop()
                capture, self._capture = self._capture, None
                if capture:
                    capture.restore()
            elif self.mode == "plain":
                self._print_plain(force=True)
            if self.mode != "none":
                self.mode = "done"
