"""The timeline picture from recorded job records: lanes, bars and outcome colours."""

from __future__ import annotations

from matplotlib.colors import to_hex

from seqembed.report.summary import summarize
from seqembed.report.timeline import OUTCOME_COLOURS, SETUP, SETUP_COLOUR, draw_timeline, lanes


def done(name, device, claimed, finished, **extra):
    return {
        "status": "done",
        "name": name,
        "file": f"in/{name}.fasta",
        "device": device,
        "planned_device": device,
        "sequences": 10,
        "residues": 1_000,
        "real_tokens": 1_020,
        "computed_tokens": 1_100,
        "truncated_sequences": 0,
        "started": claimed - 1,
        "claimed": claimed,
        "finished": finished,
        "model_load_seconds": 0.5,
        **extra,
    }


RECORDS = {
    "a": done("a", "cuda:0", 100.0, 160.0),
    "b": done("b", "cuda:1", 101.0, 130.0),
    "c": done("c", "cuda:1", 131.0, 150.0),
    "d": {
        "status": "failed",
        "name": "d",
        "file": "in/d.fasta",
        "device": "cuda:1",
        "claimed": 150.5,
        "started": 150.0,
        "finished": 155.0,
        "error_type": "OOM",
        "error_message": "sequence 'x' does not fit",
    },
    # bad input fails before a device is claimed: no bar
    "e": {
        "status": "failed",
        "name": "e",
        "file": "in/e.fasta",
        "device": None,
        "claimed": None,
        "finished": 101.0,
        "error_type": "InputError",
        "error_message": "line 3",
    },
    "old": done("old", "cuda:0", 10.0, 20.0),  # an earlier run: not drawn
}


def test_lanes_hold_this_runs_bars_in_time_order():
    by_device = lanes(RECORDS, since=50.0)
    assert list(by_device) == ["cuda:0", "cuda:1"]
    assert [(b.name, b.start, b.seconds, b.outcome) for b in by_device["cuda:1"]] == [
        ("b", 1.0, 29.0, "done"),
        ("c", 31.0, 19.0, "done"),
        ("d", 50.5, 4.5, "OOM"),
    ]
    assert [b.name for b in by_device["cuda:0"]] == ["a"]
    assert by_device["cuda:1"][2].colour == OUTCOME_COLOURS["OOM"]


def test_picture_has_one_lane_per_device_and_bars_coloured_by_outcome(tmp_path):
    summary = summarize(RECORDS, since=50.0)
    path = tmp_path / "timeline.png"
    axes = draw_timeline(RECORDS, summary, path, since=50.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [tick.get_text() for tick in axes.get_yticklabels()] == ["cuda:0", "cuda:1"]
    lanes_drawn = [
        [to_hex(colour) for colour in collection.get_facecolors()]
        for collection in axes.collections
    ]
    green, orange = OUTCOME_COLOURS["done"].lower(), OUTCOME_COLOURS["OOM"].lower()
    assert lanes_drawn == [[green], [green, green, orange]]
    assert sorted(t.get_text() for t in axes.get_legend().get_texts()) == ["OOM", "done"]


def test_a_run_that_computed_nothing_still_gets_a_picture(tmp_path):
    summary = summarize({"old": RECORDS["old"]}, since=50.0)
    axes = draw_timeline({"old": RECORDS["old"]}, summary, tmp_path / "t.svg", since=50.0)
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    assert axes.get_title(loc="left") == "no file was computed in this run"


def test_start_up_and_model_load_show_in_a_colour_of_their_own(tmp_path):
    # b started the worker of cuda:1 (3 s before its first batch); c found it loaded
    records = {
        "b": done("b", "cuda:1", 101.0, 130.0, model_was_loaded=False, worker_start_seconds=3.0),
        "c": done("c", "cuda:1", 131.0, 150.0, model_was_loaded=True, worker_start_seconds=0),
    }
    by_device = lanes(records)
    assert [(bar.name, bar.setup) for bar in by_device["cuda:1"]] == [("b", 3.0), ("c", 0.0)]
    axes = draw_timeline(records, summarize(records), tmp_path / "t.png")
    setup = [c for c in axes.collections if to_hex(c.get_facecolors()[0]) == SETUP_COLOUR.lower()]
    ((segment,),) = [[path.get_extents().x0 for path in c.get_paths()] for c in setup]
    widths = [path.get_extents().width for path in setup[0].get_paths()]
    assert segment == 0.0 and widths == [3.0]
    assert SETUP in [t.get_text() for t in axes.get_legend().get_texts()]
