"""Proteins longer than the model's window, embedded whole (`long_sequences: windows`).

A sequence of L residues longer than the window W (the truncation: 1,022 for ESM-2 unless
set lower) is computed as overlapping windows, each run as a sequence of its own (its own BOS
and EOS), and its outputs are made from them by one rule, so that anyone can reproduce the
numbers:
- windows of W residues, step S = W - overlap: starts 0, S, 2S, ... while start + W < L, and
  a last window that ends at the sequence's end (start L - W);
- residue i takes its row from the window in which it is farthest from that window's nearer
  edge (distance min(i - start, start + W - 1 - i)); on a tie, the earlier window;
- `mean` is the mean of those L rows; `bos` the first window's BOS row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    sequence: int  # the sequence's position in its file
    start: int  # its first residue
    width: int  # residues, the window size W
    owned: tuple[int, int]  # the residues [a, b) whose rows come from this window

    @property
    def first(self) -> bool:
        return self.start == 0


def window_starts(length: int, width: int, overlap: int) -> list[int]:
    """Where the windows of a sequence of `length` residues start (one window if it fits)."""
    if length <= width:
        return [0]
    step = width - overlap
    starts = list(range(0, length - width, step))
    return [*starts, length - width]


def owners(length: int, width: int, starts: list[int]) -> list[tuple[int, int]]:
    """For each window, the residues [a, b) it gives its rows to, by the rule above. The
    owners of consecutive residues never go back to an earlier window, so each range is
    contiguous (checked)."""
    owned = [[length, 0] for _ in starts]
    window = 0
    for residue in range(length):
        best, best_distance = None, -1
        for index in range(window, len(starts)):
            start = starts[index]
            if start > residue:
                break
            distance = min(residue - start, start + width - 1 - residue)
            if distance > best_distance:  # strictly: the earlier window keeps a tie
                best, best_distance = index, distance
        if best is None or best < window:
            raise AssertionError(f"residue {residue}: owners not contiguous")
        window = best
        owned[best][0] = min(owned[best][0], residue)
        owned[best][1] = residue + 1
    return [(a, b) if a < b else (0, 0) for a, b in owned]


def windows_of(sequence: int, length: int, width: int, overlap: int) -> list[Window]:
    """The windows of one sequence longer than `width`."""
    starts = window_starts(length, width, overlap)
    return [
        Window(sequence, start, width, owned)
        for start, owned in zip(starts, owners(length, width, starts), strict=True)
    ]


def window_count(length: int, width: int, overlap: int) -> int:
    return len(window_starts(length, width, overlap))


def computed_residues(length: int, width: int, overlap: int) -> int:
    """What the model computes of a sequence: its residues, or its windows' (overlaps
    included) when it is longer than the window."""
    return length if length <= width else window_count(length, width, overlap) * width


class Stitching:
    """A file's long sequences while their windows come in: per sequence the sum of the rows
    its windows own, per layer (for the mean), and the rows themselves when per-residue rows
    are written (`rows_dtype`; None: they are not)."""

    def __init__(self, windows: list[Window], lengths: list[int], dim: int, rows_dtype, device):
        self.left = Counter(window.sequence for window in windows)
        self.lengths, self.dim, self.rows_dtype, self.device = lengths, dim, rows_dtype, device
        self.sums: dict[int, dict] = {}
        self.rows: dict[int, dict] = {}

    def take(self, window: Window, rows_by_layer: dict) -> bool:
        """One window's rows (layer -> [width, D], on any device); True when it was its
        sequence's last."""
        import torch

        first, end = window.owned
        index = window.sequence
        sums = self.sums.setdefault(index, {})
        for layer, rows in rows_by_layer.items():
            own = rows[first - window.start : end - window.start]
            total = own.float().sum(0).to(self.device)
            sums[layer] = sums[layer] + total if layer in sums else total
            if self.rows_dtype is not None:
                kept = self.rows.setdefault(index, {})
                if layer not in kept:
                    kept[layer] = torch.empty(self.lengths[index], self.dim, dtype=self.rows_dtype)
                kept[layer][first:end] = own.to(self.rows_dtype).cpu()
        self.left[index] -= 1
        return not self.left[index]

    def finish(self, index: int) -> tuple[dict, dict]:
        """The sequence's mean per layer (of all its residues' rows) and its rows."""
        sums = self.sums.pop(index)
        means = {layer: total / self.lengths[index] for layer, total in sums.items()}
        return means, self.rows.pop(index, {})
