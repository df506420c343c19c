"""One embed job: one FASTA file in, one embedding file and one record out.

Order matters: the abort flag and the input are checked before a device is claimed or a
model loaded, so a bad file or an aborted run costs seconds, not a model load.
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
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil

from seqembed import faults, runstate
from seqembed.backends import ModelError, backend_class, load_backend
from seqembed.batching import CPU_TOKS_PER_BATCH, MemoryModel, fixed_budget, memory_budget
from seqembed.devices import DeviceError, claim_device, cuda_env_for, resolve_pool, torch_device_for
from seqembed.fasta import InputError, read_fasta
from seqembed.output import embedding_payload, write_atomically, write_json
from seqembed.plan import planned_device
from seqembed.runner import SequenceTooLarge, embed_all


@dataclass(frozen=True)
class EmbedJob:
    name: str
    fasta: str
    output: str
    record: str
    config: dict  # validated (seqembed.config.validate_config)
    plan_path: str
    lock_dir: str
    state_dir: str
    threads: int = 1
    attempt: int = 1


class Aborted(Exception):
    """The run was aborted by earlier failures; this file was not attempted."""


#: error type for failed_files.txt; whether it counts towards the systemic abort (input
#: problems say nothing about the model, driver or node); whether a retry would fail the
#: same way, so that the retry repeats the verdict instead of loading the model again
ERROR_TYPES = {
    InputError: ("InputError", False, True),
    Aborted: ("Aborted", False, True),
    ModelError: ("ModelError", True, True),
    SequenceTooLarge: ("OOM", True, True),
    DeviceError: ("DeviceError", True, False),
}


def say(config: dict, level: str, message: str) -> None:
    order = {"quiet": 0, "normal": 1, "verbose": 2}
    if order[config["verbosity"]] >= order[level]:
        print(message, file=sys.stderr, flush=True)


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


def _read_record(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _last_attempt_path(job: EmbedJob) -> Path:
    # Snakemake deletes a job's log (the record) before each attempt, so the retry learns
    # what happened to the attempt before it from this copy
    return Path(job.state_dir) / "attempts" / f"{job.name}.json"


def _write_record(job: EmbedJob, record: dict) -> None:
    write_json(job.record, record)
    write_json(_last_attempt_path(job), record)


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

    planned = planned_device(job.plan_path, job.name)
    if lengths:
        claim = claim_device(
            resolve_pool(config["device"], config["gpus"], config["cpu_slots"]),
            job.lock_dir,
            holder=job.name,
            prefer=[planned] if planned else [],
            avoid=avoid,
            on_wait=lambda: say(config, "normal", f"{job.name}: waiting for a free device"),
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
        "planned_device": planned,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "attempt": job.attempt,
        "started": started,
    }
    with claim:
        base["claimed"] = time.time()
        # until this is replaced, a crash of this process leaves "running" behind: the retry
        # reads it to avoid the device, the summary to name the crash
        _write_record(job, {**base, "status": "running"})
        os.environ.update(cuda_env_for(label))
        torch_device = torch_device_for(label)
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
    _write_record(job, record)
    say(
        config,
        "normal",
        f"{job.name}: {len(lengths)} sequences on {record['device']} in "
        f"{finished - started:.1f} s (model load {model_load_seconds:.1f} s)",
    )
    return record


def _classify(error: BaseException) -> tuple[str, bool, bool, str]:
    """error type, counts towards the abort, deterministic, one-line message"""
    message = " ".join(str(error).split())
    for kind, (error_type, runtime, deterministic) in ERROR_TYPES.items():
        if isinstance(error, kind):
            return error_type, runtime, deterministic, message
    if type(error).__name__ == "OutOfMemoryError":
        # outside the batch loop (moving the model to a busy GPU): another device may do
        return "OOM", True, False, message
    # a bug, a failing GPU or an unforeseen library error: keep the traceback for whoever
    # debugs it, and let the retry try another device
    traceback.print_exc()
    return "Error", True, False, f"{type(error).__name__}: {message}"


def run_or_record_failure(job: EmbedJob) -> dict:
    """Run the job with the failure semantics of a run: every failure leaves a record (the
    rule's log, which Snakemake keeps after a failure) and one line naming the file, and
    exits non-zero so Snakemake retries or gives up on this file while the others go on."""
    previous = _read_record(_last_attempt_path(job))
    retry_of = previous if previous and previous.get("attempt", 0) < job.attempt else None
    history = list((retry_of or {}).get("previous_attempts", []))
    avoid: list[str] = []
    completed_streak = False  # this job's outcome aborts the run: it stops the scheduler
    try:
        if retry_of and retry_of["status"] == "running":
            # the previous attempt of this run died without a word: killed, segfault, node
            crash = f"attempt {retry_of['attempt']} ended without a result on {retry_of['device']}"
            retry_of = {**retry_of, "error_type": "Crash", "error_message": crash}
            completed_streak = bool(
                runstate.record_outcome(job.state_dir, job.name, job.fasta, "Crash", crash)
            )
        if retry_of:
            history.append(_attempt(retry_of))
            if retry_of.get("deterministic"):
                _fail(job, history, retry_of["error_type"], retry_of["error_message"], True)
            avoid = [retry_of["device"]] if retry_of.get("device") else []
        reason = runstate.abort_reason(job.state_dir)
        if reason:
            raise Aborted(reason)
        record = run_embed_job(job, avoid=avoid)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - every failure must leave a record
        error_type, runtime, deterministic, message = _classify(error)
        if runtime and runstate.record_outcome(
            job.state_dir, job.name, job.fasta, error_type, message
        ):
            completed_streak = True
        _fail(job, history, error_type, message, deterministic, stop_run=completed_streak)
    if history:
        record["previous_attempts"] = history
        _write_record(job, record)
    runstate.record_outcome(job.state_dir, job.name, job.fasta, None)
    return record


def _attempt(record: dict) -> dict:
    return {
        "attempt": record["attempt"],
        "device": record.get("device"),
        "error_type": record["error_type"],
        "error_message": record["error_message"],
    }


def _fail(
    job: EmbedJob,
    history: list[dict],
    error_type: str,
    message: str,
    deterministic: bool,
    stop_run: bool = False,
):
    # the device this attempt had claimed, from its "running" record, so a retry avoids it
    current = _read_record(_last_attempt_path(job)) or {}
    device = current.get("device") if current.get("attempt") == job.attempt else None
    _write_record(
        job,
        {
            "status": "failed",
            "name": job.name,
            "file": job.fasta,
            "attempt": job.attempt,
            "device": device,
            "host": socket.gethostname(),
            "error_type": error_type,
            "error_message": message,
            "deterministic": deterministic,
            "previous_attempts": history,
            "finished": time.time(),
        },
    )
    if stop_run:
        # after the record is safe: stopping the scheduler ends this job too
        runstate.stop_scheduler(job.state_dir)
    where = "" if job.fasta in message else f"{job.fasta}: "
    raise SystemExit(f"seqembed: {error_type}: {where}{message}")
