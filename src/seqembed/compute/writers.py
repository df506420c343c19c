"""One file's output, written under a temporary name that the job renames: `.pt` (one
torch.save dict, built in memory) or `.h5` (HDF5, per-residue rows written batch by batch as
they are computed, so memory does not grow with the file's residues).

Both take the same calls from the batch loop: `residues` for each batch's per-residue rows,
`finish` with the pooled vectors once the file is done, `discard` when it failed.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

from seqembed import faults
from seqembed.errors import OutputTooLarge
from seqembed.output import flush_to_disk, output_error, temporary_path, write_temporary

#: per-residue output a .pt file may hold: it is built whole in memory (by the worker, and
#: again by whoever loads it), where HDF5 streams it. 4 GiB is ~840,000 residues of ESM-2
#: 650M's last layer in float32, about 2,800 proteins of 300 residues.
PT_RESIDUE_LIMIT_BYTES = 4 << 30

DTYPES = {False: torch.float32, True: torch.float16}


def windowed(request: dict) -> bool:
    """Long sequences computed whole in windows (seqembed.compute.windows), not cut."""
    return request.get("long_sequences", "truncate") == "windows"


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def too_large(source: str, size: int, limit: int) -> OutputTooLarge:
    return OutputTooLarge(
        f"{source}: per-residue output of {_size(size)} is over the {_size(limit)} a .pt file "
        "may hold (it is built in memory); set output_format: h5, which writes it as it is "
        "computed"
    )


class OutputWriter:
    """What both formats share: the request's settings and the residue rows' dtype."""

    def __init__(self, request: dict, layers: list[int], embed_dim: int, meta: dict) -> None:
        self.path = Path(request["output"])
        self.ids = list(request["ids"])
        self.include = list(request.get("include", ["mean"]))
        self.half = set(request.get("store_float16", []))
        self.layout = request.get("output_layout", "default")
        self.layers = layers
        self.embed_dim = embed_dim
        self.meta = meta
        # the rows a sequence gets: its residues cut at the truncation, or all of them when
        # long sequences are computed in windows
        cut = sys.maxsize if windowed(request) else request["truncation"]
        self.lengths = [min(len(sequence), cut) for sequence in request["sequences"]]
        self.residue_dtype = DTYPES["per_tok" in self.half]
        self.temporary: Path | None = None

    def stored(self, kind: str, values: torch.Tensor) -> torch.Tensor:
        return values.to(DTYPES[kind in self.half])

    def residue_bytes(self) -> int:
        if "per_tok" not in self.include:
            return 0
        size = self.residue_dtype.itemsize
        return sum(self.lengths) * self.embed_dim * len(self.layers) * size

    def discard(self) -> None:
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)
            self.temporary = None


class PtWriter(OutputWriter):
    """fair-esm's names: `mean_representations` and `bos_representations` layer -> [N, D],
    `representations` layer -> one [L_i, D] tensor per sequence, in input order."""

    def __init__(self, request: dict, layers: list[int], embed_dim: int, meta: dict) -> None:
        super().__init__(request, layers, embed_dim, meta)
        limit = faults.pt_limit(PT_RESIDUE_LIMIT_BYTES, request["name"])
        # a shard's output joins its file's: judged by the file's, its own times the shards
        expected = self.residue_bytes() * request.get("shards", 1)
        if expected > limit:
            raise too_large(meta["source"], expected, limit)
        self.rows: dict[int, list] = {layer: [None] * len(self.ids) for layer in layers}
        try:
            # reserved before any batch: a folder that cannot take the output fails the
            # attempt in a second, not after the whole file computed
            self.temporary = temporary_path(self.path)
        except OSError as error:
            raise output_error(self.path, error) from None

    def residues(self, positions: list[list[int]], by_layer: dict) -> None:
        for layer, values in by_layer.items():
            for row, copies in enumerate(positions):
                # a copy: a view would keep the whole batch's storage alive and saved
                kept = values[row, : self.lengths[copies[0]]].clone()
                for position in copies:
                    self.rows[layer][position] = kept

    def payload(self, pooled: dict) -> dict:
        if self.layout == "virnucpro":
            return self.virnucpro(pooled)
        payload = {
            "ids": list(self.ids),
            "model": self.meta["model"],
            "truncation": self.meta["truncation"],
            "long_sequences": self.meta.get("long_sequences", "truncate"),
            "window_overlap": self.meta.get("window_overlap", 0),
        }
        names = {"mean": "mean_representations", "bos": "bos_representations"}
        for kind, by_layer in pooled.items():
            payload[names[kind]] = {
                layer: self.stored(kind, values) for layer, values in by_layer.items()
            }
        if "per_tok" in self.include:
            payload["representations"] = self.rows
        return payload

    def virnucpro(self, pooled: dict) -> dict:
        """What VirNucPro's merge step reads: for proteins (ESM-2) one tensor per protein; for
        nucleotides (DNABERT-S) a dict per sequence with a plain list of floats, as its own
        extraction saves them. It pairs the two by id and concatenates the vectors."""
        if len(self.layers) != 1:
            raise ValueError("output_layout virnucpro holds one layer; request exactly one")
        (matrix,) = pooled["mean"].values()
        if self.meta.get("molecule") == "dna":
            rows = matrix.tolist()
            return {
                "nucleotide": list(self.ids),
                "data": [
                    {"label": label, "mean_representation": row}
                    for label, row in zip(self.ids, rows, strict=True)
                ],
            }
        return {"proteins": list(self.ids), "data": list(matrix.unbind(0))}

    def finish(self, pooled: dict) -> Path:
        payload = self.payload(pooled)
        try:
            self.temporary = write_temporary(
                self.path, lambda stream: torch.save(payload, stream), reserved=self.temporary
            )
        except OSError as error:
            self.temporary = None  # write_temporary removed it
            raise output_error(self.path, error) from None
        return self.temporary


class H5Writer(OutputWriter):
    """`ids`; `mean/<layer>`, `bos/<layer>` [N, D]; `per_tok/<layer>` [residues, D] with
    `offsets` [N + 1] (sequence i's rows are offsets[i]:offsets[i+1]); the settings as
    attributes. Per-residue datasets are contiguous: written in place as batches come in any
    order, and readable with a memory map."""

    def __init__(self, request: dict, layers: list[int], embed_dim: int, meta: dict) -> None:
        super().__init__(request, layers, embed_dim, meta)
        import h5py

        self.offsets = offsets = [0, *itertools.accumulate(self.lengths)]
        try:
            self.temporary = temporary_path(self.path)
            # no HDF5 file locking: the temporary is this writer's alone, and some cluster
            # filesystems (NFS, Lustre without flock) refuse the lock
            self.file = h5py.File(self.temporary, "w", locking=False)
            self.file.create_dataset("ids", data=self.ids, dtype=h5py.string_dtype("utf-8"))
            for key, value in meta.items():
                if isinstance(value, str):  # a path with undecodable bytes stays readable
                    value = value.encode("utf-8", "backslashreplace").decode()
                self.file.attrs[key] = value
            self.file.attrs["layers"] = layers
            self.file.attrs["include"] = self.include
            if "per_tok" in self.include:
                self.file.create_dataset("offsets", data=offsets, dtype="int64")
                for layer in layers:
                    self.file.create_dataset(
                        f"per_tok/{layer}",
                        shape=(offsets[-1], embed_dim),
                        dtype=str(self.residue_dtype).removeprefix("torch."),
                    )
        except BaseException as error:
            self.discard()
            if isinstance(error, OSError):
                raise output_error(self.path, error) from None
            raise

    def residues(self, positions: list[list[int]], by_layer: dict) -> None:
        try:
            for layer, values in by_layer.items():
                dataset = self.file[f"per_tok/{layer}"]
                array = values.numpy()
                for row, copies in enumerate(positions):
                    length = self.lengths[copies[0]]
                    for position in copies:
                        start = self.offsets[position]
                        dataset[start : start + length] = array[row, :length]
        except OSError as error:
            raise output_error(self.path, error) from None

    def finish(self, pooled: dict) -> Path:
        try:
            for kind, by_layer in pooled.items():
                for layer, values in by_layer.items():
                    self.file.create_dataset(
                        f"{kind}/{layer}", data=self.stored(kind, values).numpy()
                    )
            self.file.close()
            flush_to_disk(self.temporary)
        except OSError as error:
            raise output_error(self.path, error) from None
        return self.temporary

    def discard(self) -> None:
        file = getattr(self, "file", None)
        if file is not None and file.id.valid:
            file.close()
        super().discard()


def open_writer(request: dict, layers: list[int], embed_dim: int, meta: dict) -> OutputWriter:
    """The writer for the request's output_format; a per-residue .pt file over the limit is
    refused here, before any computing."""
    kind = H5Writer if request.get("output_format", "pt") == "h5" else PtWriter
    return kind(request, layers, embed_dim, meta)


__all__ = ["PT_RESIDUE_LIMIT_BYTES", "H5Writer", "PtWriter", "open_writer"]
