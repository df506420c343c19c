"""How a job claims a device for itself.

Snakemake counts ``gpu`` resource slots but never tells a job *which* GPU it got: no
per-job CUDA_VISIBLE_DEVICES is set. So each job claims a device itself, with a
non-blocking ``flock(LOCK_EX | LOCK_NB)`` on one lock file per device, and keeps the fd
open for the life of the claim. The kernel drops the lock when the fd closes, so a job
killed with SIGKILL (OOM killer, scancel) frees its device with no stale-lock cleanup.

A GPU belongs to the machine, not to a run: the lock files live in one folder per host that
every run and every user shares (``lock_dir``, by default ``/tmp/seqembed-locks/<host>/``,
on a local disk, where flock always works), so two runs with different output folders never
compute on one GPU at once: the second waits, and says who holds the device. Inside a SLURM
job the locks live under ``<host>/slurm-<job id>/``: jobs of different allocations never
compete for a label (with device cgroups every job sees its own GPU as 0), while the embed
jobs that share one allocation (a job group, or Snakemake run inside ``salloc``) still take
turns.

flock locks belong to the open file description, so on Linux two ``open()`` calls of
one file in one process conflict like two processes do. On NFS, however, flock is
emulated with POSIX locks, which are per process and are dropped when *any* fd of the
file closes. A process-wide registry of held lock files therefore refuses a second
claim before the file is even opened, which keeps both cases correct. A forked child
closes its inherited copies of the lock fds, and exec'd children never get them
(close-on-exec), so a device stays tied to the process that claimed it.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from seqembed.devices import slurm_job
from seqembed.errors import DeviceError

#: shared by every run and user of a host (sticky and world-writable, like /tmp itself)
DEFAULT_LOCK_ROOT = "/tmp/seqembed-locks"

_held: dict[str, DeviceClaim] = {}  # lock file -> claim, for this process only
_held_guard = threading.Lock()


def _forget_claims_in_child() -> None:
    # A forked child shares the parent's lock fds; closing its copies leaves the parent's
    # locks intact but ties each device to the process that claimed it, and lets the
    # child claim afresh (with POSIX locks a child never inherits them at all).
    global _held_guard
    _held_guard = threading.Lock()  # another thread may have held it during the fork
    for claim in _held.values():
        with suppress(OSError):
            os.close(claim._fd)  # type: ignore[arg-type]
        claim._fd = None
    _held.clear()


os.register_at_fork(after_in_child=_forget_claims_in_child)


class DeviceClaim:
    """A device held by this process until release() (or process exit, even SIGKILL).

    Dropping the object without release() keeps the lock: the fd is a bare int, so
    garbage collection cannot free a device the process may still be using.
    """

    def __init__(self, label: str, lock_path: Path, fd: int) -> None:
        self.label = label
        self.lock_path = lock_path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        with _held_guard:
            if self._fd is None:
                return
            with suppress(OSError):  # an empty file reads as "free" to a person looking
                os.ftruncate(self._fd, 0)
            # Close before forgetting the path, so no other thread of ours can open it
            # while our fd is still open (with NFS's POSIX locks that close would drop
            # the other thread's fresh lock).
            os.close(self._fd)
            self._fd = None
            _held.pop(str(self.lock_path), None)

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open_lock_file(path: Path) -> int:
    """Read-write where possible: another user's lock file may be read-only to us, and
    flock works on a read-only descriptor too (only the holder note is then not written)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with suppress(OSError):  # only the creator may; the umask must not keep others out
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(label: str, path: Path, holder: str, note: Mapping) -> DeviceClaim | None:
    key = str(path)
    with _held_guard:
        if key in _held:
            return None
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException as exc:
            os.close(fd)
            # EACCES: what POSIX-lock based flock emulations (NFS) may report instead.
            if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EACCES):
                return None  # held by another process
            raise
        info = {
            **note,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "user": _user(),
            "label": label,
            "holder": holder,
            "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        with suppress(OSError):  # the note is for people; the lock protects the device
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        claim = _held[key] = DeviceClaim(label, path, fd)
        return claim


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _shared_folder(path: Path) -> None:
    """Create `path` (and its parents) usable by every user of the host, as /tmp is."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        with suppress(OSError):
            folder.chmod(0o1777)


def lock_folder(lock_dir: str | os.PathLike | None) -> Path:
    """Where this process claims devices: one folder per host (per allocation in SLURM)."""
    folder = Path(lock_dir or DEFAULT_LOCK_ROOT).expanduser().resolve() / socket.gethostname()
    if slurm_job():
        folder = folder / f"slurm-{slurm_job()}"
    return folder


def check_locking(lock_dir: str | os.PathLike | None) -> str | None:
    """None when device locks work in `lock_dir`; else one line saying why not. Some network
    filesystems have no flock (or refuse it): every job would fail to claim a device."""
    folder = lock_folder(lock_dir)
    try:
        _shared_folder(folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-") as probe:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
    except OSError as error:
        return (
            f"device locks do not work in {folder} ({error.strerror or error}): set lock_dir "
            "to a folder on a local disk (the default is /tmp/seqembed-locks)"
        )
    return None


def read_holder(path: Path) -> dict:
    """The note the holder of a lock file left in it ({} when unreadable or free)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def claim_device(
    pool: Sequence[str],
    lock_dir: str | Path | None,
    *,
    holder: str,
    prefer: Sequence[str] = (),
    avoid: Sequence[str] = (),
    note: Mapping | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    on_wait: Callable[[dict[str, dict]], None] | None = None,
) -> DeviceClaim:
    """Claim one free device of ``pool``, waiting for one if all are taken.

    Tries ``prefer`` (those in the pool) first, then the rest in pool order. ``avoid`` (the
    devices earlier attempts of this file crashed on) is never taken while another device of
    the pool exists: the claim waits for a healthy one, even when the avoided one is the only
    free device; only when every device of the pool is avoided is any taken. ``note`` is
    written into the lock file for whoever looks (a run's output folder). ``on_wait`` is
    called once, on the first pass that finds nothing free, with the notes of the holders.
    Raises DeviceError on an empty pool or when ``timeout_s`` (None: wait forever) runs out.
    """
    labels = list(dict.fromkeys(pool))
    if not labels:
        raise DeviceError("cannot claim a device from an empty pool")
    order = [p for p in dict.fromkeys(prefer) if p in labels]
    order += [p for p in labels if p not in order]
    order = [p for p in order if p not in avoid] or order

    host_dir = lock_folder(lock_dir)
    _shared_folder(host_dir)
    # Lock file names must be plain names: old-style MIG ids contain "/".
    paths = {p: host_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", p) + ".lock") for p in order}

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    while True:
        for label in order:
            claim = _try_lock(label, paths[label], holder, note or {})
            if claim is not None:
                return claim
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeviceError(
                f"no free device in pool {order} after {timeout_s}s (locks in {host_dir})"
            )
        if not waited and on_wait is not None:
            on_wait({label: read_holder(paths[label]) for label in order})
        waited = True
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - now)))
