"""The job's side of the resident worker (seqembed.compute.worker): find the worker of the
claimed device, start it when there is none, hand it the file, relay its progress, and turn
its answer (or its death) into the job's outcome. Torch-free: this is what keeps a job's
start-up under a second.

Inside a SLURM allocation every embed job is a job step of its own (the jobstep executor runs
each through `srun`), and SLURM ends a step's processes with it. So there the worker is
started as a step of its own too (`srun --overlap`, on the job's node, with the job's GPU):
it outlives the job that started it, serves the next files of the same submission (a packed
group), and ends with the allocation, or after its idle time. Where SLURM gives the worker
step another GPU than the job claimed, or cannot start it, the job computes its file itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from seqembed.compute.worker import ADDRESS_IN_USE, SPEC_VARIABLE, alive
from seqembed.compute.worker_socket import address, peer
from seqembed.devices import cuda_env_for, slurm_job
from seqembed.errors import Crash, Failed, SeqembedError, Verdict

#: the worker binds its address before it imports torch: a second is plenty
CONNECT_SECONDS = 30.0
#: a worker asked to make way for other settings frees its device within this time
REPLACE_SECONDS = 60.0


class WorkerUnavailable(SeqembedError):
    """No worker could be started for the device: the job computes the file itself."""


class NotOurWorker(WorkerUnavailable):
    """The process at the worker's address is another user's (or, where this job started the
    worker, not that process): nothing is sent to it, and the job computes the file itself
    (its own worker could not bind the address the other one holds)."""


def owner_process() -> psutil.Process:
    """The outermost Snakemake process above this job on this host: the run's Snakemake on a
    workstation, the one running the submission inside a SLURM allocation. Its end is the
    end of the run for the workers. Without Snakemake above (a test calling the job
    directly), this process."""
    owner = psutil.Process()
    try:
        for parent in psutil.Process().parents():
            if any("snakemake" in os.path.basename(part) for part in parent.cmdline()[:3]):
                owner = parent
    except psutil.Error:
        pass
    return owner


def owner_facts() -> dict:
    owner = owner_process()
    return {"pid": owner.pid, "create_time": owner.create_time()}


def worker_owner(owner: dict) -> dict:
    """Whose end ends the workers: the run's Snakemake (`owner`); inside SLURM the allocation,
    which ends its steps itself."""
    job = slurm_job()
    return {"pid": None, "slurm_job": job} if job else owner


def run_key(state_dir: str, owner: dict) -> str:
    """Names the run's workers: a new run (or the same folder after a crash) never connects to
    the workers of another."""
    if owner.get("slurm_job"):
        identity = f"slurm-{owner['slurm_job']}"
    else:
        identity = f"{owner['pid']}:{owner['create_time']:.3f}"
    facts = f"{socket.gethostname()}:{os.path.realpath(state_dir)}:{identity}"
    return hashlib.sha1(facts.encode()).hexdigest()[:16]


def _connect(address: str, label: str, expected_pid: int | None = None) -> socket.socket | None:
    """A connection to this user's worker at `address` (None when nobody listens there);
    raises NotOurWorker when another user's process, or another process than the one this
    job started, listens there: nothing of the file is sent to it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # never blocking: a process that listens and never accepts (another user's, its queue
    # kept full) would hold the job, and the device it claimed, for ever
    sock.setblocking(False)
    try:
        sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    except BlockingIOError:
        sock.close()
        raise WorkerUnavailable(
            f"the worker address for {label} takes no connections (its queue is full)"
        ) from None
    sock.setblocking(True)
    pid, uid = peer(sock)
    if uid != os.getuid() or (expected_pid is not None and pid != expected_pid):
        sock.close()
        whose = f"uid {uid}" if uid != os.getuid() else "this user, but not the worker it started"
        raise NotOurWorker(
            f"the process at the worker address for {label} is pid {pid} of {whose}: not used"
        )
    return sock


def worker_log_path(logs_dir: str, label: str) -> Path:
    safe = label.replace(":", "")
    return Path(logs_dir) / f"{socket.gethostname()}.{safe}.log"


def _spawn(spec: dict, label: str, log_path: Path) -> subprocess.Popen:
    environ = dict(os.environ)
    environ.update(cuda_env_for(label))
    source = str(Path(__file__).resolve().parent.parent.parent)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environ.get("PYTHONPATH")]))
    # long-lived processes on a GPU: fewer fragments over many files of different lengths
    environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # the spec (model, settings, folders) where only this user can read it: `ps` shows argv
    # to every user of the host, /proc/PID/environ only to the process's own user and root
    environ[SPEC_VARIABLE] = json.dumps({**spec, "log": str(log_path)})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "seqembed.compute.worker"]
    if slurm_job():
        step = ["srun", "--overlap", "--ntasks=1", "--nodes=1", f"-w{socket.gethostname()}"]
        step += ["--job-name=seqembed-worker", f"--cpus-per-task={spec['settings']['threads']}"]
        if label.startswith("cuda:"):
            step.append("--gres=gpu:1")
        # the worker writes its own log (named in its spec): it outlives this job's step
        # (and its srun), and the log's path in srun's argv would show the run's folder
        step += ["--output=/dev/null", "--export=ALL", "--quiet"]
        return subprocess.Popen(
            step + command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environ,
            close_fds=True,
        )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
            close_fds=True,
        )


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.1)


class WorkerSession:
    """One file handed to the worker of one device."""

    def __init__(
        self,
        *,
        label: str,
        settings: dict,
        state_dir: str,
        logs_dir: str,
        owner: dict | None = None,
    ) -> None:
        self.label = label
        self.settings = settings
        self.owner = owner or owner_facts()
        self.worker_owner = worker_owner(self.owner)
        self.address = address(run_key(state_dir, self.worker_owner), label)
        self.log_path = worker_log_path(logs_dir, label)
        self.started_worker = False
        self.spawned = 0.0
        self.start_seconds = 0.0
        self.worker: dict = {}

    def _open(self, spawn_context: dict) -> socket.socket:
        sock = _connect(self.address, self.label)
        if sock is not None:
            return sock
        spawned = time.time()
        spec = {
            "address": self.address,
            "settings": self.settings,
            "owner": self.worker_owner,
            # inside SLURM: the GPU this job claimed, which the worker step must have too
            "slurm_gpus": os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS"),
            **spawn_context,
        }
        process = _spawn(spec, self.label, self.log_path)
        # srun's pid is not the worker's: there the uid is what can be checked
        expected = None if slurm_job() else process.pid
        deadline = time.monotonic() + CONNECT_SECONDS
        while time.monotonic() < deadline:
            # whoever answers must be the process just started, unless that one found the
            # address taken: then a worker of this user that bound first may serve
            started = None if process.poll() == ADDRESS_IN_USE else expected
            sock = _connect(self.address, self.label, started)
            if sock is not None:
                self.started_worker = True
                self.spawned = spawned
                return sock
            code = process.poll()
            if code is not None and code != ADDRESS_IN_USE:
                raise WorkerUnavailable(
                    f"the worker for {self.label} exited at start (status {code}); see "
                    f"{self.log_path}"
                )
            time.sleep(0.02)
        process.kill()
        raise WorkerUnavailable(
            f"the worker for {self.label} did not start in {CONNECT_SECONDS:.0f} s"
        )

    def embed(self, request: dict, on_event: Callable[[dict], None], spawn_context: dict) -> dict:
        """The worker's figures for the file (its output under a temporary name); raises the
        worker's verdict as Failed, or Crash when it died mid-file."""
        for _ in range(3):
            sock = self._open(spawn_context)
            try:
                message = {"op": "embed", "settings": self.settings, "request": request}
                sock.sendall((json.dumps(message) + "\n").encode())
                answer = self._follow(sock, on_event)
            except ConnectionError:
                if self.worker:
                    raise Crash(
                        f"the worker for {self.label} (pid {self.worker['pid']}) ended without "
                        "a result"
                    ) from None
                answer = None  # it ended (idle) as this job connected: find or start another
            finally:
                sock.close()
            if answer is not None:
                return answer
        raise Crash(f"the worker for {self.label} ended or was replaced three times in a row")

    def _check_owner(self) -> None:
        """While the worker computes: a run that was killed (its Snakemake gone) leaves this
        job an orphan; it ends, and its worker, seeing it go, ends too."""
        if not alive(self.owner):
            raise Crash(f"the run ended while {self.label} computed (Snakemake is gone)")

    def _follow(self, sock: socket.socket, on_event: Callable[[dict], None]) -> dict | None:
        for line in _lines(sock, self._check_owner):
            event = json.loads(line)
            kind = event["event"]
            if kind == "replaced":
                # other settings (model, precision, ...): it exits, and frees the device
                _wait_gone(event["pid"], REPLACE_SECONDS)
                return None
            if kind == "accepted":
                self.worker = event
                if self.started_worker and not event["files_served"]:
                    self.start_seconds = event["ready"] - self.spawned
                on_event(event)
            elif kind == "done":
                return event["stats"]
            elif kind == "failed":
                raise Failed(Verdict.from_dict(event["verdict"]))
            else:
                on_event(event)
        if not self.worker:
            return None  # it ended (idle) before it took the file: find or start another
        raise Crash(
            f"the worker for {self.label} (pid {self.worker['pid']}) ended without a result"
        )


def _lines(sock: socket.socket, on_idle: Callable[[], None]):
    """The lines the worker sends, until it closes its end; `on_idle` every few seconds of
    silence (a model loading, a long batch)."""
    sock.settimeout(2.0)
    buffer = b""
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            yield buffer[:newline]
            buffer = buffer[newline + 1 :]
            continue
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            on_idle()
            continue
        if not chunk:
            return
        buffer += chunk
