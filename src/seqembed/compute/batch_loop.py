"""The batch loop of one file, with out-of-memory back-off.

An out-of-memory error halves the batch that hit it and caps the budget for the rest of the
file at half that batch: memory that was short once stays short (other processes, fragmented
allocator), and retrying full-size batches would fail again and again. Only a single sequence
that does not fit alone fails the file.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from seqembed import faults
from seqembed.compute.batching import Batch, make_batches
from seqembed.fasta import FastaRecords


class SequenceTooLarge(Exception):
    """Out of memory with a batch of one sequence: the file cannot be done on this device."""


@dataclass
class EmbedResult:
    pooled: dict  # layer -> float32 tensor [n_sequences, dim], input order
    batches: int  # batches that completed
    computed_tokens: int  # padded tokens of the batches that completed
    oom_backoffs: int
    unique_sequences: int  # what the model saw: identical sequences are embedded once
    real_tokens: int  # tokens of the unique sequences, BOS/EOS included


def first_occurrences(sequences: list[str], truncation: int) -> tuple[list[int], list[int]]:
    """Indices of the first copy of each distinct sequence (as the model sees it: cut at
    `truncation`), and for every position the index of its first copy. Six-frame translations
    and redundant reads repeat sequences; each is computed once and copied."""
    first_of: dict[str, int] = {}
    source = [
        first_of.setdefault(sequence[:truncation], index)
        for index, sequence in enumerate(sequences)
    ]
    return sorted(first_of.values()), source


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def _free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()


def embed_all(
    backend,
    records: FastaRecords,
    layers: list[int],
    budget: Callable[[int], int],
    *,
    truncation: int,
    progress: Callable[[str], None] = lambda message: None,
    advanced: Callable[[int], None] = lambda sequences_done: None,
) -> EmbedResult:
    """`progress` gets a line per batch (verbose output); `advanced` the sequences of the
    file done so far, copies of identical sequences included."""
    import torch

    lengths = [len(sequence) for sequence in records.sequences]
    tokens_of = [min(n, truncation) + backend.extra_tokens for n in lengths]
    unique, source = first_occurrences(records.sequences, truncation)
    copies = Counter(source)
    sequences_done = 0

    def batches_of(indices: list[int], limit: Callable[[int], int]) -> list[Batch]:
        local = make_batches(
            [lengths[i] for i in indices],
            limit,
            extra_tokens=backend.extra_tokens,
            truncation=truncation,
        )
        return [Batch([indices[i] for i in b.indices], b.padded_length) for b in local]

    pending = deque(batches_of(unique, budget))
    pooled = {layer: torch.zeros(len(lengths), backend.embed_dim) for layer in layers}
    result = EmbedResult(
        pooled,
        batches=0,
        computed_tokens=0,
        oom_backoffs=0,
        unique_sequences=len(unique),
        real_tokens=sum(tokens_of[i] for i in unique),
    )
    while pending:
        batch = pending.popleft()
        embedded = None
        try:
            faults.maybe_raise_oom(batch.computed_tokens)
            embedded = backend.embed([records.sequences[i] for i in batch.indices], layers)
            faults.maybe_slow_batch()
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
        if embedded is None:
            # out of memory; outside the except block, whose traceback held the batch's
            # tensors, so the cache can really be emptied
            _free_memory(getattr(backend, "device", None))
            if len(batch.indices) == 1:
                index = batch.indices[0]
                raise SequenceTooLarge(
                    f"sequence '{records.ids[index]}' ({lengths[index]} residues, "
                    f"{tokens_of[index]} tokens) does not fit in memory even alone"
                )
            result.oom_backoffs += 1
            cap = batch.computed_tokens // 2
            remaining = batch.indices + [i for b in pending for i in b.indices]

            def limit(tokens: int, capped: int = cap) -> int:
                return min(budget(tokens), capped)

            pending = deque(batches_of(remaining, limit))
            progress(
                f"out of memory with {len(batch.indices)} sequences x "
                f"{batch.padded_length} tokens: batches capped at {cap} tokens"
            )
            continue
        index = torch.tensor(batch.indices)
        for layer in layers:
            pooled[layer][index] = embedded[layer]
        result.batches += 1
        result.computed_tokens += batch.computed_tokens
        sequences_done += sum(copies[i] for i in batch.indices)
        advanced(sequences_done)
        progress(
            f"batch {result.batches}: {len(batch.indices)} sequences x {batch.padded_length} "
            f"tokens, {len(pending)} batches left"
        )
    if len(unique) < len(lengths):
        copies = torch.tensor(source)
        for layer in layers:
            pooled[layer] = pooled[layer][copies]
    return result
