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
    """Read every record, upper-cased, with a trailing stop `*` removed (translated reads end
    in one). Anything else outside `alphabet` is an InputError naming file, line and record,
    raised before any model is loaded."""
    allowed = frozenset(alphabet)
    ids: list[str] = []
    sequences: list[str] = []
    chunks: list[str] = []
    header_line = 0

    def finish() -> None:
        sequence = "".join(chunks).upper()
        if sequence.endswith("*"):
            sequence = sequence[:-1]
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
                line = line.strip()
                if line.startswith(">"):
                    if ids:
                        finish()
                    ids.append(line[1:].split(maxsplit=1)[0] if line[1:].strip() else "")
                    header_line = number
                    chunks = []
                elif line:
                    if not ids:
                        raise InputError(
                            f"{path}: line {number}: sequence data before any '>' header"
                        )
                    chunks.append(line)
        if ids:
            finish()
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a text FASTA file ({error.reason})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    return FastaRecords(ids, sequences)
