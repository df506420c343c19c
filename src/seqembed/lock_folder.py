"""The folder device locks live in, and their names: shared by every user of the host, so
opened without following links and checked (seqembed.shared_dir); seqembed.claims takes the
locks in it."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

from seqembed.devices import slurm_job
from seqembed.errors import DeviceError
from seqembed.shared_dir import UnsafeFolder, UnusableFile, open_checked_folder, open_shared_file

#: shared by every run and user of a host: root's, sticky and world-writable
DEFAULT_LOCK_ROOT = "/tmp"


def lock_name(label: str) -> str:
    """`seqembed-<host>-<device>.lock`; inside SLURM `seqembed-<host>-slurm<job>-<device>.lock`:
    jobs of different allocations never compete for a label (with device cgroups every job
    sees its own GPU as 0), while the embed jobs of one allocation still take turns. The host
    is named for a lock_dir that several hosts share."""
    allocation = f"-slurm{slurm_job()}" if slurm_job() else ""
    # plain names: old-style MIG ids contain "/"
    device = re.sub(r"[^A-Za-z0-9._-]", "_", label)
    return f"seqembed-{socket.gethostname()}{allocation}-{device}.lock"


def lock_folder(lock_dir: str | os.PathLike | None) -> Path:
    """Where this process claims devices: `lock_dir`, by default /tmp itself. Not resolved: a
    symlink there is refused where the folder is opened, not followed."""
    return Path(os.path.abspath(Path(lock_dir or DEFAULT_LOCK_ROOT).expanduser()))


class LockFolderError(DeviceError):
    """The lock folder is another user's, or locks do not work in it."""


class LockFolder:
    """The lock folder, opened without following a link and checked (seqembed.shared_dir);
    files in it are opened relative to its descriptor. The lock files lie in it directly:
    no level below it is made, which a first user would own and every other user refuse."""

    def __init__(self, lock_dir: str | os.PathLike | None) -> None:
        self.path = lock_folder(lock_dir)
        try:
            # made when missing: this user's, and only this user's to write
            self.fd = open_checked_folder(self.path, 0o755)
        except UnsafeFolder as error:
            raise LockFolderError(
                f"unsafe device lock folder: {error.strerror}; remove it, or set lock_dir to a "
                "folder that root or you own (on a machine nobody else computes on)"
            ) from None
        except OSError as error:
            raise LockFolderError(
                f"cannot create or open the device lock folder {self.path}: "
                f"{error.strerror or error}; set lock_dir to a folder you can write"
            ) from None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> LockFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_locking(lock_dir: str | os.PathLike | None) -> str | None:
    """None when device locks work in `lock_dir`; else one line saying why not: a folder
    another user controls, or a filesystem without flock (some network filesystems have
    none, or refuse it: every job would fail to claim a device)."""
    try:
        folder = LockFolder(lock_dir)
    except LockFolderError as error:
        return str(error)
    try:
        with tempfile.NamedTemporaryFile(
            dir=f"/proc/self/fd/{folder.fd}", prefix=".probe-"
        ) as probe:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
    except OSError as error:
        return (
            f"device locks do not work in {folder.path} ({error.strerror or error}): set "
            "lock_dir to a folder on a local disk (the default is /tmp)"
        )
    finally:
        folder.close()
    return None


def unavailable_devices(pool: Sequence[str], lock_dir: str | os.PathLike | None) -> dict[str, str]:
    """label -> why, for the devices of `pool` whose lock file this user cannot use (another
    user's file it cannot open, a link, not a plain file). The pre-flight opens each once."""
    unusable = {}
    with LockFolder(lock_dir) as folder:
        for label in dict.fromkeys(pool):
            name = lock_name(label)
            try:
                opened = open_shared_file(folder.fd, folder.path, name, 0o644)
            except UnusableFile as error:
                unusable[label] = f"device {label} is unavailable to this run: {error.strerror}"
            else:
                os.close(opened.fd)
    return unusable
