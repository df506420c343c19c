"""Reading FASTA files: fast statistics for the plan, full records for the embed jobs.

Both readers are backend-agnostic: the allowed alphabet is handed in by the caller, so the
same code serves protein (ESM-2) and, later, DNA models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass


class InputError(Exception):
    """A problem with an input file; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class FastaStats:
    sequences: int
    residues: int
    longest: int
    bytes: int


@dataclass(frozen=True)
class FastaRecords:
    ids: list[str]
    sequences: list[str]


def fasta_stats(path: str | os.PathLike) -> FastaStats:
    """Count sequences and residues without building strings: the plan reads every input file
    in the Snakemake process, so this must stay cheap for thousands of files. Lenient on
    purpose: judging a file is the embed job's work, where a failure costs only that file."""
    sequences = residues = longest = current = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b">"):
                longest = max(longest, current)
                sequences += 1
                current = 0
            else:
                length = len(line.strip())
                current += length
                residues += length
    return FastaStats(sequences, residues, max(longest, current), os.path.getsize(path))


def read_fasta(path: str | os.PathLike, alphabet: Iterable[str]) -> FastaRecords:
    """Read every record, checked before any model is loaded.

    Lenient, because real files look like this: lower case is upper-cased, a trailing stop
    `*` (translated reads end in one) is dropped, blank lines are skipped, duplicate ids are
    kept (outputs are by position), a file with no sequences at all is valid and empty.
    Strict, because a silent wrong embedding is worse than a failed file: text before the
    first header, a header without a sequence or without an id, a character outside
    `alphabet` (an internal `*` included: split reads at stops first), binary content.
    Each is an InputError naming the file, the line and the record.
    """
    allowed = frozenset(alphabet)
    ids: list[str] = []
    sequences: list[str] = []
    chunks: list[str] = []
    header_line = 0

    def finish() -> None:
        sequence = "".join(chunks).upper()
        if sequence.endswith("*"):
            sequence = sequence[:-1]
        if not sequence:
            raise InputError(f"{path}: line {header_line}: record '{ids[-1]}' has no sequence")
        bad = set(sequence) - allowed
        if bad:
            shown = "".join(sorted(bad))
            raise InputError(
                f"{path}: line {header_line}: record '{ids[-1]}' has characters outside the "
                f"alphabet: {shown!r}"
            )
        sequences.append(sequence)

    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if "\x00" in line:
                    raise InputError(f"{path}: line {number}: binary content, not a FASTA file")
                line = line.strip()
                if line.startswith(">"):
                    if ids:
                        finish()
                    if not line[1:].strip():
                        raise InputError(f"{path}: line {number}: header without an id")
                    ids.append(line[1:].split(maxsplit=1)[0])
                    header_line = number
                    chunks = []
                elif line:
                    if not ids:
                        raise InputError(
                            f"{path}: line {number}: not FASTA: text before the first '>' header"
                        )
                    chunks.append(line)
        if ids:
            finish()
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: binary content, not a FASTA file ({error.reason})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    return FastaRecords(ids, sequences)
