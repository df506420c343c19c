"""Bundles of small files (seqembed.bundles): how they are formed, what a new run keeps of a
bundle's finished files, and how the live view counts them. The runs themselves, with a bad
file, a killed job and a rerun: tests/workflow/test_bundled_runs.py."""

from __future__ import annotations

import os

import pytest

from seqembed.bundles import PREFIX, file_sizes, idle_warning, keep_finished, make_bundles
from seqembed.job.records import last_attempt_path, read_record, receipt_path
from seqembed.layout import RunLayout
from seqembed.output import write_json
from seqembed.report.display import RunDisplay
from seqembed.report.view import RunInfo


def sized_files(folder, sizes: dict[str, int]) -> dict[str, str]:
    files = {}
    for name, size in sizes.items():
        path = folder / f"{name}.fasta"
        path.write_bytes(b">x\n" + b"A" * size)
        files[name] = str(path)
    return files


def test_bundles_take_the_files_largest_first_and_never_a_sharded_one(tmp_path):
    files = file_sizes(
        sized_files(tmp_path, {"a": 10, "b": 50, "c": 30, "d": 30, "e": 5, "big": 900})
    )
    assert make_bundles(files, 2, sharded={"big": 4}) == {
        f"{PREFIX}1": ["b", "c"],  # ties by name
        f"{PREFIX}2": ["d", "a"],
        f"{PREFIX}3": ["e"],
    }
    assert make_bundles(files, 100) == {f"{PREFIX}1": ["big", "b", "c", "d", "a", "e"]}
    # off: one job per file
    assert make_bundles(files, 0) == make_bundles(files, 1) == make_bundles(files, None) == {}


def test_a_new_run_keeps_the_finished_files_of_its_bundles_and_nothing_else(tmp_path):
    layout = RunLayout(str(tmp_path / "results"), "pt")
    os.makedirs(layout.records)
    os.makedirs(os.path.dirname(layout.embedding("x")))
    settings = {"layers": [-1]}
    for name, status, has_output in [
        ("done", "done", True),
        ("deleted", "done", False),  # the user deleted it: computed again
        ("failed", "failed", False),
        ("stale", "running", True),  # an output without a finished record: not trusted
    ]:
        write_json(layout.record(name), {"name": name, "status": status, "settings": settings})
        if has_output:
            with open(layout.embedding(name), "wb") as handle:
                handle.write(b"embedding of " + name.encode())
    bundles = {f"{PREFIX}1": ["done", "deleted"], f"{PREFIX}2": ["failed", "stale", "never"]}

    assert keep_finished(layout, bundles) == 1
    assert open(receipt_path(layout.state, "done"), "rb").read() == b"embedding of done"
    assert read_record(last_attempt_path(layout.state, "done"))["status"] == "done"
    for name in ("deleted", "failed", "stale", "never"):
        assert not receipt_path(layout.state, name).exists(), name
        assert not last_attempt_path(layout.state, name).exists(), name
    # Snakemake removes the bundle's outputs and logs before its job: the links stay
    os.unlink(layout.embedding("done"))
    os.unlink(layout.record("done"))
    assert open(receipt_path(layout.state, "done"), "rb").read() == b"embedding of done"
    assert read_record(last_attempt_path(layout.state, "done"))["name"] == "done"


def test_fewer_bundles_than_devices_is_warned_about():
    bundles = {f"{PREFIX}1": ["a", "b", "c"], f"{PREFIX}2": ["d"]}
    assert idle_warning(bundles, ["cuda:0", "cuda:1"]) is None
    assert idle_warning(bundles, [f"cuda:{index}" for index in range(4)]) == (
        "4 input file(s) in 2 bundle(s) for 4 devices: 2 device(s) will sit idle; set "
        "bundle_size to at most 1"
    )
    assert idle_warning({}, ["cuda:0", "cuda:1"]) is None


def test_the_view_counts_a_bundle_job_as_its_files_and_its_end_as_theirs(tmp_path):
    display = RunDisplay(interval=60.0)
    display.scheduled = {"embed_shard": 2, f"{PREFIX}1": 1, f"{PREFIX}2": 1}
    bundles = {f"{PREFIX}1": ["a", "b", "c"], f"{PREFIX}2": ["d"], f"{PREFIX}3": ["e"]}
    display.run = RunInfo(str(tmp_path), 7, ("cpu:0",), bundles=bundles)
    assert display.files_to_compute == 2 + 3 + 1
    display.job_ended(f"{PREFIX}1")
    assert set(display._ended) == {"a", "b", "c"}


def test_after_an_abort_a_bundle_starts_nothing_more_but_puts_back_what_it_kept(
    tmp_path, tiny_model, capsys
):
    from unit.test_embed_job import make_job

    from seqembed import runstate
    from seqembed.job.bundle import run_bundle

    jobs = []
    for name in ("kept", "second", "third"):
        fasta = tmp_path / f"{name}.fasta"
        fasta.write_text(f">{name}\nMKTAYIAKQR\n")
        jobs.append(make_job(tmp_path, fasta, tiny_model))
    runstate.reset(jobs[0].state_dir)
    assert [r["name"] for r in run_bundle(jobs[:1])] == ["kept"]
    made = open(jobs[0].output, "rb").read()
    # the next run's bundle job: Snakemake removed the output, and the run is then aborted
    os.unlink(jobs[0].output)
    for name in ("x", "y", "z"):
        runstate.record_outcome(jobs[0].state_dir, name, name, "Crash", "died", attempt=1)
    assert runstate.abort_reason(jobs[0].state_dir)
    with pytest.raises(SystemExit) as ended:
        run_bundle(jobs)
    assert ended.value.code == 1
    assert open(jobs[0].output, "rb").read() == made
    for job in jobs[1:]:
        assert not os.path.exists(job.output) and not os.path.exists(job.record)
    assert "seqembed: Aborted: 2 file(s) of this bundle not started: run aborted after" in (
        capsys.readouterr().err
    )
