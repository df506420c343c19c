"""The batch loop of one file, with out-of-memory back-off.

An out-of-memory error halves the batch that hit it and caps the budget for the rest of the
file at half that batch: memory that was short once stays short (other processes, fragmented
allocator), and retrying full-size batches would fail again and again. Only a single sequence
that does not fit alone fails the file.

Feeding a GPU: the next batch's tokens are built (and pinned) in a second thread while the
device computes the current one, copied without blocking, and the pooled vectors stay on the
device until the file is done, so the host and the device meet once per batch, not per layer.
Per-residue rows are the exception: they are too many to keep, and go to the host (and on to
the output file) batch by batch.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from seqembed import faults
from seqembed.compute.batching import Batch, make_batches
from seqembed.errors import DeviceError, SequenceTooLarge
from seqembed.fasta import FastaRecords

__all__ = ["EmbedResult", "SequenceTooLarge", "embed_all", "is_out_of_memory"]

#: pooled vectors are kept on the device up to this size, else gathered on the host per batch
DEVICE_GATHER_BYTES = 1 << 30
#: words of the errors a CUDA device raises when it is left unusable
DEVICE_FAILURE_WORDS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error")


#: a batch's per-residue rows on the host: for each row the input positions it stands for
#: (copies of one sequence included), and layer -> [rows, longest, dim]
ResidueSink = Callable[[list[list[int]], dict], None]


@dataclass
class EmbedResult:
    pooled: dict  # kind (mean, bos) -> layer -> float32 [n_sequences, dim] on the CPU, in order
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


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, and the plain RuntimeErrors some CUDA paths raise instead
    ("CUDA out of memory", cuBLAS failing to allocate its workspace)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "ALLOC_FAILED" in text
    )


def device_failure(error: BaseException) -> DeviceError | None:
    """A CUDA error other than out-of-memory leaves the device (and the process's context on
    it) unusable: the worker must end and the file go to another device."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", ())
    text = " ".join(str(error).split())
    if isinstance(error, accelerator_error) or (
        isinstance(error, RuntimeError) and any(word in text for word in DEVICE_FAILURE_WORDS)
    ):
        return DeviceError(f"device failed: {text[:300]}")
    return None


def forward_batch(backend, prepared, layers: list[int], include=("mean",), residue_dtype=None):
    """The forward pass as the loop runs it: per-residue rows converted on the device and
    copied to the host, inside the out-of-memory back-off and inside the memory probes
    (seqembed.compute.memory), since the conversion allocates on the device too."""
    import torch

    embedded = backend.forward(prepared, layers, include)
    if "per_tok" in include:
        dtype = residue_dtype or torch.float32
        embedded["per_tok"] = {
            layer: values.to(dtype).cpu() for layer, values in embedded["per_tok"].items()
        }
    return embedded


_preparer: ThreadPoolExecutor | None = None


def _preparing_thread() -> ThreadPoolExecutor:
    """One thread for the life of the process: a worker serves thousands of files, and a new
    thread per file would cost the C allocator a new arena now and then."""
    global _preparer
    if _preparer is None:
        _preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqembed-prepare")
    return _preparer


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
    check_stop: Callable[[], None] = lambda: None,
    name: str | None = None,
    include=("mean",),
    residues: ResidueSink | None = None,
    residue_dtype=None,
) -> EmbedResult:
    """`progress` gets a line per batch (verbose output); `advanced` the sequences of the
    file done so far, copies of identical sequences included; `check_stop` is called after
    every batch and raises to stop the file (the run was aborted, the job is gone).
    `include` as fair-esm names it (mean, bos, per_tok); per_tok rows go to `residues` as
    `residue_dtype` (float32 by default), converted on the device before the copy."""
    import torch

    lengths = [len(sequence) for sequence in records.sequences]
    # what each sequence costs the model: residues plus BOS/EOS, or a tokenizer's tokens
    tokens_of = backend.token_counts(records.sequences)
    unique, source = first_occurrences(records.sequences, truncation)
    copies = Counter(source)
    positions_of: dict[int, list[int]] = {}
    if "per_tok" in include:
        for position, first in enumerate(source):
            positions_of.setdefault(first, []).append(position)
    kinds = [kind for kind in ("mean", "bos") if kind in include]
    sequences_done = 0

    def batches_of(indices: list[int], limit: Callable[[int], int]) -> list[Batch]:
        # of sequences cut to the same tokens, the longest comes first (as before tokens
        # were counted): a batch that cannot fit names the longest sequence
        indices = sorted(indices, key=lambda i: (-tokens_of[i], -lengths[i], i))
        local = make_batches(
            [tokens_of[i] for i in indices], limit, extra_tokens=0, truncation=sys.maxsize
        )
        return [Batch([indices[i] for i in b.indices], b.padded_length) for b in local]

    device = getattr(backend, "device", torch.device("cpu"))
    gathered_bytes = len(lengths) * backend.embed_dim * 4 * len(layers) * len(kinds)
    gather_device = device if gathered_bytes <= DEVICE_GATHER_BYTES else torch.device("cpu")
    pooled = {
        kind: {
            layer: torch.zeros(len(lengths), backend.embed_dim, device=gather_device)
            for layer in layers
        }
        for kind in kinds
    }
    result = EmbedResult(
        pooled,
        batches=0,
        computed_tokens=0,
        oom_backoffs=0,
        unique_sequences=len(unique),
        real_tokens=sum(tokens_of[i] for i in unique),
    )

    def prepare(batch: Batch):
        return backend.prepare([records.sequences[i] for i in batch.indices])

    pending = deque(batches_of(unique, budget))
    helper = _preparing_thread()
    upcoming = helper.submit(prepare, pending[0]) if pending else None
    try:
        while pending:
            batch = pending.popleft()
            prepared = upcoming.result()
            upcoming = helper.submit(prepare, pending[0]) if pending else None
            embedded = None
            try:
                faults.maybe_raise_oom(batch.computed_tokens, name)
                faults.maybe_raise_device_error(name)
                embedded = forward_batch(backend, prepared, layers, include, residue_dtype)
                faults.maybe_slow_batch(name)
            except Exception as error:
                if not is_out_of_memory(error):
                    failure = device_failure(error)
                    if failure is None:
                        raise
                    raise failure from error
            del prepared
            if embedded is None:
                # out of memory; outside the except block, whose traceback held the batch's
                # tensors, so the cache can really be emptied
                _free_memory(device)
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
                # the batch prepared ahead belongs to the old plan
                upcoming = helper.submit(prepare, pending[0]) if pending else None
                progress(
                    f"out of memory with {len(batch.indices)} sequences x "
                    f"{batch.padded_length} tokens: batches capped at {cap} tokens"
                )
                continue
            index = torch.tensor(batch.indices, device=gather_device)
            for kind in kinds:
                for layer in layers:
                    pooled[kind][layer].index_copy_(
                        0, index, embedded[kind][layer].to(gather_device)
                    )
            if "per_tok" in include and residues is not None:
                residues([positions_of[i] for i in batch.indices], embedded["per_tok"])
            del embedded
            result.batches += 1
            result.computed_tokens += batch.computed_tokens
            sequences_done += sum(copies[i] for i in batch.indices)
            advanced(sequences_done)
            progress(
                f"batch {result.batches}: {len(batch.indices)} sequences x "
                f"{batch.padded_length} tokens, {len(pending)} batches left"
            )
            check_stop()
    finally:
        if upcoming is not None:
            upcoming.cancel()
    for by_layer in pooled.values():
        for layer in layers:
            values = by_layer[layer].cpu()  # one copy back per file
            if len(unique) < len(lengths):
                values = values[torch.tensor(source)]
            by_layer[layer] = values
    return result
