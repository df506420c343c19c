"""Device pools and device claims: real files, real flock, real processes."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import stat
import threading
import time
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest

from seqembed import claims as devices
from seqembed.claims import claim_device
from seqembed.devices import (
    DeviceError,
    cuda_env_for,
    gpu_pool,
    resolve_pool,
    torch_device_for,
)
from seqembed.shared_dir import user_name

# fork: cheap process start on slow machines; the parent holds no claim when forking.
CTX = mp.get_context("fork")
POOL3 = ["cuda:0", "cuda:1", "cuda:2"]


@pytest.fixture
def bare(tmp_path):
    """An environ and proc_root that show no GPU at all, whatever this machine has."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    return {"PATH": str(empty_bin)}, str(tmp_path / "proc")


def fake_proc(tmp_path: Path, n: int) -> str:
    root = tmp_path / "gpu-proc"  # not the bare fixture's proc_root
    gpus = root / "driver" / "nvidia" / "gpus"
    for i in range(n):
        (gpus / f"0000:{i + 1:02x}:00.0").mkdir(parents=True)
    (gpus.parent / "version").write_text("NVRM fake\n")  # a file, not a GPU
    return str(root)


# ---------------------------------------------------------------- pool resolution


def test_configured_list_beats_cuda_visible_devices(bare):
    env, proc = bare
    env["CUDA_VISIBLE_DEVICES"] = "5,6"
    assert gpu_pool([0, "2", " 3 ", 0], env, proc) == ["0", "2", "3"]
    assert gpu_pool(None, env, proc) == ["5", "6"]
    assert gpu_pool([], env, proc) == ["5", "6"]  # empty config = not configured


@pytest.mark.parametrize(
    ("cvd", "expected"),
    [
        ("0,1", ["0", "1"]),
        (" 2 , ,3,", ["2", "3"]),
        ("GPU-8f2a1c3e-1111-2222-3333-444455556666,MIG-0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff",
         ["GPU-8f2a1c3e-1111-2222-3333-444455556666",
          "MIG-0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff"]),
        ("", []),
        ("  ", []),
        ("-1", []),
        ("NoDevFiles", []),
        ("0,-1,1", ["0"]),  # CUDA stops at the first invalid entry
    ],
)  # fmt: skip
def test_cuda_visible_devices_parsing(bare, tmp_path, cvd, expected):
    env, _ = bare
    env["CUDA_VISIBLE_DEVICES"] = cvd
    # CVD is authoritative even where the driver shows GPUs.
    assert gpu_pool(None, env, fake_proc(tmp_path, 4)) == expected


def test_proc_driver_gpus_dirs_are_counted(bare, tmp_path):
    env, _ = bare
    assert gpu_pool(None, env, fake_proc(tmp_path, 2)) == ["0", "1"]


def test_nothing_visible_gives_empty_pool(bare):
    env, proc = bare
    assert gpu_pool(None, env, proc) == []


def test_nvidia_smi_fallback_counts_gpu_lines(bare, tmp_path):
    env, proc = bare
    smi = Path(env["PATH"]) / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA H200 (UUID: GPU-aaaa)'\n"
        "echo '  MIG 1g.18gb Device 0: (UUID: MIG-bbbb)'\n"
        "echo 'GPU 1: NVIDIA H200 (UUID: GPU-cccc)'\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert gpu_pool(None, env, proc) == ["0", "1"]
    smi.write_text("#!/bin/sh\necho 'GPU 0: broken'\nexit 9\n")
    assert gpu_pool(None, env, proc) == []


def test_resolve_pool(bare, tmp_path):
    env, proc = bare
    gpu_proc = fake_proc(tmp_path, 2)
    assert resolve_pool("cuda", None, 4, env, gpu_proc) == ["cuda:0", "cuda:1"]
    assert resolve_pool("auto", None, 4, env, gpu_proc) == ["cuda:0", "cuda:1"]
    assert resolve_pool("auto", ["GPU-x"], 4, env, proc) == ["cuda:GPU-x"]
    assert resolve_pool("cpu", None, 3, env, gpu_proc) == ["cpu:0", "cpu:1", "cpu:2"]
    assert resolve_pool("auto", None, 2, env, proc) == ["cpu:0", "cpu:1"]
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    assert resolve_pool("auto", None, 1, env, gpu_proc) == ["cpu:0"]
    with pytest.raises(DeviceError) as err:
        resolve_pool("cuda", None, 4, env, gpu_proc)
    msg = str(err.value)
    assert msg.startswith("device: cuda was requested but no GPU is visible")
    assert "CUDA_VISIBLE_DEVICES='-1'" in msg and "gpus=None" in msg and "\n" not in msg
    with pytest.raises(DeviceError, match="device must be"):
        resolve_pool("gpu", None, 1, env, proc)
    with pytest.raises(DeviceError, match="cpu_slots"):
        resolve_pool("cpu", None, 0, env, proc)


def test_labels_to_env_and_torch_device():
    assert cuda_env_for("cuda:3") == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "3",
    }
    assert cuda_env_for("cuda:GPU-8f2a")["CUDA_VISIBLE_DEVICES"] == "GPU-8f2a"
    assert cuda_env_for("cpu:1") == {}
    assert torch_device_for("cuda:3") == "cuda:0"
    assert torch_device_for("cpu:1") == "cpu"
    with pytest.raises(DeviceError):
        torch_device_for("tpu:0")


# ---------------------------------------------------------------- claims


def test_flock_conflicts_between_two_opens_in_one_process(tmp_path):
    """The kernel fact the module relies on (Linux, local fs): locks are per open file."""
    path = tmp_path / "x.lock"
    a = os.open(path, os.O_RDWR | os.O_CREAT)
    b = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_lock_file_location_and_holder_notes(tmp_path):
    with claim_device(["cuda:2"], tmp_path / "locks", holder="sample_01.fasta") as claim:
        assert claim.label == "cuda:2"
        name = f"seqembed-{socket.gethostname()}-cuda_2.lock"
        assert claim.lock_path == tmp_path / "locks" / name
        # the lock file, readable by every user: who holds it, nothing about the run
        (line,) = claim.lock_path.read_text().splitlines()
        assert json.loads(line) == {"pid": os.getpid(), "user": user_name(0), "label": "cuda:2"}
        assert stat.S_IMODE(claim.lock_path.stat().st_mode) == 0o644
        # the run's details, for this user's eyes only
        private = claim.lock_path.with_name(f".{name}.{os.getuid()}")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        info = json.loads(private.read_text())
        assert info["holder"] == "sample_01.fasta" and info["pid"] == os.getpid()
        assert info["hostname"] == socket.gethostname() and info["time"]
    assert not claim.held
    claim.release()  # idempotent
    assert claim.lock_path.read_text() == "" and private.read_text() == ""


def test_mig_style_label_gets_a_flat_lock_file(tmp_path):
    with claim_device(["cuda:MIG-GPU-ab/1/0"], tmp_path, holder="f") as claim:
        assert claim.lock_path.parent == tmp_path and "/" not in claim.lock_path.name


def test_prefer_and_avoid_order(tmp_path):
    pool = ["cpu:0", "cpu:1", "cpu:2"]
    kw = {"holder": "t", "timeout_s": 0}
    with claim_device(pool, tmp_path, **kw) as c:
        assert c.label == "cpu:0"
    with claim_device(pool, tmp_path, prefer=["cpu:9", "cpu:2"], **kw) as c:
        assert c.label == "cpu:2"
    with claim_device(pool, tmp_path, avoid=["cpu:0"], **kw) as c:
        assert c.label == "cpu:1"
    with claim_device(pool, tmp_path, prefer=["cpu:0"], avoid=["cpu:0"], **kw) as c:
        assert c.label == "cpu:1"  # avoid wins over prefer


def test_a_retry_waits_for_a_healthy_device_rather_than_take_the_one_it_crashed_on(tmp_path):
    # every other device busy: the avoided one is free, and still not taken
    pool = ["cpu:0", "cpu:1", "cpu:2"]
    kw = {"holder": "t", "timeout_s": 0}
    with claim_device(pool, tmp_path, avoid=["cpu:0"], **kw) as c1:
        with claim_device(pool, tmp_path, avoid=["cpu:0"], **kw) as c2:
            assert [c1.label, c2.label] == ["cpu:1", "cpu:2"]
            with pytest.raises(DeviceError, match="no free device in pool"):
                claim_device(pool, tmp_path, avoid=["cpu:0", "cpu:2"], **kw)
        # one healthy device free again: taken
        with claim_device(pool, tmp_path, avoid=["cpu:0", "cpu:1"], **kw) as c3:
            assert c3.label == "cpu:2"
    # every device of the pool failed this file: any is better than none
    with claim_device(["cpu:0"], tmp_path, avoid=["cpu:0"], **kw) as c:
        assert c.label == "cpu:0"


def test_the_waiting_job_learns_who_holds_the_device(tmp_path):
    first = claim_device(["cuda:0"], tmp_path, holder="a", note={"output_dir": "/data/run1"})
    seen = []
    with pytest.raises(DeviceError):
        claim_device(
            ["cuda:0"], tmp_path, holder="b", timeout_s=0.05, poll_s=0.01, on_wait=seen.append
        )
    first.release()
    (holders,) = seen
    assert holders["cuda:0"]["output_dir"] == "/data/run1"
    assert holders["cuda:0"]["holder"] == "a" and holders["cuda:0"]["pid"] == os.getpid()


def test_empty_pool_raises(tmp_path):
    with pytest.raises(DeviceError):
        claim_device([], tmp_path, holder="x")


def test_second_claim_in_same_process_waits_then_times_out(tmp_path):
    waits = []
    first = claim_device(["cuda:0"], tmp_path, holder="a")
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"cuda:0.*locks in " + str(tmp_path)):
        claim_device(
            ["cuda:0"], tmp_path, holder="b", poll_s=0.02, timeout_s=0.2,
            on_wait=lambda holders: waits.append(1),
        )  # fmt: skip
    assert 0.15 < time.monotonic() - t0 < 2
    assert waits == [1]
    first.release()
    claim_device(["cuda:0"], tmp_path, holder="b", timeout_s=0).release()


def test_claims_stay_exclusive_with_per_process_locks(tmp_path, monkeypatch):
    """NFS emulates flock with POSIX locks: per process, dropped by closing any fd."""
    path = tmp_path / "posix.lock"
    a, b = os.open(path, os.O_RDWR | os.O_CREAT), os.open(path, os.O_RDWR)
    fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no conflict within one process
    os.close(a)
    os.close(b)
    lockf_only = SimpleNamespace(flock=fcntl.lockf, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    monkeypatch.setattr(devices, "fcntl", lockf_only)
    first = claim_device(["cuda:0"], tmp_path, holder="a")
    with pytest.raises(DeviceError):
        claim_device(["cuda:0"], tmp_path, holder="b", timeout_s=0)
    ready, done = CTX.Event(), CTX.Event()
    other = CTX.Process(target=_claim_once, args=(tmp_path, ready, done), daemon=True)
    other.start()  # another process must still see our lock after the failed try above
    try:
        assert not ready.wait(timeout=0.3)
        first.release()
        assert ready.wait(timeout=10)
    finally:
        done.set()
        other.join(timeout=10)
    assert other.exitcode == 0


def _claim_once(lock_dir, ready, done):
    with claim_device(["cuda:0"], lock_dir, holder="other", poll_s=0.01, timeout_s=15):
        ready.set()
        done.wait(timeout=20)


def test_forked_child_neither_keeps_nor_steals_the_parents_device(tmp_path):
    ready, done = CTX.Event(), CTX.Event()
    first = claim_device(["cuda:0"], tmp_path, holder="parent")
    other = CTX.Process(target=_claim_once, args=(tmp_path, ready, done), daemon=True)
    other.start()  # inherits the parent's lock fd and the parent's claim registry
    try:
        assert not ready.wait(timeout=0.3)  # still the parent's
        first.release()
        assert ready.wait(timeout=10)  # the child's inherited fd did not keep it locked
        with pytest.raises(DeviceError):
            claim_device(["cuda:0"], tmp_path, holder="parent", timeout_s=0)
    finally:
        done.set()
        other.join(timeout=10)
    assert other.exitcode == 0
    sleeper = CTX.Process(target=time.sleep, args=(30,), daemon=True)
    with claim_device(["cuda:0"], tmp_path, holder="parent"):
        sleeper.start()
    try:  # released by the parent while a forked child is alive (the child may take a
        # moment to drop its inherited copy of the fd, hence no timeout_s=0 here)
        t0 = time.monotonic()
        claim_device(["cuda:0"], tmp_path, holder="again", timeout_s=10, poll_s=0.01).release()
        assert time.monotonic() - t0 < 5
    finally:
        sleeper.kill()
        sleeper.join()


def test_threads_in_one_process_never_share_a_label(tmp_path):
    inside, worst, guard = [0], [0], threading.Lock()

    def work():
        for _ in range(5):
            with claim_device(["cpu:0"], tmp_path, holder="t", poll_s=0.001):
                with guard:
                    inside[0] += 1
                    worst[0] = max(worst[0], inside[0])
                time.sleep(0.002)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert worst[0] == 1


def _worker(lock_dir, rec_dir, idx, rounds, barrier, locked):
    rng = random.Random(idx)
    barrier.wait(timeout=20)
    with open(Path(rec_dir) / f"{idx}.jsonl", "w") as out:
        for r in range(rounds):
            if locked:
                claim = claim_device(POOL3, lock_dir, holder=f"w{idx}", poll_s=0.005, timeout_s=20)
                label = claim.label
            else:  # the same schedule without the lock, to prove the recorder can see overlaps
                claim, label = None, POOL3[(idx + r) % len(POOL3)]
            t0 = time.monotonic()
            time.sleep(rng.uniform(0.005, 0.03) if locked else 0.05)
            t1 = time.monotonic()
            if claim is not None:
                claim.release()
            out.write(json.dumps([label, os.getpid(), t0, t1]) + "\n")


def _run_workers(tmp_path, locked, n=12, rounds=3):
    rec_dir = tmp_path / ("rec-locked" if locked else "rec-free")
    rec_dir.mkdir()
    barrier = CTX.Barrier(n)
    procs = [
        CTX.Process(
            target=_worker,
            args=(tmp_path / "locks", rec_dir, i, rounds, barrier, locked),
            daemon=True,
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=25)
    assert [p.exitcode for p in procs] == [0] * n
    records = [json.loads(line) for f in rec_dir.iterdir() for line in f.read_text().splitlines()]
    assert len(records) == n * rounds
    return records


def overlaps(records):
    by_label: dict[str, list] = {}
    for label, pid, t0, t1 in records:
        by_label.setdefault(label, []).append((t0, t1, pid))
    bad = []
    for label, spans in by_label.items():
        spans.sort()
        bad += [(label, a, b) for a, b in pairwise(spans) if b[0] < a[1]]
    return bad


def test_many_processes_never_share_a_label(tmp_path):
    records = _run_workers(tmp_path, locked=True)
    assert {r[0] for r in records} == set(POOL3)
    assert overlaps(records) == []


def test_recorder_detects_overlaps_without_the_lock(tmp_path):
    assert overlaps(_run_workers(tmp_path, locked=False)) != []


def _hold_forever(lock_dir, ready):
    claim_device(["cuda:0"], lock_dir, holder="doomed", timeout_s=15)
    ready.set()
    time.sleep(60)


def test_sigkilled_holder_frees_its_device(tmp_path):
    ready = CTX.Event()
    proc = CTX.Process(target=_hold_forever, args=(tmp_path, ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(timeout=20)
        with pytest.raises(DeviceError):
            claim_device(["cuda:0"], tmp_path, holder="next", timeout_s=0.1, poll_s=0.02)
        seen = []
        with pytest.raises(DeviceError):
            claim_device(
                ["cuda:0"], tmp_path, holder="next", timeout_s=0.1, poll_s=0.02,
                on_wait=seen.append,
            )  # fmt: skip
        # the kernel's word (another process of this user: its own note adds the holder)
        assert seen[0]["cuda:0"]["pid"] == proc.pid
        assert seen[0]["cuda:0"]["holder"] == "doomed"
        private = tmp_path / f".seqembed-{socket.gethostname()}-cuda_0.lock.{os.getuid()}"
        assert json.loads(private.read_text())["holder"] == "doomed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=10)
        t0 = time.monotonic()
        with claim_device(["cuda:0"], tmp_path, holder="next", timeout_s=5, poll_s=0.02) as c:
            assert c.label == "cuda:0"
        assert time.monotonic() - t0 < 1
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_slots_warning_when_more_jobs_than_devices_may_run():
    from seqembed.devices import slots_warning

    pool = ["cuda:0", "cuda:1"]
    assert slots_warning(2, 8, pool) is None
    assert slots_warning(1, 8, pool) is None
    assert "--resources gpu=4 but 2 device(s)" in slots_warning(4, 8, pool)
    assert "no --resources gpu=N given" in slots_warning(None, 8, pool)
    assert slots_warning(None, 2, pool) is None  # --cores alone keeps it within the pool


# ---------------------------------------------------------------- inside a SLURM allocation


def test_inside_slurm_the_grant_is_the_pool_and_gpus_does_not_apply(bare, tmp_path):
    env, _ = bare
    env.update({"SLURM_JOB_ID": "17", "SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "2"})
    # the node has 4 GPUs; the job was granted one, and `gpus` asks for others
    node = fake_proc(tmp_path, 4)
    assert gpu_pool([0, 1], env, node) == ["2"]
    assert resolve_pool("auto", [0, 1], 1, env, node) == ["cuda:2"]


def test_inside_slurm_without_a_gpu_grant_no_gpu_is_ours(bare, tmp_path):
    env, _ = bare
    # CUDA_VISIBLE_DEVICES inherited from the submitting shell says nothing about the grant
    env.update({"SLURM_JOB_ID": "18", "CUDA_VISIBLE_DEVICES": "0,1"})
    node = fake_proc(tmp_path, 4)
    assert gpu_pool(None, env, node) == []
    assert resolve_pool("auto", None, 2, env, node) == ["cpu:0", "cpu:1"]
    with pytest.raises(DeviceError, match="SLURM job 18 was granted no GPU"):
        resolve_pool("cuda", None, 1, env, node)


def test_jobs_of_different_allocations_never_wait_for_each_other(tmp_path, monkeypatch):
    """With device cgroups every SLURM job sees its own GPU as cuda:0: the locks are per
    allocation, while the embed jobs sharing one allocation still take turns."""
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    first = claim_device(["cuda:0"], tmp_path, holder="a")
    with pytest.raises(DeviceError, match="no free device"):
        claim_device(["cuda:0"], tmp_path, holder="b", timeout_s=0.2)
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    second = claim_device(["cuda:0"], tmp_path, holder="c", timeout_s=0.2)
    host = socket.gethostname()
    assert first.lock_path == tmp_path / f"seqembed-{host}-slurm101-cuda_0.lock"
    assert second.lock_path == tmp_path / f"seqembed-{host}-slurm102-cuda_0.lock"
    first.release()
    second.release()
