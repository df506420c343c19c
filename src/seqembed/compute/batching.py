"""Length-sorted batching under a token budget.

Sorting by length keeps padding low; the budget is in padded tokens (sequences x longest),
and with `toks_per_batch: auto` it shrinks as sequences get longer, because attention memory
grows with length squared: a budget that is safe for 100-residue reads would not be for a
1,000-residue protein.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: On the CPU larger batches only cost cache misses: with the demo model 1,024 tokens ran 1.6x
#: faster than fair-esm's default of 4,096 (benchmarks/ has the figures).
CPU_TOKS_PER_BATCH = 1024
#: share of the free device memory (after the model is loaded) that batches may use: the rest
#: absorbs the allocator's fragmentation, the output copies and the model's error; an
#: underestimate costs one out-of-memory back-off, not the file.
USABLE_MEMORY_SHARE = 0.6


@dataclass(frozen=True)
class Batch:
    indices: list[int]  # positions in the input file
    padded_length: int  # tokens per sequence in this batch, BOS/EOS included

    @property
    def computed_tokens(self) -> int:
        return len(self.indices) * self.padded_length


@dataclass(frozen=True)
class MemoryModel:
    """Peak activation bytes of one inference forward pass, per sequence of T tokens.

    Live at the peak of one transformer layer: the residual stream, q/k/v, the attention output
    and the 4x feed-forward expansion with its activation temporaries (about 16 x T x dim),
    per head the T x T scores in the model's precision, fair-esm's softmax in fp32 and its
    cast back (3 x bytes + 4 per entry), the requested representations kept until the end, and
    the logits.
    """

    embed_dim: int
    attention_heads: int
    kept_layers: int
    bytes_per_value: int
    vocabulary: int = 33

    def bytes_per_sequence(self, tokens: int) -> int:
        linear = tokens * (self.embed_dim * (16 + self.kept_layers) + self.vocabulary)
        attention = self.attention_heads * tokens * tokens * (3 * self.bytes_per_value + 4)
        return linear * self.bytes_per_value + attention


def memory_budget(free_bytes: int, memory: MemoryModel) -> Callable[[int], int]:
    """Token budget for a batch whose sequences are `tokens` long, from free device memory."""
    usable = int(free_bytes * USABLE_MEMORY_SHARE)

    def budget(tokens: int) -> int:
        return max(1, usable // memory.bytes_per_sequence(tokens)) * tokens

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
