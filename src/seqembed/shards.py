"""Shards: one large input file computed as several jobs, on as many devices, and gathered
into the file's one output.

A shard is a range of bytes of the file's (uncompressed) content: it owns the records whose
header line begins in its range, so every record lands in exactly one shard whatever the
line lengths, and the shard job itself finds where its records begin
(`seqembed.fasta.read_fasta`). `shard_size` counts bytes, not residues, because the number
of shards must be known when the workflow is read, from the file alone and without reading
it: the size of a plain file is one `stat`, that of a gzip file is estimated from its first
compressed bytes (`content_size`). Bytes stand in well for residues: headers are a small,
steady share of a FASTA file. The shards of a file are spread evenly over its size, and the
last one is open-ended, so an estimate that falls short loses nothing.
"""

from __future__ import annotations

import functools
import math
import os
import re
import zlib
from collections.abc import Mapping

from seqembed.compression import GZIP_MAGIC

#: compressed bytes decompressed to estimate a gzip file's content size: about 1 ms a file
SAMPLE_BYTES = 256 << 10
#: the smallest shard_size: a shard job costs seconds, and `200` meant as 200M would make
#: millions of them
SMALLEST = 10_000
#: more than gzip gives FASTA (protein 1.5-3x, DNA about 4x): a file smaller than
#: shard_size / MAX_RATIO on disk is one job without being opened
MAX_RATIO = 16
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value) -> int:
    """`shard_size` in bytes: an integer, or a string such as "200M", "1.5G", "64MiB"
    (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024); None and 0 mean off (0)."""
    if value is None or value == "":
        return 0
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (e.g. 200M, 1.5G, 64MiB)")
    number, unit, binary = match.groups()
    if binary and unit:
        scale = 1024 ** ("kmgt".index(unit.lower()) + 1)
    else:
        scale = _UNITS[unit.lower()]
    return int(float(number) * scale)


def content_size(path: str | os.PathLike) -> int:
    """The bytes of FASTA the file holds: its size, or for gzip an estimate from the ratio of
    its first SAMPLE_BYTES (exact for a file that small). Deterministic: every reading of the
    workflow (on a cluster, every job's) finds the same shards. Estimated once per version of
    the file: every shard's section asks again."""
    stat = os.stat(path)
    return _content_size(os.fspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _content_size(path: str, size: int, mtime_ns: int) -> int:
    with open(path, "rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            return size
        handle.seek(0)
        sample = handle.read(SAMPLE_BYTES)
    produced = consumed = 0
    data = sample
    try:
        while data:  # bgzip's and concatenated gzip's members, one after another
            stream = zlib.decompressobj(wbits=31)
            pending = data
            while pending:  # in pieces: a sample of repeats may inflate a thousandfold
                produced += len(stream.decompress(pending, 1 << 20))
                pending = stream.unconsumed_tail
                if stream.eof:
                    break
            produced += len(stream.flush())
            consumed += len(data) - len(stream.unused_data)
            data = stream.unused_data
    except zlib.error:
        pass  # corrupt: the shard job names the problem; the file counts as what was read
    if consumed == 0:
        return size
    return produced if len(sample) == size else math.ceil(produced * size / consumed)


def shard_count(path: str | os.PathLike, shard_size: int, size: int | None = None) -> int:
    """How many shards the file is computed in: 1 when sharding is off or the file is small.
    `size`: its bytes on disk where the caller has them already."""
    if shard_size <= 0:
        return 1
    try:
        if (os.path.getsize(path) if size is None else size) * MAX_RATIO < shard_size:
            return 1  # too small even if compressed: thousands of gzip files are not opened
        return max(1, math.ceil(content_size(path) / shard_size))
    except OSError:
        return 1  # unreadable: the job for the whole file says why


def shard_counts(
    files: Mapping[str, str], shard_size: int, sizes: Mapping[str, int] | None = None
) -> dict[str, int]:
    """name -> number of shards, for the files computed in more than one (`sizes`: name ->
    bytes, seqembed.bundles.file_sizes, where the caller has read them)."""
    sizes = sizes or {}
    counts = {name: shard_count(path, shard_size, sizes.get(name)) for name, path in files.items()}
    return {name: count for name, count in counts.items() if count > 1}


def labels(count: int) -> list[str]:
    """The shards' names within their file, as file and job names show them: 1-of-4 ..."""
    return [f"{index}-of-{count}" for index in range(1, count + 1)]


def parse_label(label: str) -> tuple[int, int]:
    """(index from 1, count) of a label."""
    index, count = (int(part) for part in label.split("-of-"))
    return index, count


def section(path: str | os.PathLike, label: str) -> tuple[int, int | None]:
    """The bytes [start, end) of the content whose records the shard owns; end None for the
    last shard: it takes the rest."""
    index, count = parse_label(label)
    stride = math.ceil(content_size(path) / count)
    return (index - 1) * stride, None if index == count else index * stride


def shard_job_name(name: str, label: str) -> str:
    """How the shard's job, record and progress are named."""
    return f"{name}.shard-{label}"


def job_names(name: str, count: int) -> list[str]:
    """The jobs that compute a file: itself, or its shards."""
    return [name] if count == 1 else [shard_job_name(name, label) for label in labels(count)]


def shard_regex(names) -> str:
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


def _readable(size: int) -> str:
    """Rounded down, so that the size suggested makes at least as many shards as devices."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if size >= 100 * scale or (unit == "k" and size >= scale):
            return f"{size // scale}{unit}"
    return str(size)


def idle_warning(files: Mapping[str, str], pool: list[str], shard_size: int) -> str | None:
    """The opening warning of a run with fewer files than devices and no shards: how many
    devices will sit idle, and the shard_size that would put every one to work."""
    if shard_size > 0 or len(files) >= len(pool):
        return None
    largest = max((content_size(path) for path in files.values()), default=0)
    return (
        f"{len(files)} input file(s) for {len(pool)} devices: {len(pool) - len(files)} "
        f"device(s) will sit idle; set shard_size (e.g. --config "
        f"shard_size={_readable(math.ceil(largest / len(pool)))}) to compute large files in "
        "shards on every device"
    )
