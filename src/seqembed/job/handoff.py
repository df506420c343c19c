"""Where a job's file is computed: handed to the resident worker of the claimed device
(seqembed.job.client), or, with `worker: per_file`, for an empty file, or where no worker can
be started, in the job's own process. Either way the answer is the same: the worker's figures
for the file, its output under a temporary name, and how the model was found (loaded already,
or loaded for this file, and what that cost)."""

from __future__ import annotations

import os
import time

from seqembed import faults
from seqembed.devices import cuda_env_for, torch_device_for
from seqembed.job.progress import say


def worker_settings(job, label: str) -> dict:
    """Everything that shapes the loaded network: a worker holding other settings is replaced."""
    config = job.config
    torch_device = "cpu" if faults.gpu_computes_on_cpu() else torch_device_for(label)
    return {
        "device": label,
        "torch_device": torch_device,
        "model": config["model"],
        "model_cache": config["model_cache"],
        "precision": config["precision"],
        "truncation": config["truncation"],
        "trust_remote_code": config["trust_remote_code"],
        "pooling": config["pooling"],
        "threads": max(1, job.threads),
    }


def compute(job, label: str, request: dict, on_event) -> dict:
    """The file through the model on `label`; the worker's figures plus how the model was
    found: loaded already, or loaded for this file (and how long that took)."""
    settings = worker_settings(job, label)
    if job.config["worker"] == "per_file" or not request["ids"]:
        # the way back, and an empty file (no device, nothing to compute): this process is
        # its own worker
        return compute_here(job, label, settings, request, on_event)
    from seqembed.job.client import WorkerSession, WorkerUnavailable

    session = WorkerSession(
        label=label, settings=settings, state_dir=job.state_dir, logs_dir=job.logs_dir
    )
    try:
        stats = session.embed(
            request,
            on_event,
            {"name": job.name, "attempt": job.attempt},
        )
    except WorkerUnavailable as reason:
        say(job.config, "normal", f"seqembed: {job.name}: {reason}: computing it in the job")
        return compute_here(job, label, settings, request, on_event)
    if session.started_worker and not session.worker["files_served"]:
        say(
            job.config,
            "normal",
            f"seqembed: {label}: worker pid {session.worker['pid']} started in "
            f"{session.start_seconds:.1f} s (model load {session.worker['load_seconds']:.1f} s;"
            f" log {session.log_path})",
        )
    return {
        **stats,
        "model_was_loaded": not session.started_worker,
        "worker_pid": session.worker["pid"],
        "worker_start_seconds": session.start_seconds,
        "model_load_seconds": session.worker["load_seconds"] if session.started_worker else 0.0,
    }


def compute_here(job, label: str, settings: dict, request: dict, on_event) -> dict:
    """This process as its own worker: it imports torch and loads the model for one file."""
    from seqembed.compute.embed_file import embed_file, stop_when
    from seqembed.compute.worker import load_model

    faults.serve(job.name, job.attempt)
    os.environ.update(cuda_env_for(label))
    started = time.time()
    backend, load_seconds = load_model(settings)
    start_seconds = time.time() - started
    stats = embed_file(backend, request, emit=on_event, check_stop=stop_when(job.state_dir))
    return {
        **stats,
        "model_was_loaded": False,
        "worker_pid": os.getpid(),
        "worker_start_seconds": start_seconds,
        "model_load_seconds": load_seconds,
    }
