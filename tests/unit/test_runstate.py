import json
import multiprocessing as mp
import subprocess

import pytest
from helpers import fill, small_disk

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
    assert [e["kind"] for e in runstate.events(state)].count("abort") == 1
    assert runstate.last_failures(state)["g"]["message"] == "4"
    assert "c" not in runstate.last_failures(state)
    runstate.reset(state)
    assert runstate.abort_reason(state) is None
    assert runstate.events(state) == []


def _write_outcomes(state, writer, count):
    for index in range(count):
        runstate.record_outcome(state, f"w{writer}-{index}", "f.fa", None)


def test_concurrent_writers_lose_no_event(tmp_path):
    state = tmp_path / "run"
    runstate.reset(state)
    context = mp.get_context("spawn")
    writers = [context.Process(target=_write_outcomes, args=(state, w, 60)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    names = [e["name"] for e in runstate.events(state)]
    assert sorted(names) == sorted(f"w{w}-{i}" for w in range(4) for i in range(60))


def test_the_streak_and_the_abort_are_counted_when_the_disk_is_full(tmp_path):
    # a tiny filesystem, filled up after the run started: the reserved space takes the events
    folder = tmp_path / "tiny"
    problem = small_disk(folder, "2m")
    if problem:
        pytest.skip(problem)
    try:
        state = folder / "run"
        runstate.reset(state)
        fill(folder)
        with pytest.raises(OSError):
            (folder / "another").write_text(json.dumps({"no": "space"}))
        for name in "abc":
            reason = runstate.record_outcome(state, name, f"{name}.fa", "OutputError", "full")
        assert reason and reason.startswith("run aborted after 3 runtime failures")
        assert runstate.abort_reason(state) == reason
        assert sorted(runstate.last_failures(state)) == ["a", "b", "c"]
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_the_scheduler_learns_of_an_abort_declared_by_any_job(tmp_path):
    state = tmp_path / "run"
    runstate.reset(state)
    seen = []
    watcher = runstate.watch_for_abort(state, seen.append, interval_s=0.05)
    for name in "abc":
        runstate.record_outcome(state, name, f"{name}.fa", "Crash", "x")
    watcher.join(5)
    assert seen == [runstate.abort_reason(state)]
