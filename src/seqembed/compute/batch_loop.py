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
from seqembed.compute.device_errors import device_failure, free_memory, is_out_of_memory
from seqembed.compute.windows import Stitching, Window, windows_of
from seqembed.errors import SequenceTooLarge
from seqembed.fasta import FastaRecords

__all__ = ["EmbedResult", "SequenceTooLarge", "embed_all"]

#: pooled vectors are kept on the device up to this size, else gathered on the host per batch
DEVICE_GATHER_BYTES = 1 << 30


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
    real_tokens: int  # tokens of the unique sequences (or their windows), BOS/EOS included
    windows: int = 0  # windows computed for the unique sequences longer than the window


def first_occurrences(
    sequences: list[str], truncation: int, whole: bool = False
) -> tuple[list[int], list[int]]:
    """Indices of the first copy of each distinct sequence (as the model sees it: cut at
    `truncation`, or whole when `whole`: long sequences in windows), and for every position
    the index of its first copy. Six-frame translations and redundant reads repeat
    sequences; each is computed once and copied."""
    first_of: dict[str, int] = {}
    source = [
        first_of.setdefault(sequence if whole else sequence[:truncation], index)
        for index, sequence in enumerate(sequences)
    ]
    return sorted(first_of.values()), source


def forward_batch(
    backend, prepared, layers: list[int], include=("mean",), residue_dtype=None, on_host=True
):
    """The forward pass as the loop runs it: per-residue rows converted on the device and
    copied to the host, inside the out-of-memory back-off and inside the memory probes
    (seqembed.compute.memory), since the conversion allocates on the device too. Windows'
    rows stay on the device (`on_host` False): they are stitched there."""
    import torch

    embedded = backend.forward(prepared, layers, include)
    if "per_tok" in include and on_host:
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
    windows: tuple[int, int] | None = None,
) -> EmbedResult:
    """`progress` gets a line per batch (verbose output); `advanced` the sequences of the
    file done so far, copies of identical sequences included; `check_stop` is called after
    every batch and raises to stop the file (the run was aborted, the job is gone).
    `include` as fair-esm names it (mean, bos, per_tok); per_tok rows go to `residues` as
    `residue_dtype` (float32 by default), converted on the device before the copy.
    `windows` (width, overlap): sequences longer than `width` residues are computed as
    windows and stitched (seqembed.compute.windows), not cut at `truncation`."""
    import torch

    lengths = [len(sequence) for sequence in records.sequences]
    # what each sequence costs the model: residues plus BOS/EOS, or a tokenizer's tokens
    tokens_of = backend.token_counts(records.sequences)
    unique, source = first_occurrences(records.sequences, truncation, whole=windows is not None)
    copies = Counter(source)
    positions_of: dict[int, list[int]] = {}
    if "per_tok" in include:
        for position, first in enumerate(source):
            positions_of.setdefault(first, []).append(position)
    kinds = [kind for kind in ("mean", "bos") if kind in include]
    sequences_done = 0

    # what the model computes: a unit is a sequence, or one window of a long one
    units: list[tuple[int, Window | None]] = []
    # BOS alone: a long sequence's first window is all it takes
    first_only = kinds == ["bos"] and "per_tok" not in include
    for index in unique:
        if windows is not None and lengths[index] > windows[0]:
            own = windows_of(index, lengths[index], *windows)
            units += [(index, window) for window in (own[:1] if first_only else own)]
        else:
            units.append((index, None))
    window_units = [u for u, (_, window) in enumerate(units) if window is not None]
    window_tokens = backend.token_counts(["A" * windows[0]])[0] if window_units else 0
    unit_tokens = [tokens_of[i] if w is None else window_tokens for i, w in units]

    def text(unit: int) -> str:
        index, window = units[unit]
        sequence = records.sequences[index]
        return sequence if window is None else sequence[window.start : window.start + window.width]

    def batches_of(indices: list[int], limit: Callable[[int], int]) -> list[Batch]:
        # windows in batches of their own (their rows are stitched, not pooled), first: they
        # are the longest. Of sequences cut to the same tokens, the longest comes first (as
        # before tokens were counted): a batch that cannot fit names the longest sequence
        batches = []
        for windowed in (True, False):
            part = [u for u in indices if (units[u][1] is not None) == windowed]
            part.sort(key=lambda u: (-unit_tokens[u], -lengths[units[u][0]], u))
            local = make_batches(
                [unit_tokens[u] for u in part], limit, extra_tokens=0, truncation=sys.maxsize
            )
            batches += [Batch([part[i] for i in b.indices], b.padded_length) for b in local]
        return batches

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
        real_tokens=sum(unit_tokens),
        windows=len(window_units),
    )
    keep_rows = "per_tok" in include and residues is not None
    stitching = Stitching(
        [units[u][1] for u in window_units],
        lengths,
        backend.embed_dim,
        (residue_dtype or torch.float32) if keep_rows else None,
        gather_device,
    )
    window_include = ("per_tok", *(kind for kind in kinds if kind == "bos"))

    def stitch(batch: Batch, embedded: dict) -> int:
        """Each window's own rows into its sequence; a sequence whose last window this was is
        finished (mean, rows to the writer). Returns the sequences finished, with copies."""
        finished = 0
        for row, unit in enumerate(batch.indices):
            index, window = units[unit]
            if window.first and "bos" in kinds:
                for layer in layers:
                    pooled["bos"][layer][index] = embedded["bos"][layer][row].to(gather_device)
            rows = {layer: embedded["per_tok"][layer][row] for layer in layers}
            if not stitching.take(window, rows):
                continue
            means, kept = stitching.finish(index)
            if "mean" in kinds:
                for layer in layers:
                    pooled["mean"][layer][index] = means[layer]
            if keep_rows:
                residues([positions_of[index]], {layer: kept[layer][None] for layer in layers})
            finished += copies[index]
        return finished

    def prepare(batch: Batch):
        return backend.prepare([text(unit) for unit in batch.indices])

    pending = deque(batches_of(list(range(len(units))), budget))
    helper = _preparing_thread()
    upcoming = helper.submit(prepare, pending[0]) if pending else None
    try:
        while pending:
            batch = pending.popleft()
            prepared = upcoming.result()
            upcoming = helper.submit(prepare, pending[0]) if pending else None
            windowed = units[batch.indices[0]][1] is not None
            embedded = None
            try:
                faults.maybe_raise_oom(batch.computed_tokens, name)
                faults.maybe_raise_device_error(name)
                embedded = forward_batch(
                    backend,
                    prepared,
                    layers,
                    window_include if windowed else include,
                    residue_dtype,
                    on_host=not windowed,
                )
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
                free_memory(device)
                if len(batch.indices) == 1:
                    index, window = units[batch.indices[0]]
                    alone = "alone" if window is None else f"alone, one window of {window.width}"
                    raise SequenceTooLarge(
                        f"sequence '{records.ids[index]}' ({lengths[index]} residues, "
                        f"{unit_tokens[batch.indices[0]]} tokens) does not fit in memory even "
                        + alone
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
            if windowed:
                sequences_done += stitch(batch, embedded)
            else:
                sequence_indices = [units[unit][0] for unit in batch.indices]
                index = torch.tensor(sequence_indices, device=gather_device)
                for kind in kinds:
                    for layer in layers:
                        pooled[kind][layer].index_copy_(
                            0, index, embedded[kind][layer].to(gather_device)
                        )
                if "per_tok" in include and residues is not None:
                    residues([positions_of[i] for i in sequence_indices], embedded["per_tok"])
                sequences_done += sum(copies[i] for i in sequence_indices)
            del embedded
            result.batches += 1
            result.computed_tokens += batch.computed_tokens
            advanced(sequences_done)
            progress(
                f"batch {result.batches}: {len(batch.indices)} "
                f"{'windows' if windowed else 'sequences'} x "
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
