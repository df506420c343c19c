"""One embed job: one FASTA file in, one embedding file and one record out.

Order matters: the input is read and checked before a device is claimed or a model loaded, so
a bad file costs nothing but its own line in the report.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass

from seqembed import plan as plans
from seqembed.backends import ModelError
from seqembed.batching import (
    CPU_TOKS_PER_BATCH,
    MemoryModel,
    fixed_budget,
    make_batches,
    memory_budget,
)
from seqembed.devices import DeviceError, claim_device, cuda_env_for, resolve_pool, torch_device_for
from seqembed.fasta import InputError, read_fasta
from seqembed.output import embedding_payload, write_atomically, write_json


@dataclass(frozen=True)
class EmbedJob:
    name: str
    fasta: str
    output: str
    record: str
    config: dict  # validated (seqembed.config.validate_config)
    plan_path: str
    lock_dir: str
    threads: int = 1
    attempt: int = 1


def say(config: dict, level: str, message: str) -> None:
    order = {"quiet": 0, "normal": 1, "verbose": 2}
    if order[config["verbosity"]] >= order[level]:
        print(message, file=sys.stderr, flush=True)


def _budget(job: EmbedJob, backend, layers: list[int], torch_device: str):
    if job.config["toks_per_batch"] != "auto":
        return fixed_budget(int(job.config["toks_per_batch"]))
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


def run_embed_job(job: EmbedJob) -> dict:
    """Embed one file and write its output and record; returns the record."""
    from seqembed.backends import backend_class, load_backend

    started = time.time()
    config = job.config
    records = read_fasta(job.fasta, backend_class(config["model"]).alphabet)
    lengths = [len(sequence) for sequence in records.sequences]

    pool = resolve_pool(config["device"], config["gpus"], config["cpu_slots"])
    planned = plans.planned_device(job.plan_path, job.name)
    claim = claim_device(
        pool,
        job.lock_dir,
        holder=job.name,
        prefer=[planned] if planned else [],
        on_wait=lambda: say(config, "normal", f"{job.name}: waiting for a free device"),
    )
    with claim:
        os.environ.update(cuda_env_for(claim.label))
        torch_device = torch_device_for(claim.label)
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
        batches = make_batches(
            lengths,
            _budget(job, backend, layers, torch_device),
            extra_tokens=backend.extra_tokens,
            truncation=config["truncation"],
        )
        pooled = {layer: torch.zeros(len(lengths), backend.embed_dim) for layer in layers}
        for number, batch in enumerate(batches, start=1):
            result = backend.embed([records.sequences[i] for i in batch.indices], layers)
            index = torch.tensor(batch.indices)
            for layer in layers:
                pooled[layer][index] = result[layer]
            say(
                config,
                "verbose",
                f"{job.name}: batch {number}/{len(batches)}: {len(batch.indices)} sequences "
                f"x {batch.padded_length} tokens",
            )
        compute_seconds = time.time() - compute_started

        payload = embedding_payload(
            config["output_layout"],
            records.ids,
            pooled,
            model=backend.name,
            truncation=config["truncation"],
        )
        write_atomically(job.output, lambda stream: torch.save(payload, stream))

    finished = time.time()
    record = {
        "status": "done",
        "name": job.name,
        "file": job.fasta,
        "output": job.output,
        "device": claim.label,
        "planned_device": planned,
        "host": socket.gethostname(),
        "attempt": job.attempt,
        "model": backend.name,
        "layers": layers,
        "precision": str(backend.dtype).removeprefix("torch."),
        "sequences": len(lengths),
        "residues": sum(lengths),
        "real_tokens": sum(min(n, config["truncation"]) + backend.extra_tokens for n in lengths),
        "computed_tokens": sum(batch.computed_tokens for batch in batches),
        "batches": len(batches),
        "truncated_sequences": sum(n > config["truncation"] for n in lengths),
        "started": started,
        "finished": finished,
        "model_load_seconds": model_load_seconds,
        "compute_seconds": compute_seconds,
        "wall_seconds": finished - started,
    }
    write_json(job.record, record)
    say(
        config,
        "normal",
        f"{job.name}: {len(lengths)} sequences on {claim.label} in {finished - started:.1f} s "
        f"(model load {model_load_seconds:.1f} s)",
    )
    return record


#: errors whose message is already one clear line for the user; anything else is a bug or a
#: crash and keeps its traceback
EXPECTED_ERRORS = {InputError: "InputError", ModelError: "ModelError", DeviceError: "DeviceError"}


def run_or_record_failure(job: EmbedJob) -> dict:
    """Run the job; on an expected error write a failure record (kept: it is the rule's log)
    and exit with one line naming the file, so the other files go on."""
    try:
        return run_embed_job(job)
    except tuple(EXPECTED_ERRORS) as error:
        error_type = EXPECTED_ERRORS[type(error)]
        message = " ".join(str(error).split())
        write_json(
            job.record,
            {
                "status": "failed",
                "name": job.name,
                "file": job.fasta,
                "attempt": job.attempt,
                "host": socket.gethostname(),
                "error_type": error_type,
                "error_message": message,
                "finished": time.time(),
            },
        )
        where = "" if job.fasta in message else f"{job.fasta}: "
        raise SystemExit(f"seqembed: {error_type}: {where}{message}") from None
