"""How a job claims a device for itself.

Snakemake counts ``gpu`` resource slots but never tells a job *which* GPU it got: no
per-job CUDA_VISIBLE_DEVICES is set. So each job claims a device itself, with a
non-blocking ``flock(LOCK_EX | LOCK_NB)`` on one lock file per device, and keeps the fd
open for the life of the claim. The kernel drops the lock when the fd closes, so a job
killed with SIGKILL (OOM killer, scancel) frees its device with no stale-lock cleanup.

A GPU belongs to the machine, not to a run: the lock files live in one folder that every run
and every user of the host shares (``lock_dir``, by default ``/tmp`` itself, named
``seqembed-<host>-<device>.lock``), so two runs with different output folders never compute
on one GPU at once: the second waits, and says who holds the device. Inside a SLURM job the
names carry the job id (``seqembed-<host>-slurm<id>-<device>.lock``): jobs of different
allocations never compete for a label (with device cgroups every job sees its own GPU as 0),
while the embed jobs that share one allocation (a job group, or Snakemake run inside
``salloc``) still take turns.

flock locks belong to the open file description, so on Linux two ``open()`` calls of
one file in one process conflict like two processes do. On NFS, however, flock is
emulated with POSIX locks, which are per process and are dropped when *any* fd of the
file closes. A process-wide registry of held lock files therefore refuses a second
claim before the file is even opened, which keeps both cases correct. A forked child
closes its inherited copies of the lock fds, and exec'd children never get them
(close-on-exec), so a device stays tied to the process that claimed it.

Other users of the host are untrusted (README, "Shared machines"): the folder and the lock
files are opened without following links and checked (seqembed.shared_dir). The folder must
be root's (as /tmp is) or this user's: a folder another user made would be theirs to empty
and fill, which is why no level is made below it. The lock
file's note says only who holds it (user, pid), and a waiting job names the holder the
kernel knows (seqembed.lock_holders), not the note. A run's folders go into a note only its
user can read.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from seqembed.errors import DeviceError
from seqembed.lock_folder import LockFolder, lock_name
from seqembed.lock_holders import describe_holder, private_note_name, read_public_note
from seqembed.shared_dir import UnusableFile, open_shared_file, user_name

_held: dict[str, DeviceClaim] = {}  # lock file -> claim, for this process only
_held_guard = threading.Lock()


def _forget_claims_in_child() -> None:
    # A forked child shares the parent's lock fds; closing its copies leaves the parent's
    # locks intact but ties each device to the process that claimed it, and lets the
    # child claim afresh (with POSIX locks a child never inherits them at all).
    global _held_guard
    _held_guard = threading.Lock()  # another thread may have held it during the fork
    for claim in _held.values():
        for fd in (claim._fd, claim._note_fd):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        claim._fd = claim._note_fd = None
    _held.clear()


os.register_at_fork(after_in_child=_forget_claims_in_child)


class DeviceClaim:
    """A device held by this process until release() (or process exit, even SIGKILL).

    Dropping the object without release() keeps the lock: the fd is a bare int, so
    garbage collection cannot free a device the process may still be using.
    """

    def __init__(
        self, label: str, lock_path: Path, fd: int, note_fd: int | None, writable: bool
    ) -> None:
        self.label = label
        self.lock_path = lock_path
        self._fd: int | None = fd
        self._note_fd = note_fd
        self._writable = writable
        #: what a waiting job of this process may learn of the holder
        self.details: dict = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        with _held_guard:
            if self._fd is None:
                return
            # an empty note reads as "free" to a person looking; only our own files are
            # written
            for fd in (self._fd if self._writable else None, self._note_fd):
                if fd is not None:
                    with suppress(OSError):
                        os.ftruncate(fd, 0)
            if self._note_fd is not None:
                os.close(self._note_fd)
                self._note_fd = None
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


class Unavailable(Exception):
    """A device whose lock file this user cannot (or must not) use: one line why."""


def _write_note(fd: int, info: Mapping) -> None:
    with suppress(OSError):  # the notes are for people; the lock protects the device
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _try_lock(
    label: str, folder: LockFolder, holder: str, note: Mapping, describe: bool
) -> tuple[DeviceClaim | None, dict]:
    """(the claim, {}) or, when another process holds the device, (None, who holds it, when
    `describe`). Raises Unavailable when the lock file cannot be used by this user."""
    name = lock_name(label)
    key = str(folder.path / name)
    with _held_guard:
        if key in _held:
            return None, _held[key].details
        try:
            # 0644: every user can open it to lock, nobody else can rewrite the note
            opened = open_shared_file(folder.fd, folder.path, name, 0o644)
        except UnusableFile as error:
            raise Unavailable(f"{label}: {error.strerror}") from None
        fd = opened.fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            try:
                # EACCES: what POSIX-lock based flock emulations (NFS) may report instead
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    if not describe:
                        return None, {}
                    note_text = read_public_note(fd)
                    return None, describe_holder(opened.info, note_text, folder.fd, name)
                if error.errno == errno.EBADF and not opened.writable:
                    # NFS: an exclusive lock needs a file open for writing, and this one is
                    # another user's
                    raise Unavailable(
                        f"{label}: {folder.path / name} is another user's, and this "
                        "filesystem locks only files open for writing"
                    ) from None
                raise
            finally:
                os.close(fd)
        except BaseException:
            os.close(fd)
            raise
        public = {"pid": os.getpid(), "user": _user(), "label": label}
        private = {
            **note,
            **public,
            "hostname": socket.gethostname(),
            "holder": holder,
            "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if opened.writable:
            _write_note(fd, public)
        note_fd = None
        with suppress(UnusableFile, OSError):
            own = open_shared_file(
                folder.fd, folder.path, private_note_name(name, os.getuid()), 0o600
            )
            if own.writable:
                note_fd = own.fd
                _write_note(note_fd, private)
            else:
                os.close(own.fd)
        claim = _held[key] = DeviceClaim(label, folder.path / name, fd, note_fd, opened.writable)
        claim.details = {"uid": os.getuid(), "command": "this process", **private}
        return claim, {}


def _user() -> str:
    return user_name(os.getuid())


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
    kept for this user's eyes only (a run's output folder). ``on_wait`` is called once, on
    the first pass that finds nothing free, with who holds each device
    (seqembed.lock_holders.describe_holder). A device whose lock file this user cannot use
    is skipped (the pre-flight has said why). Raises DeviceError on an empty pool, when no
    device of it is usable, or when ``timeout_s`` (None: wait forever) runs out.
    """
    labels = list(dict.fromkeys(pool))
    if not labels:
        raise DeviceError("cannot claim a device from an empty pool")
    order = [p for p in dict.fromkeys(prefer) if p in labels]
    order += [p for p in labels if p not in order]
    order = [p for p in order if p not in avoid] or order

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    with LockFolder(lock_dir) as folder:
        while True:
            holders: dict[str, dict] = {}
            unusable: dict[str, str] = {}
            describe = not waited and on_wait is not None
            for label in order:
                try:
                    claim, holders[label] = _try_lock(label, folder, holder, note or {}, describe)
                except Unavailable as reason:
                    unusable[label] = str(reason)
                    continue
                if claim is not None:
                    return claim
            if len(unusable) == len(order):
                raise DeviceError(
                    "no device of the pool is usable: " + "; ".join(unusable.values())
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DeviceError(
                    f"no free device in pool {order} after {timeout_s}s (locks in {folder.path})"
                )
            if not waited and on_wait is not None:
                on_wait(holders)
            waited = True
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - now)))
