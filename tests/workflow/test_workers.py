"""Resident workers in real `snakemake` runs: one model load per device, the failure
semantics of a worker that dies or a device that fails, the run's end taking its workers with
it however it ends, and the per-file way back. CUDA errors and unreadable disks cannot happen
here: they are injected (seqembed.faults) where torch would raise them."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from helpers import (
    NAMES,
    assert_embeddings_correct,
    failed_lines,
    progress_of,
    record,
    snakemake,
    start_run,
    summary_checked,
    wait_for,
)

pytestmark = pytest.mark.workflow


def workers_of(workdir) -> list[psutil.Process]:
    """The worker processes started from `workdir` (a worker runs in its job's folder)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if "seqembed.compute.worker" in cmdline and process.info["cwd"] == str(workdir):
            found.append(process)
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_one_model_load_per_device_and_records_that_say_so(workdir, tiny_model):
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    records = [record(workdir, name) for name in NAMES]
    by_device: dict[str, list[dict]] = {}
    for done in sorted(records, key=lambda r: r["claimed"]):
        by_device.setdefault(done["device"], []).append(done)
    for device, files in by_device.items():
        # the first file on a device started its worker and paid for the load; the others
        # found the model in memory, in the same process
        assert [f["model_was_loaded"] for f in files] == [False] + [True] * (len(files) - 1)
        assert len({f["worker_pid"] for f in files}) == 1
        assert files[0]["worker_start_seconds"] > 0 and files[0]["model_load_seconds"] > 0
        assert all(f["model_load_seconds"] == 0 for f in files[1:])
        assert all(f["waited_seconds"] >= 0 for f in files)
        assert f"seqembed: {device}: worker pid {files[0]['worker_pid']} started" in result.stderr
    # the live view's files name the worker that computed each file
    for done in records:
        assert progress_of(workdir, done["name"])["worker_pid"] == done["worker_pid"]
    summary = summary_checked(workdir)
    assert summary["models_loaded"] == len(by_device)
    assert 0 < summary["utilisation"] <= 1 and 0 < summary["setup_share"] < 1
    # no worker outlives its run, and each says why it ended
    wait_for(lambda: not workers_of(workdir), 30)
    logs = list((workdir / "results" / "logs" / "workers").glob("*.log"))
    assert len(logs) == len(by_device)
    assert all("exiting: its run ended" in path.read_text() for path in logs)


def test_a_worker_killed_mid_file_is_a_crash_retried_with_a_fresh_worker(workdir, tiny_model):
    run = start_run(workdir, {"files": {"alpha": {"seconds_per_batch": 1.0}}})
    first = wait_for(lambda: progress_of(workdir, "alpha").get("worker_pid"))
    wait_for(lambda: progress_of(workdir, "alpha").get("done"))
    device = progress_of(workdir, "alpha")["device"]
    os.kill(first, signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    alpha = record(workdir, "alpha")
    assert alpha["attempt"] == 2 and alpha["worker_pid"] != first
    assert alpha["device"] != device  # the retry prefers another device
    assert alpha["previous_attempts"] == [
        {
            "attempt": 1,
            "device": device,
            "error_type": "Crash",
            "error_message": f"the worker for {device} (pid {first}) ended without a result",
        }
    ]
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    assert list((workdir / "results" / "embeddings").glob(".*")) == []
    assert failed_lines(workdir) == []


def test_a_job_killed_mid_file_costs_its_worker_that_file_only(workdir, tiny_model):
    run = start_run(workdir, {"files": {"alpha": {"seconds_per_batch": 1.0}}})
    worker = wait_for(lambda: progress_of(workdir, "alpha").get("worker_pid"))
    wait_for(lambda: progress_of(workdir, "alpha").get("done"))
    device = progress_of(workdir, "alpha")["device"]
    os.kill(progress_of(workdir, "alpha")["pid"], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    # the worker stopped the file at its next batch, left no output and lived on until its
    # run ended (that it then serves the next job: tests/unit/test_worker.py)
    logs = workdir / "results" / "logs" / "workers"

    def its_log() -> str:
        text = "".join(path.read_text() for path in logs.iterdir())
        return text[text.index(f"worker pid {worker} for {device}") :]

    assert "alpha: Crash: the job went away mid-file" in its_log()
    wait_for(lambda: "exiting: " in its_log(), 30)
    assert f"exiting: its run ended (Snakemake pid {run.pid} is gone)" in its_log()
    assert record(workdir, "alpha")["attempt"] == 2
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    assert list((workdir / "results" / "embeddings").glob(".*")) == []


def test_transient_failures_are_retried_where_they_can_succeed(workdir, tiny_model):
    # alpha: reading the checkpoint fails once (a shared disk); beta: a CUDA error leaves its
    # device unusable, so its worker ends; gamma: a CUDA out-of-memory raised as a plain
    # RuntimeError, which backs off like any out-of-memory
    faults = {
        "model_read_error": {"name": "alpha", "attempt": 1},
        "files": {
            "beta": {"device_error": {"attempt": 1}},
            "gamma": {"oom_above_tokens": 300, "oom_as_runtime_error": True},
        },
    }
    result = snakemake(workdir, "--config", "toks_per_batch=2000", faults=faults)
    assert result.returncode == 0, result.stderr
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    alpha, beta, gamma = (record(workdir, name) for name in ("alpha", "beta", "gamma"))
    ((read_error,),) = [alpha["previous_attempts"]]
    assert read_error["error_type"] == "IOError"
    assert read_error["error_message"].startswith("cannot read model file ")
    assert "Input/output error" in read_error["error_message"]
    ((device_error,),) = [beta["previous_attempts"]]
    assert device_error["error_type"] == "DeviceError"
    assert "CUDA error: an illegal memory access" in device_error["error_message"]
    assert beta["device"] != device_error["device"] and beta["attempt"] == 2
    logs = (workdir / "results" / "logs" / "workers").iterdir()
    text = "".join(path.read_text() for path in logs)
    assert "exiting: device left unusable: device failed: CUDA error" in text
    assert gamma["attempt"] == 1 and gamma["oom_backoffs"] >= 1
    assert failed_lines(workdir) == []


def test_per_file_workers_are_the_way_back(workdir, tiny_model):
    result = snakemake(workdir, "--config", "worker=per_file")
    assert result.returncode == 0, result.stderr
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    records = [record(workdir, name) for name in NAMES]
    assert not any(r["model_was_loaded"] for r in records)
    assert {r["worker_pid"] for r in records} == {r["pid"] for r in records}  # the jobs
    assert summary_checked(workdir)["models_loaded"] == len(NAMES)
    assert not (workdir / "results" / "logs" / "workers").exists()


@pytest.mark.parametrize("ending", ["SIGKILL of Snakemake", "Ctrl-C"])
def test_no_worker_outlives_its_run(workdir, tiny_model, ending):
    run = start_run(
        workdir, {"seconds_per_batch": 1.0}, start_new_session=True, stdin=subprocess.DEVNULL
    )
    wait_for(lambda: len(workers_of(workdir)) == 2)
    workers = workers_of(workdir)
    if ending == "Ctrl-C":
        os.killpg(run.pid, signal.SIGINT)  # what a terminal sends the foreground group
    else:
        run.kill()  # the OOM killer, a lost login session: nobody tells the jobs
    run.communicate(timeout=120)
    started = time.time()
    wait_for(lambda: all(gone(worker) for worker in workers), 60)
    assert time.time() - started < 60
    # the orphaned jobs have gone too
    wait_for(lambda: not _jobs_of(workdir), 60)
    # a rerun (after --unlock, which a killed Snakemake needs) finds nothing in its way
    if ending != "Ctrl-C":
        assert snakemake(workdir, "--unlock").returncode == 0
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert_embeddings_correct(workdir, tiny_model, NAMES)


def _jobs_of(workdir) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["cwd"] == str(workdir) and "embed.py" in cmdline and not gone(process):
            found.append(process)
    return found
