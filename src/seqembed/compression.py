"""Input files as lines of bytes, plain or gzip-compressed (bgzip's multi-member files too).

The compression is told by the file's first bytes, not its name: a `.gz` that was
decompressed in place and a compressed file without the suffix both read right.
python-isal decompresses 2.7x faster than the standard library's zlib and makes the plan's
pass over compressed files 1.6x faster (docs/benchmarks.md); the standard library's gzip is the
fallback where isal is not installed.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import zlib
from collections.abc import Iterator
from typing import IO

try:
    from isal import igzip as _gzip
    from isal.igzip_lib import IsalError
except ImportError:  # pragma: no cover - the pinned environment has isal
    _gzip = gzip
    IsalError = zlib.error

__all__ = ["CorruptInput", "GZIP_MAGIC", "compression_of", "lines", "lines_from", "open_input"]

GZIP_MAGIC = b"\x1f\x8b"
#: other formats users meet, named in the error rather than read as binary garbage
OTHER_FORMATS = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
#: bytes decompressed per read: large enough that the per-line work dominates
CHUNK = 1 << 20


class CorruptInput(Exception):
    """The file cannot be decompressed (truncated, corrupt, or a format that is not gzip)."""


def compression_of(path: str | os.PathLike) -> str | None:
    """ "gzip", another format's name, or None for a plain file."""
    with open(path, "rb") as handle:
        start = handle.read(6)
    if start.startswith(GZIP_MAGIC):
        return "gzip"
    for magic, name in OTHER_FORMATS.items():
        if start.startswith(magic):
            return name
    return None


def open_input(path: str | os.PathLike) -> IO[bytes]:
    """A binary stream of the file's content, decompressed if it is gzip."""
    compression = compression_of(path)
    if compression == "gzip":
        return _gzip.open(path, "rb")
    if compression is not None:
        raise CorruptInput(f"compressed with {compression}: only gzip is read; recompress it")
    return open(path, "rb")


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """The file's content as a stream; decompression failures, wherever the reading meets
    them, as CorruptInput."""
    try:
        with open_input(path) as stream:
            yield stream
    except (EOFError, zlib.error, IsalError, gzip.BadGzipFile) as error:
        reason = str(error) or type(error).__name__
        if isinstance(error, EOFError):
            reason = "truncated: the compressed data ends early"
        raise CorruptInput(f"corrupt gzip: {reason}") from None


def _split(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Chunks of content as lines without their newline, split in C."""
    # the unfinished last line, in pieces: an unwrapped chromosome is one line of hundreds of
    # MB, and joining it anew for every chunk would be quadratic
    partial: list[bytes] = []
    for chunk in chunks:
        split = chunk.split(b"\n")
        if len(split) == 1:
            partial.append(chunk)
            continue
        split[0] = b"".join([*partial, split[0]])
        partial = [split.pop()]
        yield from split
    if partial and (rest := b"".join(partial)):
        yield rest


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: stream.read(CHUNK), b"")


def _skip_to(stream: IO[bytes], start: int) -> tuple[int, int, bytes]:
    """Read past the lines that begin before the content's byte `start`, only counting them,
    at the speed of C: (lines skipped, offset of the first line kept, the rest of its chunk)."""
    position = skipped = 0
    while start > 0 and (chunk := stream.read(CHUNK)):
        # a line begins at `start` or later right after a newline at start - 1 or later
        newline = chunk.find(b"\n", max(0, start - 1 - position))
        if newline >= 0:
            skipped += chunk.count(b"\n", 0, newline) + 1
            return skipped, position + newline + 1, chunk[newline + 1 :]
        skipped += chunk.count(b"\n")
        position += len(chunk)
    return skipped, position, b""


def lines(path: str | os.PathLike) -> Iterator[bytes]:
    """The file's lines without their newline. Read in large chunks and split in C: reading a
    gzip stream line by line costs more than decompressing it."""
    with _reading(path) as stream:
        yield from _split(_chunks(stream))


def lines_from(path: str | os.PathLike, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(line number, offset in the content, line without its newline) of the lines that begin
    at or after the content's byte `start`, numbered from the file's first line: a shard's
    lines (seqembed.shards), named in errors as the whole file's lines."""
    with _reading(path) as stream:
        skipped, offset, first = _skip_to(stream, start)
        for number, line in enumerate(
            _split(itertools.chain([first], _chunks(stream))), start=skipped + 1
        ):
            yield number, offset, line
            offset += len(line) + 1
