"""Files in a folder that other users of the host can write to (the device locks' folder).

Other local users are untrusted; root and this user are trusted. So nothing in such a folder
is followed or believed by its name alone: the folder is opened with ``O_NOFOLLOW``
relative to its parent's descriptor and checked with ``fstat`` (owned by root or by this user;
sticky where others may write, so nobody can delete or rename what this user put there), and
each file is opened the same way and checked to be a plain file with one link. Only this
user's own files are chmodded (a new one, or one an older version left 0666); nothing this
user does not own is truncated or written.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFolder(OSError):
    """A folder that another user controls (or that is not a plain folder)."""


class UnusableFile(OSError):
    """A file this user must not or cannot use: one line naming it and its owner."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def trusted(uid: int) -> bool:
    return uid in (0, os.getuid())


def _describe(path: Path, info: os.stat_result) -> str:
    return f"{path} (owner {user_name(info.st_uid)}, mode {stat.filemode(info.st_mode)})"


def _check_folder(path: Path, fd: int) -> None:
    info = os.fstat(fd)
    if not trusted(info.st_uid):
        raise UnsafeFolder(
            errno.EPERM, f"{_describe(path, info)} belongs to another user, who could plant files"
        )
    others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if others_write and not info.st_mode & stat.S_ISVTX:
        raise UnsafeFolder(
            errno.EPERM,
            f"{_describe(path, info)} is writable by others without the sticky bit, so they "
            "could replace its files",
        )


def open_folder(parent_fd: int, parent: Path, name: str, mode: int) -> int:
    """The folder `name` in the folder open as `parent_fd`, created with `mode` when missing,
    checked as the module says. Returns its descriptor; raises UnsafeFolder."""
    path = parent / name
    created = False
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        pass
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _FLAGS, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            info = os.lstat(name, dir_fd=parent_fd)
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
            raise UnsafeFolder(errno.EPERM, f"{_describe(path, info)} is {kind}") from None
        raise
    try:
        if created and os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, mode)  # mkdir's mode passes through the umask; this does not
        _check_folder(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_checked_folder(path: Path, mode: int) -> int:
    """`path` opened (made with `mode` when missing) and checked as the module says; returns
    its descriptor. Its parents are the user's own choice and are followed as usual; the
    folder itself is not, so a symlinked or foreign folder is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_folder(parent, path.parent, path.name, mode)
    finally:
        os.close(parent)


@dataclass
class OpenedFile:
    fd: int
    #: this user's own file: the note in it may be written
    writable: bool
    info: os.stat_result


def open_shared_file(folder_fd: int, folder: Path, name: str, mode: int) -> OpenedFile:
    """`name` in the folder: created (with `mode`, exclusively) when missing; else opened
    without following a link, read-write only when this user owns it, read-only otherwise.
    Raises UnusableFile when it is not a plain file or this user cannot open it."""
    path = folder / name
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, mode, dir_fd=folder_fd)
    except FileExistsError:
        pass
    else:
        os.fchmod(fd, mode)  # our own new file: the umask must not keep others from locking
        return OpenedFile(fd, True, os.fstat(fd))
    try:
        info = os.lstat(name, dir_fd=folder_fd)
    except FileNotFoundError:  # its owner removed it just now: try again later
        raise UnusableFile(errno.EAGAIN, f"{path} went away") from None
    own = info.st_uid == os.getuid() and stat.S_ISREG(info.st_mode)
    # O_NONBLOCK: a FIFO planted under the name must not hang the open
    flags = (os.O_RDWR if own else os.O_RDONLY) | os.O_NONBLOCK | _FLAGS
    try:
        fd = os.open(name, flags, dir_fd=folder_fd)
    except FileNotFoundError:  # its owner removed it just now: try again later
        raise UnusableFile(errno.EAGAIN, f"{path} went away") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnusableFile(error.errno, f"{_describe(path, info)} is a symbolic link") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise UnusableFile(
                error.errno, f"{_describe(path, info)} cannot be opened by this user"
            ) from None
        # a socket (ENXIO), a device, anything else planted under the name
        raise UnusableFile(
            error.errno, f"{_describe(path, info)} cannot be opened: {error.strerror}"
        ) from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
        os.close(fd)
        kind = "not a plain file" if not stat.S_ISREG(opened.st_mode) else "a hard link"
        raise UnusableFile(errno.EPERM, f"{_describe(path, opened)} is {kind}")
    writable = own and opened.st_uid == os.getuid() and opened.st_ino == info.st_ino
    if writable and stat.S_IMODE(opened.st_mode) != mode:
        os.fchmod(fd, mode)  # ours from an older version (0666): nobody else may rewrite it
    return OpenedFile(fd, writable, opened)
