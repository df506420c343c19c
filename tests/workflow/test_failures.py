"""Failure semantics with real `snakemake` runs: a bad file, an OOM or a crash never costs
the other files their results; the exit code, failed_files.txt and a rerun say and do exactly
what a user expects. GPU out-of-memory errors cannot happen on this machine: they are
injected through seqembed.faults (SEQEMBED_TEST_FAULTS) right where CUDA would raise them,
so the real back-off code runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    NAMES,
    assert_embeddings_correct,
    command,
    environment,
    failed_lines,
    jobs_to_run,
    last_line,
    make_workdir,
    record,
    snakemake,
    summary_checked,
)

pytestmark = pytest.mark.workflow


@pytest.fixture
def workdir(tmp_path, tiny_model):
    return make_workdir(tmp_path / "run", tiny_model)


def test_malformed_file_fails_alone_and_a_rerun_after_the_fix_redoes_only_it(workdir, tiny_model):
    broken = workdir / "fasta" / "broken.fasta"
    broken.write_text(">a\nMKV\n>b\nMK7V\n")
    result = snakemake(workdir)
    assert result.returncode == 2, result.stderr
    assert failed_lines(workdir) == [
        "fasta/broken.fasta|InputError|fasta/broken.fasta: line 4: record 'b' has characters "
        "outside the alphabet: '7'"
    ]
    assert "seqembed: InputError: fasta/broken.fasta: line 4" in result.stderr
    assert "seqembed: 1 of 5 files failed: see results/failed_files.txt" in result.stdout
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    summary = summary_checked(workdir)
    assert summary["files"]["done"] == 4 and summary["files"]["failed"] == 1
    assert summary["failures_by_type"] == {"InputError": 1}
    assert summary["failures"][0]["error_type"] == "InputError"

    broken.write_text(">a\nMKV\n>b\nMKSV\n")
    assert jobs_to_run(workdir)["embed"] == ["broken"]
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert failed_lines(workdir) == []
    assert torch.load(workdir / "results" / "embeddings" / "broken.pt")["ids"] == ["a", "b"]


def test_empty_file_is_a_valid_empty_output(workdir):
    (workdir / "fasta" / "empty.fasta").write_text("")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr
    empty = torch.load(workdir / "results" / "embeddings" / "empty.pt")
    assert empty["ids"] == []
    assert empty["mean_representations"][3].shape == (0, 32)
    assert record(workdir, "empty")["device"] is None
    assert failed_lines(workdir) == []


def test_oom_mid_file_is_recovered_by_back_off(workdir, tiny_model):
    # batches of up to 4,000 tokens, but every batch above 1,500 "runs out of memory": the
    # back-off halves them twice; single sequences (1,024 tokens at most) always fit
    result = snakemake(
        workdir, "--config", "toks_per_batch=4000", faults={"oom_above_tokens": 1500}
    )
    assert result.returncode == 0, result.stderr
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    alpha = record(workdir, "alpha")
    assert alpha["oom_backoffs"] >= 1
    assert alpha["attempt"] == 1
    assert failed_lines(workdir) == []


def test_oom_on_a_single_sequence_fails_that_file_only(workdir, tiny_model):
    # delta holds two sequences of 1,024 tokens (truncated): alone they still exceed 1,000
    result = snakemake(workdir, faults={"oom_above_tokens": 1000})
    assert result.returncode == 2, result.stderr
    assert failed_lines(workdir) == [
        "fasta/delta.fasta|OOM|sequence 'delta_long1' (1400 residues, 1024 tokens) does not "
        "fit in memory even alone"
    ]
    assert_embeddings_correct(workdir, tiny_model, ["alpha", "beta", "gamma"])
    assert not (workdir / "results" / "embeddings" / "delta.pt").exists()
    # the retries repeated the verdict instead of loading the model again
    assert record(workdir, "delta")["attempt"] == 3

    assert jobs_to_run(workdir)["embed"] == ["delta"]
    rerun = snakemake(workdir)  # "more memory": no injected fault
    assert rerun.returncode == 0, rerun.stderr
    assert failed_lines(workdir) == []
    assert_embeddings_correct(workdir, tiny_model, ["delta"])


def wait_for(condition, timeout_s: float = 120.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def paused_mid_write(workdir: Path, name: str):
    """The running record of `name` once its job sits between writing the temporary file
    and renaming it (the injected pause)."""
    folder = workdir / "results" / "embeddings"

    def check():
        temporaries = list(folder.glob(f".{name}.pt.*.tmp")) if folder.exists() else []
        path = workdir / "results" / "records" / f"{name}.json"
        if not temporaries or not path.exists():
            return None
        state = json.loads(path.read_text())
        return state if state["status"] == "running" else None

    return wait_for(check)


def start_paused(workdir: Path, name: str, slots: int) -> subprocess.Popen:
    """A run in the background whose job for `name` pauses on attempt 1 before renaming."""
    return subprocess.Popen(
        command(slots=slots),
        cwd=workdir,
        env=environment({"pause_before_rename": {"name": name, "attempt": 1}}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_job_killed_mid_write_leaves_no_output_and_is_retried_on_another_device(
    workdir, tiny_model
):
    # one job at a time, two device slots: the retry finds the other device free
    run = start_paused(workdir, "beta", slots=1)
    running = paused_mid_write(workdir, "beta")
    assert not (workdir / "results" / "embeddings" / "beta.pt").exists()
    os.kill(running["pid"], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output

    done = record(workdir, "beta")
    assert done["status"] == "done" and done["attempt"] == 2
    assert done["device"] != running["device"]
    assert done["previous_attempts"] == [
        {
            "attempt": 1,
            "device": running["device"],
            "error_type": "Crash",
            "error_message": f"attempt 1 ended without a result on {running['device']}",
        }
    ]
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    assert list((workdir / "results" / "embeddings").glob(".*.tmp")) == []
    assert failed_lines(workdir) == []


def test_three_runtime_failures_in_a_row_abort_the_run(workdir):
    # every batch "runs out of memory", even a single sequence: a broken GPU in effect
    result = snakemake(workdir, faults={"oom_above_tokens": 10}, slots=1)
    assert result.returncode == 1, result.stderr
    lines = failed_lines(workdir)
    by_size = sorted(NAMES, key=lambda n: -(workdir / "fasta" / f"{n}.fasta").stat().st_size)
    oom = [f"fasta/{name}.fasta" for name in by_size[:3]]
    assert sorted(line.split("|")[0] for line in lines if "|OOM|" in line) == sorted(oom)
    aborted = [line for line in lines if "|Aborted|" in line]
    assert [line.split("|")[0] for line in aborted] == [f"fasta/{by_size[3]}.fasta"]
    summary = summary_checked(workdir)
    assert summary["aborted"].startswith("run aborted after 3 runtime failures in a row: ")
    assert all(path in summary["aborted"] for path in oom)
    assert f"seqembed: {summary['aborted']}" in result.stdout
    # the run stopped: the last file was never started, or (when Snakemake had already
    # launched it as the interrupt arrived) stopped at once, before claiming a device
    last = workdir / "results" / "records" / f"{by_size[3]}.json"
    if last.exists():
        assert record(workdir, by_size[3])["device"] is None
        assert [line.split("|")[2] for line in aborted] == [summary["aborted"]]
    else:
        assert [line.split("|")[2] for line in aborted] == [f"not started: {summary['aborted']}"]

    rerun = snakemake(workdir)  # the cause is gone: a fresh run, every file done
    assert rerun.returncode == 0, rerun.stderr
    assert failed_lines(workdir) == []


def test_missing_model_stops_before_any_job(workdir):
    result = snakemake(workdir, "--config", "model=models/esm2_t33_650M_UR50D.pt")
    assert result.returncode == 1
    assert last_line(result) == (
        "seqembed: pre-flight failed: model checkpoint not found: models/esm2_t33_650M_UR50D.pt"
    )
    assert not (workdir / "results" / "records").exists()
    assert not (workdir / "results" / "embeddings").exists()


def test_unwritable_output_folder_stops_before_any_job(workdir):
    out = workdir / "results"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        # root writes anywhere; an immutable folder is what stops root too. Without
        # chattr (no ext4, no CAP_LINUX_IMMUTABLE) only a non-root user can be stopped.
        if os.geteuid() == 0:
            pytest.skip("chattr +i is not available here and root can write anywhere")
        out.chmod(0o555)
    try:
        result = snakemake(workdir)
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True)
        out.chmod(0o755)
    assert result.returncode == 1
    assert last_line(result) == (
        "seqembed: config key 'output_dir': results cannot be written: Operation not permitted"
    ) or last_line(result).endswith("results cannot be written: Permission denied")
    assert list(out.iterdir()) == []


def test_second_snakemake_in_the_same_folder_is_refused_and_the_first_finishes(workdir, tiny_model):
    first = start_paused(workdir, "alpha", slots=2)
    running = paused_mid_write(workdir, "alpha")
    second = snakemake(workdir)
    assert second.returncode == 1
    assert "Directory cannot be locked" in second.stdout + second.stderr
    os.kill(running["pid"], signal.SIGKILL)  # let the first run go on (a retry)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    assert failed_lines(workdir) == []


def test_quiet_prints_errors_and_the_final_table_only(workdir):
    (workdir / "fasta" / "broken.fasta").write_text(">a\nMKV\n>b\nMK7V\n")
    result = snakemake(workdir, "--config", "verbosity=quiet")
    assert result.returncode == 2, result.stderr
    assert "seqembed: InputError: fasta/broken.fasta: line 4" in result.stderr
    for chatter in ("seqembed  files", "Job stats", "Building DAG", "rule embed", "sequences on"):
        assert chatter not in result.stderr, chatter
    assert re.search(r"^total +4 ", result.stdout, re.M), result.stdout
