"""The shards of one file joined into its one output, in input order, in the format a whole
file's job writes (seqembed.compute.writers): whoever reads `embeddings/` cannot tell.

HDF5 is copied dataset by dataset in blocks of rows, so memory stays bounded however large
the file. A `.pt` is one pickled dict: the shards are loaded memory-mapped, so their
per-residue rows are read from the page cache as torch.save writes them, and only the
concatenated pooled vectors are built in memory, as a whole file's job builds them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from seqembed.output import flush_to_disk, output_error, temporary_path, write_temporary

#: bytes of one dataset copied at a time
BLOCK_BYTES = 64 << 20
#: the whole content of a shard that holds no record (past the first): written without a
#: model, skipped by the gather. The first shard is always computed: it gives the layers and
#: the width an output of nothing still has.
EMPTY_SHARD = b"seqembed: a shard without records\n"


def write_empty_shard(output: str) -> Path:
    return write_temporary(output, lambda stream: stream.write(EMPTY_SHARD))


def _holds_records(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(EMPTY_SHARD) + 1) != EMPTY_SHARD


def _merged(parts: list):
    """One value from the shards' values of one key: lists and tensors are joined, dicts
    merged key by key, settings (the same in every shard) taken from the first."""
    import torch

    first = parts[0]
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _merged([part[key] for part in parts]) for key in first}
    return first


#: where each layout keeps the ids
ID_KEYS = ("ids", "proteins", "nucleotide")


def _residue_bytes(payload: dict) -> int:
    rows = payload.get("representations", {})
    return sum(t.numel() * t.element_size() for by_layer in rows.values() for t in by_layer)


def gather_pt(shards: list[str], output: str, name: str, source: str) -> tuple[Path, list[str]]:
    import torch

    from seqembed import faults
    from seqembed.compute.writers import PT_RESIDUE_LIMIT_BYTES, too_large

    loaded = [torch.load(path, mmap=True, weights_only=True) for path in shards]
    payload = _merged(loaded)
    # each shard was under the limit; the file's one output must be too
    limit = faults.pt_limit(PT_RESIDUE_LIMIT_BYTES, name)
    if (size := _residue_bytes(payload)) > limit:
        raise too_large(source, size, limit)
    ids = next(payload[key] for key in ID_KEYS if key in payload)
    return write_temporary(output, lambda stream: torch.save(payload, stream)), ids


def _copy_rows(source, target, start: int) -> None:
    rows = source.shape[0]
    row_bytes = source.dtype.itemsize * math.prod(source.shape[1:])
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    for first in range(0, rows, step):
        last = min(rows, first + step)
        target[start + first : start + last] = source[first:last]


def gather_h5(shards: list[str], output: str, name: str, source: str) -> tuple[Path, list[str]]:
    import h5py

    temporary = temporary_path(output)
    opened = []
    try:
        for path in shards:
            opened.append(h5py.File(path, "r", locking=False))
        first = opened[0]
        with h5py.File(temporary, "w", locking=False) as joined:
            joined.attrs.update(dict(first.attrs))
            ids = [i for part in opened for i in part["ids"].asstr()[()]]
            joined.create_dataset("ids", data=ids, dtype=h5py.string_dtype("utf-8"))
            if "offsets" in first:
                offsets = [0]
                for part in opened:
                    base = offsets[-1]
                    offsets.extend(base + int(value) for value in part["offsets"][1:])
                joined.create_dataset("offsets", data=offsets, dtype="int64")
            for kind in ("mean", "bos", "per_tok"):
                for layer in first.get(kind, {}):
                    key = f"{kind}/{layer}"
                    rows = sum(part[key].shape[0] for part in opened)
                    shape = (rows, *first[key].shape[1:])
                    target = joined.create_dataset(key, shape=shape, dtype=first[key].dtype)
                    start = 0
                    for part in opened:
                        _copy_rows(part[key], target, start)
                        start += part[key].shape[0]
        flush_to_disk(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        for part in opened:
            part.close()
    return temporary, ids


def gather(
    shards: list[str], output: str, output_format: str, *, name: str = "", source: str = ""
) -> tuple[Path, list[str]]:
    """The joined output under a temporary name beside `output`, for the job to commit, and
    the file's ids; OutputError when it cannot be written, OutputTooLarge for a .pt whose
    per-residue rows together are over the limit."""
    join = gather_h5 if output_format == "h5" else gather_pt
    parts = [os.fspath(path) for path in shards]
    try:
        parts = [part for index, part in enumerate(parts) if index == 0 or _holds_records(part)]
        return join(parts, output, name, source or output)
    except OSError as error:
        raise output_error(output, error) from None
