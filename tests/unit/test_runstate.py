import os
import subprocess
import sys
import time

from seqembed import runstate


def test_three_runtime_failures_in_a_row_abort_and_a_success_resets(tmp_path):
    state = tmp_path / "run"
    runstate.reset(state)
    assert runstate.record_outcome(state, "a", "a.fa", "OOM", "x") is None
    assert runstate.record_outcome(state, "b", "b.fa", "Crash", "y") is None
    assert runstate.record_outcome(state, "c", "c.fa", None) is None  # success: streak over
    assert runstate.record_outcome(state, "d", "d.fa", "OOM", "1") is None
    # the retries of one file are one failure, not a streak
    assert runstate.record_outcome(state, "d", "d.fa", "OOM", "1") is None
    assert runstate.record_outcome(state, "d", "d.fa", "OOM", "1") is None
    assert runstate.record_outcome(state, "e", "e.fa", "ModelError", "2") is None
    reason = runstate.record_outcome(state, "f", "f.fa", "Error", "3")
    assert reason == (
        "run aborted after 3 runtime failures in a row: d.fa (OOM: 1); "
        "e.fa (ModelError: 2); f.fa (Error: 3)"
    )
    assert runstate.abort_reason(state) == reason
    # the abort is declared once; later failures do not rewrite it
    assert runstate.record_outcome(state, "g", "g.fa", "OOM", "4") is None
    runstate.reset(state)
    assert runstate.abort_reason(state) is None


def test_stop_scheduler_only_interrupts_the_runs_own_snakemake(tmp_path):
    state = tmp_path / "run"
    # a process that is not Snakemake, with the pid the run recorded: left alone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        runstate.reset(state, scheduler_pid=sleeper.pid)
        assert runstate.stop_scheduler(state) is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
    runstate.reset(state, scheduler_pid=None)
    assert runstate.stop_scheduler(state) is False
    runstate.reset(state, scheduler_pid=os.getpid() + 10_000_000)  # no such process
    assert runstate.stop_scheduler(state) is False
