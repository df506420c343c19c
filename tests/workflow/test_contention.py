"""What a real night brings besides bad files: a second run on the same machine wanting the
same devices, and an output disk that fills up mid-run. Real `snakemake` runs; the full disk
is a real one (a small tmpfs mounted for the test)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from helpers import (
    NAMES,
    assert_embeddings_correct,
    fill,
    make_workdir,
    small_disk,
    snakemake,
    start_run,
    wait_for,
)

pytestmark = pytest.mark.workflow


def test_two_runs_on_one_host_never_compute_on_one_device_at_once(tmp_path, tiny_model):
    # two users' runs, different output folders, the same two CPU slots of this host
    locks = tmp_path / "host-locks"
    first = make_workdir(tmp_path / "first", tiny_model, lock_dir=str(locks))
    second = make_workdir(tmp_path / "second", tiny_model, lock_dir=str(locks))
    slow = {"seconds_per_batch": 0.3}
    runs = [start_run(first, slow)]
    wait_for(lambda: list((first / "results" / "records").glob("*.json")))
    runs.append(start_run(second, slow))
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    for workdir in (first, second):
        assert_embeddings_correct(workdir, tiny_model, NAMES)

    held = {}
    for workdir in (first, second):
        for name in NAMES:
            done = json.loads((workdir / "results" / "records" / f"{name}.json").read_text())
            held.setdefault(done["device"], []).append(
                (done["claimed"], done["finished"], workdir.name, name)
            )
    for device, spans in held.items():
        spans.sort()
        for (_, end, run, name), (start, _, other, later) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{device}: {run}/{name} and {other}/{later} overlap"
    # the second run waited for the first, and said whose run it waited for
    assert "waiting for a device held by another run: cpu:" in outputs[1]
    assert f"output {first / 'results'}" in outputs[1]


@pytest.fixture
def disk(tmp_path):
    folder = tmp_path / "disk"
    problem = small_disk(folder, "4m")
    if problem:
        pytest.skip(problem)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_output_disk_fails_files_with_one_line_aborts_and_still_reports(
    tmp_path, tiny_model, disk
):
    workdir = make_workdir(tmp_path / "run", tiny_model)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["output_dir"] = str(disk / "results")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    for index in range(3):  # more files than the abort needs
        shutil.copy(workdir / "fasta" / "gamma.fasta", workdir / "fasta" / f"extra{index}.fasta")
    run = start_run(workdir, {"seconds_per_batch": 0.5})
    results = disk / "results"
    # the run has started (plan written, a job computing), then the disk fills up
    wait_for(lambda: (results / "plan.tsv").exists() and list(results.glob("records/*.json")))
    fill(disk)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 1, output
    assert "Traceback" not in output
    # one line per failed attempt, naming the file, the path and the OS error
    lines = [line for line in output.splitlines() if line.startswith("seqembed: OutputError:")]
    assert lines, output
    for line in lines:
        assert "cannot write: No space left on device (ENOSPC)" in line, line
        assert line.startswith("seqembed: OutputError: fasta/"), line
    # the abort counts them and names the type
    (abort,) = [line for line in output.splitlines() if line.startswith("seqembed: run aborted")]
    assert abort.count("(OutputError: ") == 3
    # the summary could not be written: it reached the terminal, with the failed files
    assert f"seqembed: cannot write {results}/summary.json and {results}/failed_files.txt: " in (
        output
    )
    assert "|OutputError|" in output
    assert "files done (" in output
    assert abort == output.strip().splitlines()[-1]
    # nothing half-written under a final name
    for path in (results / "embeddings").glob("*.pt") if (results / "embeddings").exists() else []:
        assert path.stat().st_size > 0

    # space again: the same command finishes exactly what is missing
    (disk / "filler").unlink()
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr
    done = sorted(path.stem for path in (results / "embeddings").glob("*.pt"))
    assert done == sorted([*NAMES, "extra0", "extra1", "extra2"])
    assert (results / "failed_files.txt").read_text() == ""
