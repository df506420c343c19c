"""The resident model of one device: a long-lived process that loads the model once and embeds
the files that embed jobs hand to it, one at a time.

Snakemake still runs one job per file, with its retries, priorities and records; what a job no
longer does is import torch and load the model. The job that claims a device connects to that
device's worker (a Unix socket in Linux's abstract namespace, named by the run and the device,
so a run never meets another run's workers and no socket file is ever left behind), and starts
it first if there is none. The job's device claim stays the one exclusion: a worker serves
whichever job holds its device, one file at a time.

A worker ends by itself, within seconds, when the run it belongs to ends for any reason,
SIGKILL of Snakemake included: it watches its owner, the outermost Snakemake process above the
job that started it (the run's Snakemake on a workstation, the one that runs the submission
inside a SLURM allocation). It also ends after `IDLE_SECONDS` without work, when a job asks
for other model settings (the job then starts a fresh one), and after an error that may have
left the device or the model unusable (any CUDA error other than out-of-memory, anything
unforeseen): the next file gets a fresh process. A job that goes away mid-file (killed,
aborted) costs the worker that file only: it stops at the next batch and serves the next job.

Only this user's processes are served or believed (README, "Shared machines"): the abstract
socket has no file permissions, so the worker asks the kernel who connected (SO_PEERCRED) and
closes any other user's connection unread; the job checks the worker the same way
(seqembed.job.client). The spec travels in the environment (readable only by this user and
root, unlike argv), and test faults come only from the environment of the job that started
the worker, never from a request.

Protocol, one JSON object per line. Job: {"op": "embed", "settings": {...}, "request": {...}}.
Worker: {"event": "accepted", ...worker facts}, then "progress" and "log" events, then "done"
(with the file's figures) or "failed" (with the verdict); or "replaced" when the settings
differ (the worker then exits).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import sys
import threading
import time

import psutil

from seqembed import faults
from seqembed.compute.worker_socket import ClientGone, Connection, Refusals, log, peer
from seqembed.errors import (
    Aborted,
    DeviceError,
    ModelError,
    OutOfMemory,
    OutputError,
    SeqembedError,
    SequenceTooLarge,
    Verdict,
    classify,
    one_line,
)

#: a worker with nothing to do for this long ends (its run may be over without it noticing,
#: or its device gone to other work); the next file on its device starts a fresh one
IDLE_SECONDS = 60
#: exit status when another worker already serves this address
ADDRESS_IN_USE = 3
#: exit status when SLURM gave the worker's step another GPU than the job claimed
WRONG_DEVICE = 4
#: where the job puts the worker's spec
SPEC_VARIABLE = "SEQEMBED_WORKER_SPEC"
#: failures after which the worker is known to be sound and keeps serving
KEEP_SERVING = (SequenceTooLarge, Aborted, OutputError, OutOfMemory, ModelError)


def alive(owner: dict) -> bool:
    if owner.get("pid") is None:
        return True  # a SLURM allocation: it ends this worker's step itself
    try:
        process = psutil.Process(owner["pid"])
        return abs(process.create_time() - owner["create_time"]) < 1.0 and process.is_running()
    except (psutil.Error, KeyError, TypeError):
        return False


def load_model(settings: dict):
    """The backend for `settings`, timed; what the job would load itself in per-file mode."""
    import torch

    from seqembed.compute.backends import load_backend

    torch.set_num_threads(max(1, settings["threads"]))
    started = time.time()
    backend = load_backend(
        settings["model"],
        device=settings["torch_device"],
        precision=settings["precision"],
        truncation=settings["truncation"],
        model_cache=settings["model_cache"],
        trust_remote_code=settings.get("trust_remote_code", False),
        pooling=settings.get("pooling", "auto"),
    )
    return backend, time.time() - started


def verdict_of(error: BaseException) -> tuple[Verdict, BaseException]:
    """The verdict on a failure in the worker, with torch's errors named for what they mean:
    out of memory, or a device left unusable."""
    from seqembed.compute.device_errors import device_failure, is_out_of_memory

    if not isinstance(error, SeqembedError):
        if is_out_of_memory(error):
            error = OutOfMemory(one_line(error))
        else:
            error = device_failure(error) or error
    return classify(error), error


def release_memory(device) -> None:
    """Between files: a long-lived process must not keep the last file's tensors, nor let the
    caching allocator fragment over many files of different lengths."""
    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()


class Worker:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.settings = spec["settings"]
        self.owner = spec["owner"]
        self.backend = None
        self.load_error = None
        self.load_seconds = 0.0
        self.files_served = 0
        self.ready = 0.0
        self.fits: dict = {}
        self.refusals = Refusals()

    @property
    def run_ended(self) -> str | None:
        if alive(self.owner):
            return None
        return f"its run ended (Snakemake pid {self.owner['pid']} is gone)"

    def owner_check(self) -> None:
        if self.run_ended:
            raise ClientGone(self.run_ended)

    def serve(self, server: socket.socket) -> str:
        """Serve jobs until a reason to end; returns it."""
        idle_since = time.monotonic()
        server.settimeout(1.0)
        while True:
            if self.run_ended:
                return self.run_ended
            if time.monotonic() - idle_since > IDLE_SECONDS:
                return f"idle for {IDLE_SECONDS} s"
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            pid, uid = peer(conn)
            if uid != os.getuid():
                # another user found the address (/proc/net/unix lists it): nothing it says
                # is read, and nothing changes (no exit, no work, no idle time reset)
                self.refusals.refused(uid, pid)
                conn.close()
                continue
            connection = Connection(conn)
            try:
                ending = self.handle(connection)
            finally:
                connection.close()
            if ending:
                return ending
            idle_since = time.monotonic()

    def handle(self, connection: Connection) -> str | None:
        message = connection.receive()
        if not message or message.get("op") == "exit":
            return "asked to exit" if message else None
        if message.get("settings") != self.settings:
            connection.send({"event": "replaced", "pid": os.getpid()})
            return "replaced: a job asked for other model settings"
        request = message["request"]
        faults.serve(request["name"], request["attempt"])
        connection.send(
            {
                "event": "accepted",
                "pid": os.getpid(),
                "files_served": self.files_served,
                "load_seconds": self.load_seconds,
                "ready": self.ready,
            }
        )
        if self.load_error is not None:
            connection.send({"event": "failed", "verdict": self.load_error.as_dict()})
            return f"model load failed: {self.load_error.message}"
        from seqembed.compute.embed_file import embed_file, stop_when

        started = time.time()
        try:
            stats = embed_file(
                self.backend,
                request,
                emit=connection.send,
                check_stop=stop_when(
                    request["state_dir"], connection.check_client, self.owner_check
                ),
                fits=self.fits,
            )
        except Exception as error:  # noqa: BLE001 - the job records every failure
            verdict, error = verdict_of(error)
            release_memory(self.backend.device)
            log(f"{request['name']}: {verdict.error_type}: {verdict.message}")
            if isinstance(error, ClientGone):
                return self.run_ended
            try:
                connection.send({"event": "failed", "verdict": verdict.as_dict()})
            except ClientGone:
                pass
            if isinstance(error, KEEP_SERVING):
                return None
            if isinstance(error, DeviceError):
                return f"device left unusable: {verdict.message}"
            return f"after an unforeseen error: {verdict.message}"
        self.files_served += 1
        release_memory(self.backend.device)
        stats["worker_rss_mb"] = psutil.Process().memory_info().rss / 2**20
        stats["worker_files_served"] = self.files_served
        log(
            f"{request['name']}: {len(request['ids'])} sequences in "
            f"{time.time() - started:.2f} s (file {self.files_served} of this worker)"
        )
        try:
            connection.send({"event": "done", "stats": stats})
        except ClientGone:
            # nobody will rename it: the job's retry removes stale temporaries anyway
            os.unlink(stats["temporary"])
        return None

    def load(self) -> None:
        faults.serve(self.spec.get("name"), self.spec.get("attempt"))
        try:
            self.backend, self.load_seconds = load_model(self.settings)
            log(f"model {self.backend.name} loaded in {self.load_seconds:.2f} s")
            # torch and the model are some 170,000 objects that live as long as this
            # process: out of the collector's sight, the collection between two files
            # (release_memory) takes microseconds instead of 0.1-0.2 s
            gc.collect()
            gc.freeze()
        except Exception as error:  # noqa: BLE001 - reported to the job that connects
            self.load_error, _ = verdict_of(error)
            log(f"model not loaded: {self.load_error.error_type}: {self.load_error.message}")
        self.ready = time.time()


def read_spec() -> dict:
    """The spec the job put in this process's environment (not in argv, which `ps` shows
    every user); the log named there takes this process's output."""
    spec = json.loads(os.environ.pop(SPEC_VARIABLE))
    if spec.get("log"):
        descriptor = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            os.dup2(descriptor, stream.fileno())
        os.close(descriptor)
    return spec


def main() -> None:
    spec = read_spec()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(spec["address"])
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            sys.exit(ADDRESS_IN_USE)
        raise
    server.listen(8)
    label = spec["settings"]["device"]
    granted = os.environ.get("SLURM_STEP_GPUS")
    if label.startswith("cuda:") and spec.get("slurm_gpus") and granted != spec["slurm_gpus"]:
        log(
            f"not started: SLURM gave this step GPU {granted}, the job claimed GPU "
            f"{spec['slurm_gpus']}"
        )
        sys.exit(WRONG_DEVICE)
    owner = spec["owner"]
    lifetime = (
        f"ends with SLURM job {owner['slurm_job']}"
        if owner.get("slurm_job")
        else f"ends with Snakemake pid {owner['pid']}"
    )
    log(
        f"worker pid {os.getpid()} for {label} started by {spec.get('name')}: model "
        f"{spec['settings']['model']}; {lifetime}"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    worker = Worker(spec)

    # the owner is watched even while the model loads or a file computes: a run killed with
    # SIGKILL leaves nobody to tell its workers
    def watch_owner() -> None:
        while alive(worker.owner):
            time.sleep(1.0)
        time.sleep(10.0)  # the batch loop notices first and ends cleanly; this is the backstop
        log("exiting: its run ended")
        os._exit(0)

    threading.Thread(target=watch_owner, daemon=True).start()
    worker.load()
    reason = worker.serve(server)
    log(f"exiting: {reason}")


if __name__ == "__main__":
    main()
