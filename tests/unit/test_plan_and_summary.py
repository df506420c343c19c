import csv
import json
from collections import Counter

from seqembed.report.summary import failed_lines, render_table, summarize
from seqembed.run.plan import make_plan, planned_device, write_plan


def test_plan_lists_every_file_with_its_figures_and_a_device(fasta_set, tmp_path):
    files = {name: str(path) for name, path in fasta_set.items()}
    rows, overview = make_plan(files, ["cuda:0", "cuda:3"])
    write_plan(rows, overview, tmp_path / "plan.tsv", tmp_path / "plan.json")

    with open(tmp_path / "plan.tsv", newline="") as handle:
        read = {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert sorted(read) == sorted(files)
    assert {row["device"] for row in read.values()} == {"cuda:0", "cuda:3"}
    loads = Counter()
    for row in read.values():
        loads[row["device"]] += int(row["residues"])
    assert dict(loads) == json.loads((tmp_path / "plan.json").read_text())["planned_load"]
    assert overview["makespan"] == max(loads.values()) >= overview["lower_bound"]
    for name in files:
        assert planned_device(tmp_path / "plan.tsv", name) == read[name]["device"]
    assert planned_device(tmp_path / "plan.tsv", "unknown") is None
    assert planned_device(tmp_path / "missing.tsv", "alpha") is None


def record(name, device, sequences, started, finished, **extra):
    return {
        "status": "done",
        "name": name,
        "file": f"in/{name}.fasta",
        "device": device,
        "sequences": sequences,
        "residues": sequences * 100,
        "real_tokens": sequences * 102,
        "computed_tokens": sequences * 110,
        "truncated_sequences": 1,
        "started": started,
        "claimed": started + 0.5,
        "finished": finished,
        "wall_seconds": finished - started,
        "model_load_seconds": 1.0,
        **extra,
    }


def test_summary_totals_rates_devices_and_failures():
    records = {
        "a": record("a", "cuda:0", 100, 0.0, 10.0),
        "b": record("b", "cuda:1", 50, 2.0, 7.0),
        "c": record("c", "cuda:1", 30, 7.0, 9.0),
        "d": {
            "status": "failed",
            "file": "in/d.fasta",
            "error_type": "InputError",
            "error_message": "in/d.fasta: line 3:\nbad | char",
        },
        "e": None,
    }
    summary = summarize(records, {"cuda:0": 10_000, "cuda:1": 8_000})
    assert summary["files"] == {
        "total": 5,
        "done": 3,
        "failed": 1,
        "missing": 1,
        "computed_this_run": 3,
        "skipped": 0,
    }
    assert summary["missing"] == ["e"]
    assert summary["sequences"] == 180 and summary["residues"] == 18_000
    assert summary["wall_seconds"] == 10.0
    assert summary["sequences_per_s"] == 18.0
    assert summary["busy_seconds"] == 17.0 - 3 * 0.5  # waiting for a device is not busy
    assert summary["model_load_share"] == 3.0 / 15.5
    assert summary["padding_efficiency"] == 102 / 110
    assert summary["devices"]["cuda:1"]["busy_seconds"] == 6.0
    assert summary["devices"]["cuda:1"]["sequences_per_s"] == 80 / 6.0
    assert summary["devices"]["cuda:0"]["planned_residues"] == 10_000
    assert summary["failures_by_type"] == {"InputError": 1}
    assert failed_lines(summary) == ["in/d.fasta|InputError|in/d.fasta: line 3: bad / char"]
    table = render_table(summary)
    assert "3/5 files done (0 were up to date), 1 failed;" in table
    assert "1 file(s) with an embedding but no record, counted neither done nor failed: e" in table
    assert "failures by type: InputError 1" in table
    assert all(len(line) <= 100 for line in table.splitlines())


def test_summary_of_nothing_done_has_no_rates():
    summary = summarize({"a": None})
    assert summary["sequences_per_s"] is None and summary["padding_efficiency"] is None
    assert "0/1 files done" in render_table(summary)


def test_speed_covers_only_files_computed_in_this_run():
    records = {
        "old": record("old", "cuda:0", 1000, 0.0, 100.0),
        "new": record("new", "cuda:0", 50, 5000.0, 5010.0),
    }
    summary = summarize(records, since=4000.0)
    assert summary["files"]["done"] == 2 and summary["files"]["computed_this_run"] == 1
    assert summary["files"]["skipped"] == 1
    assert summary["wall_seconds"] == 10.0
    assert summary["sequences_per_s"] == 5.0
    assert summary["devices"]["cuda:0"]["files"] == 1


def test_failure_handler_names_missing_files_and_a_failed_step(tmp_path, capsys):
    from seqembed.layout import RunLayout
    from seqembed.output import write_json
    from seqembed.report.summary import exit_code_after_failure

    layout = RunLayout(str(tmp_path / "results"))
    files = {"a": "in/a.fasta", "b": "in/b.fasta"}
    write_json(layout.record("a"), record("a", "cuda:0", 10, 0.0, 1.0))
    (tmp_path / "results" / "embeddings").mkdir(parents=True)
    (tmp_path / "results" / "embeddings" / "a.pt").write_bytes(b"")

    # b has neither embedding nor record: its job never ran (say, its environment failed)
    assert exit_code_after_failure(layout, files) == 2
    lines = (tmp_path / "results" / "failed_files.txt").read_text().splitlines()
    assert lines == [
        "in/b.fasta|Missing|no embedding and no record: the job never ran or died before "
        "writing one (see Snakemake's log)"
    ]

    # every file done, yet the run failed (the summary or plan step): not "partial"
    write_json(layout.record("b"), record("b", "cuda:1", 5, 0.0, 1.0))
    assert exit_code_after_failure(layout, files) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "seqembed: all 2 files are done, but a workflow step failed: see Snakemake's error above"
    )
