"""Drawing the live view (seqembed.report.view) for the Snakemake logger plugin.

Modes, picked when a run is attached:
- live: a terminal and verbosity normal. A Rich live area at the bottom, redrawn twice a
  second; Snakemake's messages scroll above it. The jobs are separate processes that write
  to the inherited terminal directly, which would tear a redrawn area, so while the area is
  up the terminal's file descriptors are swapped for a pipe: everything the jobs (and
  Snakemake) write is read back line by line and printed above the area.
- plain: output is not a terminal (CI, a log file, a SLURM batch script), or verbosity is
  verbose (per-batch lines from the jobs, which a redrawn area would only hide). A block of
  plain lines every `interval` seconds while something changed, and one at the end.
- off: verbosity quiet. Only errors and the final table reach the user.
When the jobs run on other hosts (a cluster), their one-line failures land in SLURM's logs,
so the display prints them from the progress files instead, in every mode.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from seqembed.job.progress import VIEW_ENV, ProgressReader
from seqembed.report.view import (
    RunInfo,
    clock,
    failure_line,
    render_lines,
    snapshot,
    with_endings,
)

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
        # never stop reading: a full pipe would block every job and Snakemake itself
        with os.fdopen(read, "r", errors="replace", newline="\n") as pipe:
            for line in pipe:
                try:
                    # a progress bar redraws its line with \r: only its last state is news
                    self.emit(line.rstrip("\n").rsplit("\r", 1)[-1])
                except Exception:  # noqa: BLE001 - the line is lost, the run goes on
                    continue

    def restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
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
        #: rule -> jobs Snakemake scheduled (its job stats), once it said
        self.scheduled: dict[str, int] | None = None
        self.mode = "none"  # until a run is attached: Snakemake's messages pass through
        self._verbosity = "normal"
        self._ended: dict[str, float] = {}
        self._reported: set[tuple] = set()
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._live = None
        self._terminal: TextIO | None = None  # the real terminal while the pipe stands in
        self._capture: _Capture | None = None
        self._last_plain: list[str] | None = None
        self._detaching = threading.Lock()  # one detach at a time, start to end
        self._readers: list[threading.Thread] = []

    @property
    def verbosity(self) -> str:
        return self._verbosity

    def configure(self, verbosity: str) -> None:
        """Known when the workflow is parsed, before a run starts (or a dry run lists jobs)."""
        self._verbosity = verbosity

    @property
    def files_to_compute(self) -> int | None:
        """The files (or jobs) the scheduled embed jobs compute; the other input files were
        up to date when the run started."""
        if self.scheduled is None:
            return None
        run = self.run or RunInfo("", 0, ())
        return sum(count * run.files_of(rule) for rule, count in self.scheduled.items())

    def job_ended(self, name: str) -> None:
        """Snakemake says the job of `name` (a file, a shard's job or a bundle rule) failed:
        if its file still says it runs, it was killed without a last word. Its failure is
        looked up now: a retry soon overwrites the file."""
        with self.lock:
            bundled = self.run.bundles.get(name) if self.run is not None else None
            for ended in bundled or [name]:
                self._ended[ended] = time.time()
            if self.run is not None and self.mode not in ("none", "done"):
                try:
                    self._refresh()
                except Exception:  # noqa: BLE001 - the next tick tries again
                    pass

    # --- what Snakemake and the jobs say --------------------------------------------------

    def write(self, text: str) -> None:
        with self.lock:
            if self._live is not None:
                from rich.text import Text

                self._live.console.print(Text.from_ansi(text), soft_wrap=True)
                return
            # while the pipe stands in for the terminal, never write into it: the line
            # would come back here
            out = self._terminal if self._capture is not None else self.stream
            out.write(text + "\n")
            out.flush()

    # --- the run ------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Read the progress files once; the live area draws from this until the next tick."""
        jobs = with_endings(self.reader.scan(), self._ended)
        if not self.run.local:
            for job in jobs.values():
                key = (job.get("name"), job.get("attempt"), job.get("error_message"))
                if (
                    job.get("status") == "failed"
                    and job.get("error_type")
                    and key not in (self._reported)
                ):
                    self._reported.add(key)
                    self.write(failure_line(job))
        width = 100
        if self._live is not None:
            self._fit_terminal()
            width = self._live.console.width
        self._lines = render_lines(snapshot(self.run, jobs, self.files_to_compute), width)

    def attach(self, run: RunInfo) -> None:
        self.detach()
        with self.lock:
            self.run = run
            self._verbosity = run.verbosity
            self.reader = ProgressReader(run.state_dir)
            self._stop.clear()
            self._refresh()
            if run.verbosity == "quiet":
                self.mode = "off"
            else:
                os.environ[VIEW_ENV] = "1"  # inherited by the jobs started from now on
                self.mode = "live" if self.terminal and run.verbosity == "normal" else "plain"
            if self.mode == "live":
                self._start_live()
            if self.mode != "off" or not run.local:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._terminal = os.fdopen(os.dup(self.stream.fileno()), "w", buffering=1)
        self._live = Live(
            get_renderable=lambda: Text("\n".join(self._lines), no_wrap=True, overflow="crop"),
            console=Console(file=self._terminal),
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._fit_terminal()
        self._live.start(refresh=True)
        self._capture = _Capture(self.write)
        self._readers.append(self._capture.reader)

    def _fit_terminal(self) -> None:
        """Rich measures fds 0-2, and 1-2 are the pipe while the area is up: the real
        terminal's size (which also follows a resize), where it tells one."""
        try:
            columns, lines = os.get_terminal_size(self._terminal.fileno())
        except OSError:
            return
        if columns and lines:
            self._live.console.size = (columns, lines)

    def _tick(self) -> None:
        # plain: a block per interval; off (quiet, on a cluster): only the failure lines
        period = {"plain": self.interval, "off": 2.0}.get(self.mode, REFRESH_SECONDS)
        while not self._stop.wait(period):
            with self.lock:
                try:
                    self._refresh()
                    if self.mode == "live" and self._live is not None:
                        self._live.refresh()
                    elif self.mode == "plain":
                        self._print_plain()
                except Exception:  # noqa: BLE001 - a bad refresh must not end the view
                    continue

    def _print_plain(self, force: bool = False) -> None:
        if force or self._lines != self._last_plain:
            self._last_plain = self._lines
            self.write("\n".join([f"[{clock()}] {self._lines[0]}", *self._lines[1:]]))

    def detach(self) -> None:
        """Stop drawing: the last state stays on screen, and what follows (the summary table)
        is printed below it. The lock is not held while waiting for the ticker or for the
        pipe to drain: both need it. Never raises: it runs in Snakemake's handlers."""
        with self._detaching:
            try:
                self._detach()
            except Exception:  # noqa: BLE001 - the run's summary and exit code come first
                pass

    def _detach(self) -> None:
        self._stop.set()
        with self.lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=5)
        with self.lock:
            live, capture, mode = self._live, self._capture, self.mode
            if mode in ("none", "done"):
                return
            self.mode = "done"
        try:
            with self.lock:
                try:
                    self._refresh()
                    if live is not None:
                        live.refresh()
                finally:
                    if live is not None:
                        self._live = None
                        live.stop()
                if mode == "plain":
                    self._print_plain(force=True)
        finally:
            if capture is not None:
                capture.restore()  # lines still in the pipe go to the real terminal
                with self.lock:
                    self._capture = None

    def close(self) -> None:
        """Snakemake is done: whatever a job still wrote into the pipe is printed."""
        self.detach()
        for reader in self._readers:
            reader.join(timeout=10)
