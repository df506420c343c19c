import csv
import json
from collections import Counter
from pathlib import Path

from seqembed.job.embed import planned_device
from seqembed.report.summary import failed_lines, summarize
from seqembed.report.table import render_table
from seqembed.run.plan import make_plan, write_plan


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
    # a name the TSV quotes (a tab, a quote) is found by reading the rows; a name that is the
    # start of another's is not taken for it
    odd = {'tab\tand "quote"': str(fasta_set["alpha"]), "alp": str(fasta_set["beta"])}
    rows, _ = make_plan({**files, **odd}, ["cuda:0", "cuda:3"])
    write_plan(rows, overview, tmp_path / "plan.tsv", tmp_path / "plan.json")
    devices = {row["name"]: row["device"] for row in rows}
    for name in ('tab\tand "quote"', "alp", "alpha"):
        assert planned_device(tmp_path / "plan.tsv", name) == devices[name], name


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
    # a: its worker started for it (2 s, the load included); b: the same; c found b's worker
    resident = {"model_was_loaded": True, "worker_start_seconds": 0.0}
    records = {
        "a": record("a", "cuda:0", 100, 0.0, 10.0, compute_seconds=7.0, worker_start_seconds=2.0),
        "b": record("b", "cuda:1", 50, 2.0, 7.0, compute_seconds=2.0, worker_start_seconds=2.0),
        "c": record("c", "cuda:1", 30, 7.0, 9.0, compute_seconds=1.5, **resident),
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
    # honest accounting: what the devices computed, and what start-up and loads cost them
    assert summary["devices"]["cuda:1"]["models_loaded"] == 1
    assert summary["devices"]["cuda:1"]["setup_seconds"] == 2.0
    assert summary["devices"]["cuda:1"]["utilisation"] == 3.5 / 10.0
    assert summary["models_loaded"] == 2 and summary["setup_seconds"] == 4.0
    assert summary["utilisation"] == 10.5 / (10.0 * 2)
    assert summary["setup_share"] == 4.0 / (10.0 * 2)
    table = render_table(summary)
    assert "start-up and model load 4.0 s (20% of device time); models loaded 2;" in table
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
        "in/b.fasta|Missing|no embedding and no record from this run: the job never ran or "
        "died before writing one (see Snakemake's log)"
    ]

    # every file done, yet the run failed (the summary or plan step): not "partial"
    write_json(layout.record("b"), record("b", "cuda:1", 5, 0.0, 1.0))
    (tmp_path / "results" / "embeddings" / "b.pt").write_bytes(b"")
    assert exit_code_after_failure(layout, files) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "seqembed: all 2 files are done, but a workflow step failed: see Snakemake's error above"
    )


def earlier_run(tmp_path):
    """A results folder whose records come from a run before this one (which started now)."""
    from seqembed import runstate
    from seqembed.layout import RunLayout
    from seqembed.output import write_json

    layout = RunLayout(str(tmp_path / "results"))
    files = {name: f"in/{name}.fasta" for name in "abc"}
    for name in "abc":
        write_json(layout.record(name), record(name, "cuda:0", 10, 0.0, 1.0))
    (tmp_path / "results" / "embeddings").mkdir(parents=True)
    runstate.reset(layout.state)
    return layout, files


def test_old_records_are_believed_only_as_far_as_the_disk_agrees(tmp_path, capsys):
    from seqembed import runstate
    from seqembed.output import write_json
    from seqembed.report.summary import exit_code_after_failure

    layout, files = earlier_run(tmp_path)
    (tmp_path / "results" / "embeddings" / "a.pt").write_bytes(b"")
    # b: done in an earlier run, its embedding deleted to redo it; c: failed in an earlier
    # run. This run was aborted (by three other failures) before either was started
    write_json(
        layout.record("c"),
        {"status": "failed", "name": "c", "file": "in/c.fasta", "error_type": "OOM",
         "error_message": "old", "finished": 1.0},
    )  # fmt: skip
    for name in "xyz":
        runstate.record_outcome(layout.state, name, f"in/{name}.fasta", "Crash", "x")
    assert exit_code_after_failure(layout, files) == 1
    lines = (tmp_path / "results" / "failed_files.txt").read_text().splitlines()
    reason = runstate.abort_reason(layout.state)
    assert lines == [
        f"in/b.fasta|Aborted|not started: {reason}",
        f"in/c.fasta|Aborted|not started: {reason}",
    ]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["files"]["done"] == 1 and summary["files"]["failed"] == 2


def test_a_failure_whose_record_was_never_written_is_known_from_the_event_log(tmp_path):
    from seqembed import runstate
    from seqembed.report.summary import exit_code_after_failure

    layout, files = earlier_run(tmp_path)
    for name in "ab":
        (tmp_path / "results" / "embeddings" / f"{name}.pt").write_bytes(b"")
    runstate.record_outcome(
        layout.state, "c", "in/c.fasta", "OutputError", "results/c.pt: cannot write: full"
    )
    assert exit_code_after_failure(layout, files) == 2
    assert (tmp_path / "results" / "failed_files.txt").read_text().splitlines() == [
        "in/c.fasta|OutputError|results/c.pt: cannot write: full"
    ]


def test_summary_reaches_the_terminal_when_it_cannot_be_written(tmp_path, capsys):
    from seqembed.report.summary import exit_code_after_failure

    layout, files = earlier_run(tmp_path)
    (tmp_path / "results" / "embeddings" / "a.pt").write_bytes(b"")
    (tmp_path / "results" / "summary.json").mkdir()  # cannot be replaced by a file
    assert exit_code_after_failure(layout, files) == 2
    out = capsys.readouterr().out
    assert f"seqembed: cannot write {layout.summary} and {layout.failed}: " in out
    assert "in/b.fasta|Missing|" in out and "in/c.fasta|Missing|" in out
    assert "1/3 files done" in out
    assert out.strip().splitlines()[-1].startswith("seqembed: 2 of 3 files failed")


def test_finished_embeddings_removed_with_their_failed_group_are_put_back(tmp_path, capsys):
    import os

    from seqembed.job.records import code_stamp, input_stamp, keep_receipt
    from seqembed.output import write_json
    from seqembed.report.summary import exit_code_after_failure

    layout, files = earlier_run(tmp_path)
    settings = {"model": "m", "layers": "last"}
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in "abcd":
        path = inputs / f"{name}.fasta"
        path.write_text(f">{name}\nMKV\n")
        files[name] = str(path)
        output = layout.embedding(name)
        Path(output).write_bytes(name.encode())
        done = record(name, "cuda:0", 1, 1e12, 1e12 + 1.0, output=output)
        done.update(file=str(path), input=input_stamp(str(path)), settings=settings)
        # d was made by other code (seqembed before an upgrade)
        done.update(code=code_stamp() if name != "d" else "other code")
        write_json(layout.record(name), done)
        keep_receipt(layout.state, name, output)
    # Snakemake removed all four when another file of their group failed; c's input has
    # changed since: its old embedding must not come back, nor d's
    for name in "abcd":
        os.unlink(layout.embedding(name))
    (inputs / "c.fasta").write_text(">c\nMKVLL\n")
    assert exit_code_after_failure(layout, files, settings) == 2
    assert Path(layout.embedding("a")).read_bytes() == b"a"
    assert Path(layout.embedding("b")).read_bytes() == b"b"
    assert not Path(layout.embedding("c")).exists()
    assert not Path(layout.embedding("d")).exists()
    assert "2 finished embedding(s) that Snakemake removed" in capsys.readouterr().out


def test_a_job_stopped_between_its_counted_failure_and_its_record_fails_as_it_said(tmp_path):
    # the job that declares the abort is cancelled (SLURM's scancel, Snakemake's Ctrl-C)
    # before its record says what the event log already does: its failure, not the abort
    import time

    from seqembed import runstate
    from seqembed.output import write_json
    from seqembed.report.outcomes import outcomes

    layout, files = earlier_run(tmp_path)
    now = time.time()
    for name in "ab":
        running = {**record(name, "cuda:0", 10, now, now), "status": "running", "attempt": 1}
        write_json(layout.record(name), running)
    # a's attempt 1 failed and said so; b only ran
    runstate.record_outcome(layout.state, "a", "in/a.fasta", "OOM", "too large", attempt=1)
    found, _ = outcomes(layout, files, aborted="run aborted", since=now - 1)
    assert (found["a"]["status"], found["a"]["error_type"]) == ("failed", "OOM")
    assert found["a"]["error_message"] == "too large"
    assert found["b"]["status"] == "running"  # the summary counts it as stopped by the abort
