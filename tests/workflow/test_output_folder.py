"""An output folder that stops taking files, as a read-only remount or an immutable folder
does: real `snakemake` runs, the folder made immutable for real (`chattr +i`, root only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import (
    failed_lines,
    make_workdir,
    progress_of,
    record,
    snakemake,
    start_run,
    summary_checked,
    wait_for,
)

pytestmark = pytest.mark.workflow


@pytest.fixture
def immutable(tmp_path):
    """Makes a folder immutable (even to root); undone after the test."""
    probe = tmp_path / "probe"
    probe.mkdir()
    tried = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot make a folder immutable here: {tried.stderr.strip()}")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    made: list[Path] = []

    def make(folder: Path) -> None:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def only(workdir: Path, *names: str) -> Path:
    for path in (workdir / "fasta").glob("*.fasta"):
        if path.stem not in names:
            path.unlink()
    return workdir


def test_a_folder_made_unwritable_mid_file_fails_the_retries_before_they_compute(
    tmp_path, tiny_model, immutable
):
    workdir = only(make_workdir(tmp_path / "run", tiny_model, toks_per_batch=1000), "alpha")
    run = start_run(workdir, {"seconds_per_batch": 0.2}, slots=1)
    try:
        wait_for(lambda: progress_of(workdir, "alpha").get("done", 0) > 0, 120)
        immutable(workdir / "results" / "embeddings")
        output = run.communicate(timeout=600)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output
    failure = "results/embeddings/alpha.pt: cannot write: Operation not permitted (EPERM)"
    done = record(workdir, "alpha")
    assert (done["status"], done["attempt"], done["error_type"]) == ("failed", 3, "OutputError")
    assert done["error_message"].endswith(failure)
    assert [a["error_type"] for a in done["previous_attempts"]] == ["OutputError"] * 2
    # the first attempt computed the whole file and found out at its rename; the retries
    # found out reserving their output, before their first batch
    assert progress_of(workdir, "alpha")["attempt"] == 3
    assert progress_of(workdir, "alpha").get("done", 0) == 0
    (line,) = failed_lines(workdir)
    assert line.startswith("fasta/alpha.fasta|OutputError|") and line.endswith(failure)
    summary_checked(workdir)


def test_a_folder_immutable_before_the_first_output_still_gets_its_report(
    tmp_path, tiny_model, immutable
):
    workdir = only(make_workdir(tmp_path / "run", tiny_model), "delta", "gamma")
    folder = workdir / "results" / "embeddings"
    folder.mkdir(parents=True)
    immutable(folder)
    result = snakemake(workdir)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # Snakemake's own clean-up fails on the empty folder before its error handler would
    # run (docs/upstream.md); the report is written all the same
    assert "Snakemake ended before its error handler ran; the report follows" in output
    lines = failed_lines(workdir)
    assert sorted(line.split("|")[:2] for line in lines) == [
        ["fasta/delta.fasta", "OutputError"],
        ["fasta/gamma.fasta", "OutputError"],
    ]
    summary = summary_checked(workdir)
    assert summary["files"]["failed"] == 2
    for name in ("delta", "gamma"):
        failure = f"seqembed: OutputError: fasta/{name}.fasta: results/embeddings/{name}.pt"
        assert output.count(failure) >= 1, output
