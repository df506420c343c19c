"""The resident worker as real processes: this test process plays the job (and the run's
Snakemake, the worker's owner), seqembed.compute.worker runs as the job would start it, on
the CPU with the tiny ESM-2."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO
from helpers import wait_for
from reference import reference_embeddings

from seqembed.compute.backends import PROTEIN_ALPHABET
from seqembed.demo import random_protein, write_tiny_esm2
from seqembed.errors import Crash, Failed
from seqembed.fasta import read_fasta
from seqembed.faults import VARIABLE
from seqembed.job.client import WorkerSession, owner_facts
from seqembed.output import commit, stale_temporaries


def settings(model: Path, **changes) -> dict:
    return {
        "device": "cpu:0",
        "torch_device": "cpu",
        "model": str(model),
        "model_cache": None,
        "precision": "fp32",  # compared with fair-esm in fp32
        "truncation": 1022,
        "threads": 1,
        **changes,
    }


def request(fasta: Path, tmp_path: Path, attempt: int = 1) -> dict:
    records = read_fasta(fasta, PROTEIN_ALPHABET)
    return {
        "name": fasta.stem,
        "attempt": attempt,
        "ids": records.ids,
        "sequences": records.sequences,
        "output": str(tmp_path / "out" / f"{fasta.stem}.pt"),
        "layers": "last",
        "toks_per_batch": 1024,
        "truncation": 1022,
        "output_layout": "default",
        "state_dir": str(tmp_path / "state"),
    }


def session(tmp_path: Path, model: Path, owner: dict | None = None, **changes) -> WorkerSession:
    return WorkerSession(
        label="cpu:0",
        settings=settings(model, **changes),
        state_dir=str(tmp_path / "state"),
        logs_dir=str(tmp_path / "logs"),
        owner=owner,
    )


def embed(tmp_path, model, fasta, events=None, faults=None, owner=None, **changes):
    """As a job does; `faults` in this process's environment while it may start the worker
    (a worker takes them from the job that started it, never from a request)."""
    worker = session(tmp_path, model, owner, **changes)
    saved = os.environ.pop(VARIABLE, None)
    if faults:
        os.environ[VARIABLE] = json.dumps(faults)
    try:
        stats = worker.embed(
            request(fasta, tmp_path),
            (events if events is not None else []).append,
            {"name": fasta.stem, "attempt": 1},
        )
    finally:
        os.environ.pop(VARIABLE, None)
        if saved is not None:
            os.environ[VARIABLE] = saved
    return worker, stats


def worker_log(tmp_path) -> str:
    return "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")


def test_one_worker_serves_file_after_file_with_the_model_loaded_once(
    tmp_path, tiny_model, fasta_set
):
    first, stats = embed(tmp_path, tiny_model, fasta_set["alpha"])
    try:
        assert first.started_worker and first.worker["files_served"] == 0
        assert first.start_seconds > 0
        second, again = embed(tmp_path, tiny_model, fasta_set["beta"])
        assert not second.started_worker  # found running, model in memory
        assert second.worker["pid"] == first.worker["pid"]
        assert second.worker["files_served"] == 1 and again["worker_files_served"] == 2
        for name, figures in (("alpha", stats), ("beta", again)):
            output = tmp_path / "out" / f"{name}.pt"
            commit(figures["temporary"], output)
            records = read_fasta(fasta_set[name], PROTEIN_ALPHABET)
            expected = reference_embeddings(tiny_model, records.sequences, [3], 1022)[3]
            got = torch.load(output)["mean_representations"][3]
            assert (got - expected).abs().max().item() <= 1e-5
        assert "alpha: 40 sequences" in worker_log(tmp_path)
    finally:
        stop(first.worker["pid"])


def test_other_model_settings_replace_the_worker(tmp_path, tiny_model, fasta_set):
    first, _ = embed(tmp_path, tiny_model, fasta_set["gamma"])
    second, stats = embed(tmp_path, tiny_model, fasta_set["gamma"], truncation=50)
    try:
        assert second.started_worker and second.worker["pid"] != first.worker["pid"]
        assert not psutil.pid_exists(first.worker["pid"]) or (
            psutil.Process(first.worker["pid"]).status() == "zombie"
        )
        assert "replaced: a job asked for other model settings" in worker_log(tmp_path)
        assert stats["batches"] >= 1
    finally:
        stop(second.worker["pid"])


def test_a_worker_killed_mid_file_is_a_crash_and_the_next_file_gets_a_fresh_one(
    tmp_path, tiny_model, fasta_set
):
    events: list[dict] = []
    outcome: dict = {}

    def job():
        try:
            embed(tmp_path, tiny_model, fasta_set["alpha"], events, {"seconds_per_batch": 0.5})
        except Exception as error:  # noqa: BLE001 - the test looks at it
            outcome["error"] = error

    thread = threading.Thread(target=job)
    thread.start()
    accepted = wait_for(lambda: next((e for e in events if e["event"] == "progress"), None))
    assert accepted
    (pid,) = [e["pid"] for e in events if e["event"] == "accepted"]
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert isinstance(outcome["error"], Crash)
    assert str(outcome["error"]) == f"the worker for cpu:0 (pid {pid}) ended without a result"
    # nothing under the final name; the temporary it reserved before its first batch is what
    # the retry removes (stale_temporaries)
    output = tmp_path / "out" / "alpha.pt"
    assert sorted((tmp_path / "out").iterdir()) == stale_temporaries(output)
    fresh, _ = embed(tmp_path, tiny_model, fasta_set["delta"])
    try:
        assert fresh.started_worker and fresh.worker["pid"] != pid
    finally:
        stop(fresh.worker["pid"])


def test_a_job_gone_mid_file_costs_the_worker_that_file_only(tmp_path, tiny_model, fasta_set):
    # the "job" is a child process, killed while its file computes; the run (this process,
    # the worker's owner, as Snakemake would be) goes on
    owner = owner_facts()
    script = f"""
import sys
sys.path.insert(0, {str(REPO / "src")!r}); sys.path.insert(0, {str(REPO / "tests")!r})
from pathlib import Path
from unit.test_worker import embed
embed(Path({str(tmp_path)!r}), Path({str(tiny_model)!r}), Path({str(fasta_set["alpha"])!r}),
      faults={{"seconds_per_batch": 0.5}}, owner={owner!r})
"""
    child = subprocess.Popen([sys.executable, "-c", script])
    wait_for(lambda: "model esm2" in worker_log(tmp_path))
    time.sleep(2.0)  # a few batches in
    child.kill()
    child.wait()
    wait_for(lambda: "alpha: Crash: the job went away mid-file" in worker_log(tmp_path), 30)
    assert list((tmp_path / "out").glob("*")) == []  # no output, not even a temporary
    # the same worker, model loaded, serves the next job
    (pid,) = {int(w) for w in re.findall(r"worker pid (\d+) for", worker_log(tmp_path))}
    following, _ = embed(tmp_path, tiny_model, fasta_set["gamma"], owner=owner)
    try:
        assert not following.started_worker and following.worker["pid"] == pid
    finally:
        stop(pid)


def test_memory_stays_flat_over_many_files(tmp_path):
    # a model wide enough that one file's activations and results are megabytes: a worker
    # that kept any of them, or an allocator that fragmented over files of different lengths,
    # would grow by that much per file. In bf16, `auto` on a CPU with matrix units. Every row
    # count of a product gets a oneDNN kernel of up to a megabyte, kept in caches bounded
    # to 128 (backends.KERNEL_CACHE_ENTRIES), and ESM-2's rows come in few counts
    # (cpu_layers.bucketed_rows; test_cpu_layers): those fill in the first 25 files (by 55
    # MB here) and hold; what is measured is what comes after
    model = write_tiny_esm2(tmp_path / "model", layers=2, dim=256, heads=8, seed=3)
    rng = random.Random(5)
    folder = tmp_path / "many"
    folder.mkdir()
    rss = []
    worker = None
    try:
        for index in range(100):
            fasta = folder / f"f{index:02d}.fasta"
            lengths = [rng.randint(30, 600) for _ in range(rng.randint(4, 16))]
            records = (f">s{i}\n{random_protein(rng, n)}\n" for i, n in enumerate(lengths))
            fasta.write_text("".join(records))
            worker, stats = embed(tmp_path, model, fasta, precision="bf16")
            os.unlink(stats["temporary"])
            rss.append(stats["worker_rss_mb"])
        settled = sorted(rss[30:60])[15]  # medians: single files swing by 20 MB
        last = sorted(rss[70:])[15]
        # MB: the two medians are 40 files apart, so a leak of 0.4 MB a file moves them 16
        # MB; with the caches filled they moved by -1 to 1 MB (three seeds)
        assert last - settled < 15, [round(mb) for mb in rss]
    finally:
        if worker:
            stop(worker.worker["pid"])


def test_the_worker_ends_with_its_owner(tmp_path, tiny_model, fasta_set):
    # the owner here: a job process with no Snakemake above it, as in these tests; killed
    # with SIGKILL, it leaves nobody to tell its worker
    script = f"""
import sys, time
sys.path.insert(0, {str(REPO / "src")!r}); sys.path.insert(0, {str(REPO / "tests")!r})
from pathlib import Path
from unit.test_worker import embed
worker, _ = embed(
    Path({str(tmp_path)!r}), Path({str(tiny_model)!r}), Path({str(fasta_set["gamma"])!r})
)
print(worker.worker["pid"], flush=True)
time.sleep(600)
"""
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(owner.stdout.readline())
    assert psutil.pid_exists(pid)
    owner.kill()
    owner.wait()
    started = time.time()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 60)
    assert time.time() - started < 15
    assert "exiting: its run ended" in worker_log(tmp_path)


def test_a_model_that_cannot_be_loaded_fails_the_file_and_ends_the_worker(tmp_path, fasta_set):
    missing = tmp_path / "esm2_t3_missing.pt"
    with pytest.raises(Failed) as failed:
        embed(tmp_path, missing, fasta_set["gamma"])
    assert failed.value.verdict.error_type == "ModelError"
    assert "model checkpoint not found" in failed.value.verdict.message
    wait_for(lambda: "exiting: model load failed" in worker_log(tmp_path), 30)


def test_an_address_whose_queue_is_full_is_no_worker_and_never_hangs_the_job():
    """A process that listens and never accepts, its queue kept full (as another user could
    do at a worker's address): the job gives up at once instead of waiting for ever."""
    from seqembed.job.client import WorkerUnavailable, _connect

    address = f"\0seqembed-test/{os.getpid()}/full"
    server = socket.socket(socket.AF_UNIX)
    server.bind(address)
    server.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the queue: further connects would block
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            try:
                filler.connect(address)
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        # a blocking connect would wait here for as long as the queue stays full
        with pytest.raises(WorkerUnavailable, match="takes no connections"):
            _connect(address, "cpu:0")
    finally:
        for filler in fillers:
            filler.close()
        server.close()
