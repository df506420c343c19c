"""Length-sorted batching under a token budget.

Sorting by length keeps padding low; the budget is in padded tokens (sequences x longest),
and with `toks_per_batch: auto` it follows the memory a sequence of that length was measured
to take on the device, so a budget that is safe for 100-residue reads is still safe for a
1,000-residue protein.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: On the CPU larger batches only cost cache misses: with the demo model 1,024 tokens ran 1.6x
#: faster than fair-esm's default of 4,096 (docs/benchmarks.md has the figures).
CPU_TOKS_PER_BATCH = 1024
#: in bf16 (or fp16) on the CPU, 512: 1.28x the residues/s of 1,024 for ESM-2 35M's shape and
#: 1.35x for 150M's (the activations of a batch stay in the caches; 256 is slower again)
CPU_HALF_TOKS_PER_BATCH = 512
#: share of the free device memory (after the model is loaded) that batches may use: the rest
#: absorbs the allocator's fragmentation and the other process's allocations; the per-token
#: cost is measured, not modelled, so no more margin is needed. An overestimate costs one
#: out-of-memory back-off, not the file.
USABLE_MEMORY_SHARE = 0.85


@dataclass(frozen=True)
class Batch:
    indices: list[int]  # positions in the input file
    padded_length: int  # tokens per sequence in this batch, BOS/EOS included

    @property
    def computed_tokens(self) -> int:
        return len(self.indices) * self.padded_length


def memory_budget(
    free_bytes: int, bytes_per_sequence: Callable[[int], float]
) -> Callable[[int], int]:
    """Token budget for a batch whose sequences are `tokens` long, from free device memory and
    the measured peak bytes of one sequence of that length (seqembed.compute.memory)."""
    usable = int(free_bytes * USABLE_MEMORY_SHARE)

    def budget(tokens: int) -> int:
        return max(1, int(usable // max(1.0, bytes_per_sequence(tokens)))) * tokens

    return budget


def fixed_budget(toks_per_batch: int) -> Callable[[int], int]:
    return lambda tokens: toks_per_batch


def make_batches(
    lengths: Sequence[int], budget: Callable[[int], int], *, extra_tokens: int, truncation: int
) -> list[Batch]:
    """Longest first, so a batch that does not fit shows up in the first seconds of a file,
    not after an hour. A sequence longer than the budget still gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[Batch] = []
    current: list[int] = []
    padded = 0
    limit = 0
    for index in order:
        tokens = min(lengths[index], truncation) + extra_tokens
        if current and (len(current) + 1) * padded > limit:
            batches.append(Batch(current, padded))
            current = []
        if not current:
            # sorted descending: the first sequence of a batch sets its padded length
            padded = tokens
            limit = budget(tokens)
        current.append(index)
    if current:
        batches.append(Batch(current, padded))
    return batches
