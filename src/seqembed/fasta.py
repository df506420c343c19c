"""Reading FASTA files: fast statistics for the plan, full records for the embed jobs.

Both readers are backend-agnostic: the allowed alphabet is handed in by the caller, so the
same code serves protein (ESM-2) and, later, DNA models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from seqembed.compression import CorruptInput, lines, lines_from
from seqembed.errors import InputError

__all__ = ["FastaRecords", "FastaStats", "InputError", "fasta_stats", "read_fasta"]


#: the UTF-8 byte-order mark some Windows editors write at the start of a file
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class FastaStats:
    sequences: int
    residues: int
    longest: int
    bytes: int
    computed: int = 0  # residues the model computes (`cost` of each sequence), else residues


@dataclass(frozen=True)
class FastaRecords:
    ids: list[str]
    sequences: list[str]


def fasta_stats(path: str | os.PathLike, cost=None) -> FastaStats:
    """Count sequences and residues without building strings: the plan reads every input file
    in the Snakemake process, so this must stay cheap for thousands of files. Lenient on
    purpose: judging a file is the embed job's work, where a failure costs only that file (a
    corrupt or unreadable file counts what could be read). `residues` counts raw letters;
    `longest` the longest sequence as the jobs see it (a trailing stop dropped); `bytes` is
    the size on disk;
    `cost` (a sequence's length -> residues computed, long sequences' windows) gives
    `computed`."""
    sequences = residues = longest = current = computed = 0
    stop = False  # the sequence so far ends in a `*`: the jobs drop a trailing one
    try:
        for line in lines(path):
            if line.startswith(BOM):
                line = line[len(BOM) :]
            if line.startswith(b">"):
                longest = max(longest, current - stop)
                if sequences and cost:
                    computed += cost(current - stop)
                sequences += 1
                current, stop = 0, False
            elif stripped := line.strip():
                current += len(stripped)
                residues += len(stripped)
                stop = stripped.endswith(b"*")
    except (OSError, CorruptInput):
        pass
    if sequences and cost:
        computed += cost(current - stop)
    return FastaStats(
        sequences,
        residues,
        max(longest, current - stop),
        os.path.getsize(path),
        computed if cost else residues,
    )


def _header_text(raw: bytes) -> str:
    """Headers are free text in any encoding (Latin-1 from old tools): only the first word
    is used, so an undecodable byte never fails the file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _section_lines(path, section: tuple[int, int | None]):
    """(number, line) of the records whose header line begins in the content's bytes
    [start, end) (seqembed.shards); from the first line when start is 0, so that text before
    the first header is the first shard's to report."""
    start, end = section
    if section == (0, None):  # the whole file, as fast as it reads
        yield from enumerate(lines(path), start=1)
        return
    inside = start == 0
    for number, offset, raw in lines_from(path, start):
        if raw.lstrip().startswith(b">"):
            if end is not None and offset >= end:
                return
            inside = True
        if inside:
            yield number, raw


def read_fasta(
    path: str | os.PathLike,
    alphabet: Iterable[str],
    trailing_stop: bool = True,
    section: tuple[int, int | None] = (0, None),
) -> FastaRecords:
    """Read every record, checked before any model is loaded.

    Lenient, because real files look like this: lower case is upper-cased, a trailing stop
    `*` (translated reads end in one) is dropped, blank lines are skipped, duplicate ids are
    kept (outputs are by position), a UTF-8 byte-order mark is skipped, headers may hold any
    encoding, a file with no sequences at all is valid and empty.
    Strict, because a silent wrong embedding is worse than a failed file: text before the
    first header, a header without a sequence or without an id, a character outside
    `alphabet` (an internal `*` included: split reads at stops first), binary content.
    Each is an InputError naming the file, the line where the problem is, and the record.
    `trailing_stop` False (nucleotide files): a `*` is outside the alphabet anywhere.
    `section`: only the records whose header begins in these bytes of the content (a shard).
    """
    allowed = frozenset(alphabet)
    ids: list[str] = []
    sequences: list[str] = []
    chunks: list[str] = []
    header_line = 0
    stop_line = 0  # the line whose last letter is a '*': fine only at the end of a record

    def outside(number: int, letters) -> InputError:
        shown = "".join(sorted(letters))
        return InputError(
            f"{path}: line {number}: record '{ids[-1]}' has characters outside the "
            f"alphabet: {shown!r}"
        )

    def finish() -> None:
        sequence = "".join(chunks)
        if trailing_stop and sequence.endswith("*"):
            sequence = sequence[:-1]
        if not sequence:
            raise InputError(f"{path}: line {header_line}: record '{ids[-1]}' has no sequence")
        sequences.append(sequence)

    try:
        for number, raw in _section_lines(path, section):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            if b"\x00" in raw:
                raise InputError(f"{path}: line {number}: binary content, not a FASTA file")
            raw = raw.strip()
            if raw.startswith(b">"):
                if ids:
                    finish()
                words = _header_text(raw[1:]).split(maxsplit=1)
                if not words:
                    raise InputError(f"{path}: line {number}: header without an id")
                ids.append(words[0])
                header_line = number
                chunks = []
                stop_line = 0
            elif raw:
                try:
                    line = raw.decode("ascii").upper()
                except UnicodeDecodeError:
                    if not ids:
                        raise InputError(
                            f"{path}: line {number}: binary content, not a FASTA file"
                        ) from None
                    raise outside(number, set(_header_text(raw)) - allowed) from None
                if not ids:
                    raise InputError(
                        f"{path}: line {number}: not FASTA: text before the first '>' header"
                    )
                if stop_line:  # a '*' ended the line before: it was not the end
                    raise outside(stop_line, "*")
                if not allowed.issuperset(line):
                    bad = set(line) - allowed
                    if not trailing_stop or bad - {"*"} or line.index("*") != len(line) - 1:
                        raise outside(number, bad)
                    stop_line = number
                chunks.append(line)
        if ids:
            finish()
    except CorruptInput as error:
        raise InputError(f"{path}: {error}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    return FastaRecords(ids, sequences)
