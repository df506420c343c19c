"""One file through a loaded model: its batches, and its output written under a temporary name
that the job renames once it has the last word. The same code serves the resident worker and
the per-file mode, where the job process is its own worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from seqembed import runstate
from seqembed.compute.batch_loop import embed_all
from seqembed.compute.batching import (
    CPU_HALF_TOKS_PER_BATCH,
    CPU_TOKS_PER_BATCH,
    fixed_budget,
    memory_budget,
)
from seqembed.compute.hf_models import DNA_ALPHABET
from seqembed.compute.writers import open_writer, windowed
from seqembed.errors import Aborted
from seqembed.fasta import FastaRecords

#: seconds between two progress messages to the job (it rewrites its progress file at most
#: every 0.5 s; a GPU finishes many batches a second)
PROGRESS_INTERVAL = 0.2


def batch_budget(toks_per_batch, backend, layers: list[int], fits: dict | None = None, **outputs):
    """A fixed budget, or with "auto" one sized from the free memory once the model is in and
    from the memory one sequence was measured to take (seqembed.compute.memory) with these
    `outputs` (include, residue_dtype). `fits` keeps the measurement for the worker's later
    files."""
    if toks_per_batch != "auto":
        return fixed_budget(int(toks_per_batch))
    import torch

    if backend.device.type != "cuda":
        full = backend.dtype == torch.float32
        return fixed_budget(CPU_TOKS_PER_BATCH if full else CPU_HALF_TOKS_PER_BATCH)

    from seqembed.compute.memory import fit_memory

    fits = {} if fits is None else fits
    key = (len(layers), *sorted(outputs.items()))
    if key not in fits:
        fits[key] = fit_memory(backend, layers, **outputs)
    torch.cuda.empty_cache()
    free_bytes, _ = torch.cuda.mem_get_info(backend.device)
    return memory_budget(free_bytes, fits[key].bytes_per_sequence)


def stop_when(state_dir: str, *others: Callable[[], None]) -> Callable[[], None]:
    """Between batches: the run was aborted (read at most once a second), or another reason
    to stop (the job that asked for this file is gone) raised by `others`."""
    last = [0.0]

    def check() -> None:
        for other in others:
            other()
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            reason = runstate.abort_reason(state_dir)
            if reason:
                raise Aborted(f"stopped: {reason}")

    return check


def embed_file(
    backend,
    request: dict,
    *,
    emit: Callable[[dict], None] = lambda event: None,
    check_stop: Callable[[], None] = lambda: None,
    fits: dict | None = None,
) -> dict:
    """`request`: name, source (the input file), ids, sequences, output (the final path),
    layers, toks_per_batch, truncation, output_layout, include, output_format, store_float16.
    Returns the figures of the file and the temporary output."""
    records = FastaRecords(request["ids"], request["sequences"])
    layers = backend.resolve_layers(request["layers"])
    precision = str(backend.dtype).removeprefix("torch.")
    meta = {
        "model": backend.name,
        "truncation": request["truncation"],
        "precision": precision,
        "source": request.get("source", request["name"]),
        "molecule": "dna" if backend.alphabet == DNA_ALPHABET else "protein",
        # the window is the truncation: sequences longer than it are cut, or in windows
        "long_sequences": request.get("long_sequences", "truncate"),
        "window_overlap": request.get("window_overlap", 0),
    }
    include = request.get("include", ["mean"])
    writer = open_writer(request, layers, backend.embed_dim, meta)  # cleans up after itself
    last_progress = [0.0]

    def advanced(done: int) -> None:
        now = time.monotonic()
        if now - last_progress[0] >= PROGRESS_INTERVAL or done == len(records.ids):
            last_progress[0] = now
            emit({"event": "progress", "done": done})

    started = time.time()
    try:
        budget = batch_budget(
            request["toks_per_batch"],
            backend,
            layers,
            fits,
            include=tuple(include),
            residue_dtype=writer.residue_dtype,
        )
        result = embed_all(
            backend,
            records,
            layers,
            budget,
            truncation=request["truncation"],
            progress=lambda message: emit({"event": "log", "message": message}),
            advanced=advanced,
            check_stop=check_stop,
            name=request["name"],
            include=include,
            residues=writer.residues,
            residue_dtype=writer.residue_dtype,
            windows=(request["truncation"], meta["window_overlap"]) if windowed(request) else None,
        )
        compute_seconds = time.time() - started
        temporary = writer.finish(result.pooled)
    except BaseException:
        writer.discard()
        raise
    return {
        "temporary": str(Path(temporary)),
        "model": backend.name,
        "layers": layers,
        "precision": precision,
        "precision_reason": getattr(backend, "precision_reason", ""),
        "unique_sequences": result.unique_sequences,
        "real_tokens": result.real_tokens,
        "computed_tokens": result.computed_tokens,
        "batches": result.batches,
        "windows": result.windows,
        "oom_backoffs": result.oom_backoffs,
        "compute_seconds": compute_seconds,
    }
