"""How much memory one sequence of T tokens takes in a forward pass: measured on the device,
once per worker, not modelled.

A formula has to guess which kernel runs: fair-esm's own attention stores every T x T score
matrix, the fused kernels never do, and the difference is a factor of five in what fits for
ESM-2 3B at 1,024 tokens. So the worker runs two small probe batches of random tokens through
the real network and reads the peak of what they allocated: on a GPU from the caching
allocator's statistics (`torch.cuda.max_memory_allocated`), on the CPU from the allocation
events torch's profiler records (the process's resident memory would not do: freed blocks
stay with the C allocator and hide later peaks). Per sequence, the peak is fitted as
`linear * T + quadratic * T^2`: the first term holds the activations, the second whatever
grows with the square of the length (attention scores where a kernel keeps them).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

#: probe lengths (tokens, BOS/EOS included) and sequences per probe batch
PROBE_LENGTHS = (128, 512)
PROBE_BATCH = 2


@dataclass(frozen=True)
class MemoryFit:
    linear: float  # bytes per token
    quadratic: float  # bytes per token squared

    def bytes_per_sequence(self, tokens: int) -> float:
        return self.linear * tokens + self.quadratic * tokens * tokens


def _cpu_peak(run: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        result = run()
    del result
    allocations = [e for e in recorded.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(allocations, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def peak_bytes(device, run: Callable[[], object]) -> int:
    """Peak memory that `run()` allocates on `device` beyond what was in use before."""
    import torch

    device = torch.device(device)
    gc.collect()
    if device.type != "cuda":
        return _cpu_peak(run)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak


def random_batch(backend, sequences: int, tokens: int) -> list[str]:
    """Random sequences of about `tokens` tokens each, as the backend's tokenizer counts them
    (a byte-pair tokenizer packs several letters into one token)."""
    import random

    rng = random.Random(tokens)
    letters = sorted(backend.alphabet)
    extra = backend.extra_tokens
    residues = max(1, tokens - extra)
    counted = backend.token_counts(["".join(rng.choices(letters, k=residues))])[0]
    if counted - extra > 0 and counted != tokens:
        residues = max(1, round(residues * (tokens - extra) / (counted - extra)))
    return ["".join(rng.choices(letters, k=residues)) for _ in range(sequences)]


def measure_sequence_bytes(
    backend, layers: list[int], tokens: int, sequences: int, **outputs
) -> float:
    """Measured peak bytes per sequence of a forward batch `sequences` x `tokens`; `outputs`:
    include and residue_dtype, as the batch loop passes them."""
    from seqembed.compute.batch_loop import forward_batch

    prepared = backend.prepare(random_batch(backend, sequences, tokens))
    run = lambda: forward_batch(backend, prepared, layers, **outputs)  # noqa: E731
    return peak_bytes(backend.device, run) / sequences


def fit_memory(backend, layers: list[int], lengths=PROBE_LENGTHS, **outputs) -> MemoryFit:
    """The per-sequence cost of `backend`'s forward pass, from probes at two lengths (after one
    warm-up pass: the first call allocates workspaces that stay). `outputs`: include and
    residue_dtype (per-residue rows are converted on the device before they are copied)."""
    backend.forward(backend.prepare(random_batch(backend, 1, lengths[0])), layers)
    short, long = lengths
    per_short = measure_sequence_bytes(backend, layers, short, PROBE_BATCH, **outputs)
    per_long = measure_sequence_bytes(backend, layers, long, PROBE_BATCH, **outputs)
    quadratic = max(0.0, (per_long / long - per_short / short) / (long - short))
    linear = max(per_short / short - quadratic * short, 1.0)
    return MemoryFit(linear, quadratic)
