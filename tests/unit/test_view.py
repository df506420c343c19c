"""The live view, rendered from progress files written by the jobs' own JobProgress, and its
two displays: plain periodic lines, and the Rich live area on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time

from conftest import REPO

from seqembed.job.progress import JobProgress, ProgressReader, publish_outcome, view_is_on
from seqembed.report import view
from seqembed.report.display import RunDisplay

HOST = socket.gethostname()


def record_progress(state) -> None:
    """What four jobs of one run left behind: one running on each device, one waiting for a
    device, one finished, one failed."""
    JobProgress(state, "sample_a", total=10_000).update(status="running", device="cuda:0")
    running = JobProgress(state, "sample_b", total=200)
    running.update(status="running", device="cuda:1")
    running.advance(150)  # within MIN_INTERVAL of the last write: not published yet
    running.update(done=150)
    JobProgress(state, "sample_c", total=50).update(status="waiting")
    JobProgress(state, "sample_d", total=70).update(status="done", device="cuda:0", done=70)
    JobProgress(state, "sample_e", total=70).update(status="running", device="cuda:1")
    publish_outcome(state, "sample_e", status="failed", error_type="OOM")


def test_view_lines_from_recorded_progress(tmp_path):
    state = tmp_path / "run"
    record_progress(state)
    JobProgress(state, "sample_a", total=10_000).update(
        status="running", device="cuda:0", done=4_200
    )
    run = view.RunInfo(str(state), files_total=10, devices=("cuda:0", "cuda:1", "cuda:2"))
    jobs = ProgressReader(str(state)).scan()
    # 3 embed jobs scheduled: the other 7 files were up to date when the run started
    lines = view.render_lines(view.snapshot(run, jobs, files_to_compute=3))
    assert lines == [
        "seqembed  files 8 / 10 done (80.0%) · 1 failed · 2 running · 1 waiting for a device",
        "  cuda:0       sample_a                            ████████░░░░░░░░░░░░     4,200 / "
        "10,000     42%",
        "  cuda:1       sample_b                            ███████████████░░░░░       150 / 200"
        "        75%",
        "  cuda:2       idle",
    ]
    assert all(len(line) <= 100 for line in lines)
    # 7 scheduled, 5 of them started (done, failed, running, waiting): 2 not yet
    later = view.snapshot(run, jobs, files_to_compute=7)
    assert later.queued == 2 and view.header_line(later).endswith(" · 2 queued")


def test_a_file_with_long_sequences_in_windows_says_how_many_windows():
    # its bar counts sequences: a long one is done with its last window
    line = view.device_line("cuda:0", {"name": "long", "total": 12, "done": 3, "windows": 16})
    assert "long (16 windows)" in line and "3 / 12" in line and len(line) <= 100


def test_jobs_on_other_hosts_get_lanes_and_dead_local_jobs_none(tmp_path):
    state = tmp_path / "run"
    JobProgress(state, "remote", total=10, host="node07").update(status="running", device="cuda:0")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    JobProgress(state, "crashed", total=10, pid=int(dead.stdout)).update(
        status="running", device="cuda:1"
    )
    run = view.RunInfo(str(state), files_total=2, devices=())
    snap = view.snapshot(run, ProgressReader(str(state)).scan(), files_to_compute=2)
    assert [label for label, _ in snap.devices] == ["node07/cuda:0"]
    assert snap.files_done == 0 and snap.running == 1


def test_reader_rereads_only_changed_files(tmp_path):
    state = tmp_path / "run"
    progress = JobProgress(state, "a", total=10)
    progress.update(status="running", device="cpu:0")
    reader = ProgressReader(str(state))
    assert reader.scan()["a"]["done"] == 0
    stamp = progress.path.stat().st_mtime_ns
    progress.update(done=7)
    # a filesystem that counts modification times in whole seconds: the same time again
    os.utime(progress.path, ns=(stamp, stamp))
    assert reader.scan()["a"]["done"] == 7


def test_plain_display_prints_blocks_while_attached_and_a_last_one(tmp_path, monkeypatch):
    # attach() sets it for the jobs; set here first, so that it is undone after the test
    monkeypatch.setenv("SEQEMBED_LIVE_VIEW", "0")
    state = tmp_path / "run"
    record_progress(state)
    stream = io.StringIO()
    display = RunDisplay(stream=stream, interval=0.05)
    display.scheduled = {"embed": 5}
    display.attach(view.RunInfo(str(state), files_total=5, devices=("cuda:0", "cuda:1")))
    assert display.mode == "plain" and view_is_on()  # the jobs leave "done" lines to the view
    time.sleep(0.2)
    JobProgress(state, "sample_a", total=10_000).update(status="done", device="cuda:0")
    display.detach()
    blocks = [b for b in stream.getvalue().split("[") if b]
    # printed when something changed, not every interval
    assert 2 <= len(blocks) <= 3, stream.getvalue()
    assert "files 1 / 5 done" in blocks[0] and "  cuda:0       sample_a" in blocks[0]
    assert blocks[-1].splitlines()[1:] == [
        "  cuda:0       idle",
        "  cuda:1       sample_b                            ███████████████░░░░░       150 / 200"
        "        75%",
    ]
    display.write("after the run")  # Snakemake's last messages pass through
    assert stream.getvalue().endswith("after the run\n")


def test_quiet_shows_no_view(tmp_path, monkeypatch):
    # attach() sets it for the jobs; set here first, so that it is undone after the test
    monkeypatch.setenv("SEQEMBED_LIVE_VIEW", "0")
    stream = io.StringIO()
    display = RunDisplay(stream=stream, interval=0.01)
    display.attach(view.RunInfo(str(tmp_path), 1, ("cpu:0",), verbosity="quiet"))
    time.sleep(0.05)
    display.detach()
    assert stream.getvalue() == "" and not view_is_on()


LIVE_SCRIPT = """
import subprocess, sys, time
from seqembed.report import view
from seqembed.report.display import RunDisplay
from seqembed.job.progress import JobProgress

state = sys.argv[1]
JobProgress(state, "sample_a", total=400).update(status="running", device="cuda:0", done=100)
display = RunDisplay()
display.attach(view.RunInfo(state, files_total=2, devices=("cuda:0", "cuda:1")))
# a job: a separate process writing to the terminal it inherited
subprocess.run(["sh", "-c", "echo a line from a job >&2"])
time.sleep(1.2)
# a job still writing as the view stops: its line comes before what follows the view
subprocess.Popen(["sh", "-c", "sleep 0.3; echo a late line >&2"])
display.detach()
print("the final table", flush=True)
"""


def test_live_display_on_a_terminal_prints_job_output_above_the_area(tmp_path):
    """A real pseudo-terminal: the job's line is read back through the pipe and printed above
    the live area instead of tearing it."""
    primary, secondary = pty.openpty()
    # a 100 x 30 terminal, as the check uses
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    environment.pop("COLUMNS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", LIVE_SCRIPT, str(tmp_path / "run")],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=environment,
    )
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 20)
        if not ready:
            break
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=20) == 0
    text = output.decode(errors="replace")
    assert "a line from a job" in text
    assert "seqembed  files 0 / 2 done" in text
    assert "cuda:0       sample_a" in text and "100 / 400" in text
    # the job's line was printed before the last drawing of the area, the table after it
    assert text.index("a line from a job") < text.rindex("cuda:1       idle")
    assert text.rindex("cuda:1       idle") < text.index("a late line")
    assert text.index("a late line") < text.index("the final table")
    assert "\x1b[" in text  # cursor movement: it really was a live area


def test_on_a_cluster_failures_are_told_once_and_killed_jobs_leave_their_device(
    tmp_path, monkeypatch
):
    """On a cluster the jobs' own error lines go to SLURM's logs: the display prints them
    from the progress files, once per attempt; a job Snakemake reports failed while its file
    still says it runs (killed by a time limit) no longer holds its device in the view."""
    monkeypatch.setenv("SEQEMBED_LIVE_VIEW", "0")
    state = tmp_path / "run"
    JobProgress(state, "x", file="in/x.fasta", total=5).update(status="waiting")
    JobProgress(state, "y", total=9, host="node3").update(status="running", device="cuda:0")
    stream = io.StringIO()
    display = RunDisplay(stream=stream, interval=60)  # plain blocks far apart
    run = view.RunInfo(str(state), files_total=2, devices=(), local=False)
    display.attach(run)
    publish_outcome(state, "x", status="failed", attempt=1, error_type="OOM", error_message="m")
    display.job_ended("x")  # Snakemake reports the failure before it starts the retry...
    JobProgress(state, "x", file="in/x.fasta", total=5, attempt=2).update(status="waiting")
    display.job_ended("y")
    time.sleep(0.1)
    display.detach()  # ...which has overwritten the file by the time the next block is due
    assert stream.getvalue().count("seqembed: OOM: in/x.fasta: m\n") == 1
    jobs = view.with_endings(ProgressReader(str(state)).scan(), display._ended)
    snap = view.snapshot(run, jobs, files_to_compute=2)
    # x is waiting for its retry; y was killed: it holds no device any more
    assert snap.running == 0 and snap.waiting == 1 and snap.files_failed == 1


def test_lanes_name_the_node_and_the_gpu_slurm_granted(monkeypatch):
    from seqembed.devices import lane_for

    environ = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0", "SLURM_STEP_GPUS": "3"}
    # device cgroups: the job sees its GPU as 0, SLURM knows it as GPU 3 of the node
    assert lane_for("cuda:0", environ) == f"{HOST}/cuda:3"
    assert lane_for("cuda:0", {"SLURM_JOB_ID": "7"}) == f"{HOST}/slurm-7/cuda:0"
    assert lane_for("cuda:1", {}) == "cuda:1"


def test_the_plugin_follows_the_run_even_when_snakemake_is_told_to_be_quiet():
    """--quiet hides Snakemake's progress and rule messages, not the events the view needs."""
    import logging
    from types import SimpleNamespace

    from snakemake.settings.enums import Quietness
    from snakemake_interface_logger_plugins.common import LogEvent

    from snakemake_logger_plugin_seqembed import LogHandler, LogHandlerSettings

    settings = SimpleNamespace(
        quiet={Quietness.PROGRESS, Quietness.RULES},
        debug_dag=False,
        verbose=False,
        dryrun=False,
        printshellcmds=False,
    )
    handler = LogHandler(settings, LogHandlerSettings(interval=1.0))
    shown = []
    handler.display.write = shown.append

    def emit(message, **extra):
        record = logging.LogRecord("snakemake", logging.INFO, __file__, 1, message, None, None)
        record.__dict__.update(extra)
        handler.emit(record)

    emit("Job stats:", event=LogEvent.RUN_INFO, stats={"embed": 3, "total": 5})
    emit("", event=LogEvent.JOB_INFO, jobid=4, rule_name="embed", wildcards={"name": "a"})
    assert handler.display.files_to_compute == 3 and handler.embed_jobs == {4: "a"}
    # a bundle's job (seqembed.bundles): the view learns its files from the run
    emit("", event=LogEvent.JOB_INFO, jobid=5, rule_name="embed_bundle_1", wildcards={})
    assert handler.embed_jobs[5] == "embed_bundle_1"
    assert shown == []  # and yet nothing printed: --quiet still applies
