"""Writing results: never a half-written file under its final name."""

from __future__ import annotations

import errno
import glob
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from seqembed.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp creates files readable by their owner only; results are for the whole group
FILE_MODE = 0o666 & ~_umask()


def temporary_path(path: str | os.PathLike) -> Path:
    """A new empty hidden file in `path`'s folder, named so that stale_temporaries finds it
    if its writer is killed, readable like the final file will be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, FILE_MODE)
    finally:
        os.close(handle)
    return Path(temporary)


def flush_to_disk(path: str | os.PathLike) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_temporary(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], None],
    durable: bool = True,
    reserved: Path | None = None,
) -> Path:
    """Write a hidden temporary file in `path`'s folder (the `reserved` one, made earlier by
    temporary_path) and flush it to disk (unless not `durable`: the file is worth nothing
    after a crash); returns its path, for `commit`."""
    temporary = reserved or temporary_path(path)
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def commit(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """The rename is atomic on POSIX: readers (and a rerun after a crash) see the whole file
    or none."""
    try:
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomically(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], durable: bool = True
) -> None:
    commit(write_temporary(path, write, durable), path)


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """What writers of `path` killed mid-write left behind (never the final name)."""
    target = Path(path)
    return list(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))


def is_temporary_of(temporary: str | os.PathLike, path: str | os.PathLike) -> bool:
    """`temporary` is what this user's writer of `path` makes (temporary_path): a plain file
    with one link, owned by this user, in `path`'s own folder, named as stale_temporaries
    finds it. What a job is handed to rename into its results must be nothing else."""
    candidate, target = os.path.abspath(temporary), os.path.abspath(path)
    folder, name = os.path.split(candidate)
    if folder != os.path.dirname(target):
        return False
    if not (name.startswith(f".{os.path.basename(target)}.") and name.endswith(".tmp")):
        return False
    try:
        info = os.lstat(candidate)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_nlink == 1


def output_error(path: str | os.PathLike, error: OSError) -> OutputError:
    """One line naming the path and the OS error (disk full, read-only, quota)."""
    code = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or str(error)
    return OutputError(f"{path}: cannot write: {reason}" + (f" ({code})" if code else ""))


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    write_atomically(path, lambda stream: stream.write(text.encode()), durable)


def write_json(path: str | os.PathLike, data: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", durable)
