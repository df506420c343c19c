"""One embed job: one FASTA file in, one embedding file and one record out (the failure
semantics around it are in seqembed.job.attempts).

Order matters: the input is checked before a device is claimed or a model loaded, so a bad
file costs seconds, not a model load.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from seqembed import faults
from seqembed.compute.backends import backend_class, load_backend
from seqembed.compute.batch_loop import embed_all
from seqembed.compute.batching import CPU_TOKS_PER_BATCH, MemoryModel, fixed_budget, memory_budget
from seqembed.devices import (
    claim_device,
    cuda_env_for,
    lane_for,
    resolve_pool,
    slurm_job,
    torch_device_for,
)
from seqembed.fasta import read_fasta
from seqembed.job.progress import JobProgress, view_is_on
from seqembed.output import embedding_payload, write_atomically, write_json
from seqembed.run.plan import planned_device


@dataclass(frozen=True)
class EmbedJob:
    name: str
    fasta: str
    output: str
    record: str
    config: dict  # validated (seqembed.run.config.validate_config)
    plan_path: str
    lock_dir: str
    state_dir: str
    threads: int = 1
    attempt: int = 1


def say(config: dict, level: str, message: str) -> None:
    order = {"quiet": 0, "normal": 1, "verbose": 2}
    if order[config["verbosity"]] >= order[level]:
        print(message, file=sys.stderr, flush=True)


def news_level() -> str:
    """The level of per-file news (waiting for a device, done): a live view shows it
    already, so without verbose the job keeps quiet."""
    return "verbose" if view_is_on() else "normal"


def batch_budget(toks_per_batch, backend, layers: list[int], torch_device: str):
    """A fixed budget, or with "auto" one sized from the free memory once the model is in."""
    if toks_per_batch != "auto":
        return fixed_budget(int(toks_per_batch))
    if not torch_device.startswith("cuda"):
        return fixed_budget(CPU_TOKS_PER_BATCH)
    import torch

    free_bytes, _ = torch.cuda.mem_get_info()
    memory = MemoryModel(
        embed_dim=backend.embed_dim,
        attention_heads=backend.attention_heads,
        kept_layers=len(layers),
        bytes_per_value=torch.finfo(backend.dtype).bits // 8,
    )
    return memory_budget(free_bytes, memory)


def read_record(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def last_attempt_path(job: EmbedJob) -> Path:
    # Snakemake deletes a job's log (the record) before each attempt, so the retry learns
    # what happened to the attempt before it from this copy
    return Path(job.state_dir) / "attempts" / f"{job.name}.json"


def write_record(job: EmbedJob, record: dict) -> None:
    write_json(job.record, record)
    write_json(last_attempt_path(job), record)


def _remove_stale_temporaries(output: str) -> None:
    # a job killed mid-write leaves its hidden temporary behind (never the final name)
    target = Path(output)
    for stale in glob.glob(str(target.parent / f".{glob.escape(target.name)}.*.tmp")):
        Path(stale).unlink(missing_ok=True)


def run_embed_job(job: EmbedJob, *, avoid: list[str] = ()) -> dict:
    """Embed one file and write its output and record; returns the record."""
    started = time.time()
    config = job.config
    records = read_fasta(job.fasta, backend_class(config["model"]).alphabet)
    lengths = [len(sequence) for sequence in records.sequences]
    _remove_stale_temporaries(job.output)
    progress = JobProgress(
        job.state_dir, job.name, file=job.fasta, attempt=job.attempt, total=len(lengths)
    )
    progress.update(status="waiting")

    planned = planned_device(job.plan_path, job.name)
    if lengths:
        claim = claim_device(
            resolve_pool(config["device"], config["gpus"], config["cpu_slots"]),
            job.lock_dir,
            holder=job.name,
            prefer=[planned] if planned else [],
            avoid=avoid,
            on_wait=lambda: say(config, news_level(), f"{job.name}: waiting for a free device"),
        )
        label = claim.label
    else:
        # nothing to compute: the model is loaded on the CPU only for its layers and width
        claim, label = contextlib.nullcontext(), "cpu:0"
    base = {
        "name": job.name,
        "file": job.fasta,
        "output": job.output,
        "device": label if lengths else None,
        # the physical device, for reports (inside SLURM: node and GPU)
        "lane": lane_for(label) if lengths else None,
        "planned_device": planned,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # inside SLURM: which job, and the GPUs it was granted (the pool it claimed from)
        "slurm_job_id": slurm_job(),
        "slurm_gpus": slurm_job() and os.environ.get("CUDA_VISIBLE_DEVICES"),
        "attempt": job.attempt,
        "started": started,
    }
    with claim:
        base["claimed"] = time.time()
        # until this is replaced, a crash of this process leaves "running" behind: the retry
        # reads it to avoid the device, the summary to name the crash
        write_record(job, {**base, "status": "running"})
        if lengths:  # an empty file occupies no device
            progress.update(status="running", device=base["device"], lane=base["lane"])
        os.environ.update(cuda_env_for(label))
        torch_device = "cpu" if faults.gpu_computes_on_cpu() else torch_device_for(label)
        import torch

        # the job's share of the cores: several jobs on one node must not each start a
        # thread per core
        torch.set_num_threads(max(1, job.threads))
        load_started = time.time()
        backend = load_backend(
            config["model"],
            device=torch_device,
            precision=config["precision"],
            truncation=config["truncation"],
            model_cache=config["model_cache"],
        )
        layers = backend.resolve_layers(config["layers"])
        model_load_seconds = time.time() - load_started

        compute_started = time.time()
        result = embed_all(
            backend,
            records,
            layers,
            batch_budget(config["toks_per_batch"], backend, layers, torch_device),
            truncation=config["truncation"],
            progress=lambda message: say(config, "verbose", f"{job.name}: {message}"),
            advanced=progress.advance,
        )
        compute_seconds = time.time() - compute_started

        payload = embedding_payload(
            config["output_layout"],
            records.ids,
            result.pooled,
            model=backend.name,
            truncation=config["truncation"],
        )

        def write(stream) -> None:
            torch.save(payload, stream)
            stream.flush()
            faults.maybe_pause_before_rename(job.name, job.attempt)

        write_atomically(job.output, write)

    finished = time.time()
    process_started = psutil.Process().create_time()
    record = {
        **base,
        "status": "done",
        "model": backend.name,
        "layers": layers,
        "precision": str(backend.dtype).removeprefix("torch."),
        "sequences": len(lengths),
        "residues": sum(lengths),
        "unique_sequences": result.unique_sequences,
        "real_tokens": result.real_tokens,
        "computed_tokens": result.computed_tokens,
        "batches": result.batches,
        "oom_backoffs": result.oom_backoffs,
        "truncated_sequences": sum(n > config["truncation"] for n in lengths),
        "duplicate_ids": len(records.ids) - len(set(records.ids)),
        "finished": finished,
        # interpreter, imports and Snakemake's script preamble, before this function ran
        "startup_seconds": max(0.0, started - process_started),
        "model_load_seconds": model_load_seconds,
        "compute_seconds": compute_seconds,
        "wall_seconds": finished - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_record(job, record)
    progress.update(status="done", done=len(lengths))
    say(
        config,
        news_level(),
        f"{job.name}: {len(lengths)} sequences on {record['device']} in "
        f"{finished - started:.1f} s (model load {model_load_seconds:.1f} s)",
    )
    return record
