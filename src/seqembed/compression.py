"""Input files as lines of bytes, plain or gzip-compressed (bgzip's multi-member files too).

The compression is told by the file's first bytes, not its name: a `.gz` that was
decompressed in place and a compressed file without the suffix both read right.
python-isal decompresses 2.7x faster than the standard library's zlib and makes the plan's
pass over compressed files 1.6x faster (docs/benchmarks.md); the standard library's gzip is the
fallback where isal is not installed.
"""

from __future__ import annotations

import gzip
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


def _chunks(stream: IO[bytes], start: int, skipped: dict) -> Iterator[bytes]:
    """The stream's content from the first line that begins at or after `start`; the lines
    before it are only counted, at the speed of C, into `skipped` (lines, and bytes: where
    the first chunk begins)."""
    position = 0
    while start > 0:
        chunk = stream.read(CHUNK)
        if not chunk:
            return  # the content ends before `start`
        # a line begins at `start` or later right after a newline at start - 1 or later
        newline = chunk.find(b"\n", max(0, start - 1 - position))
        if newline < 0:
            skipped["lines"] += chunk.count(b"\n")
            position += len(chunk)
            continue
        skipped["lines"] += chunk.count(b"\n", 0, newline) + 1
        skipped["bytes"] = position + newline + 1
        yield chunk[newline + 1 :]
        break
    while chunk := stream.read(CHUNK):
        yield chunk


def lines_from(path: str | os.PathLike, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(line number, offset in the content, line without its newline) of the lines that begin
    at or after the content's byte `start`, numbered from the file's first line: a shard's
    lines (seqembed.shards), named in errors as the whole file's lines."""
    skipped = {"lines": 0, "bytes": 0}
    number = offset = 0
    for line in lines(path, start, skipped):
        if not number:
            number, offset = skipped["lines"] + 1, skipped["bytes"]
        yield number, offset, line
        number += 1
        offset += len(line) + 1


def lines(path: str | os.PathLike, start: int = 0, skipped: dict | None = None) -> Iterator[bytes]:
    """The file's lines without their newline (from the first line beginning at or after the
    content's byte `start`, the lines before it counted into `skipped`). Read in large chunks
    and split in C: reading a gzip stream line by line costs more than decompressing it."""
    try:
        with open_input(path) as stream:
            # the unfinished last line, in pieces: an unwrapped chromosome is one line of
            # hundreds of MB, and joining it anew for every chunk would be quadratic
            partial: list[bytes] = []
            skipped = {"lines": 0, "bytes": 0} if skipped is None else skipped
            for chunk in _chunks(stream, start, skipped):
                split = chunk.split(b"\n")
                if len(split) == 1:
                    partial.append(chunk)
                    continue
                split[0] = b"".join([*partial, split[0]])
                partial = [split.pop()]
                yield from split
            if partial and (rest := b"".join(partial)):
                yield rest
    except (EOFError, zlib.error, IsalError, gzip.BadGzipFile) as error:
        reason = str(error) or type(error).__name__
        if isinstance(error, EOFError):
            reason = "truncated: the compressed data ends early"
        raise CorruptInput(f"corrupt gzip: {reason}") from None
