"""Who holds a device lock, told by the kernel, not by the lock file.

A lock file's note is written by whoever owns the file, and an older version made the files
world-writable: its words are a claim, never the answer. `/proc/locks` lists every flock by
the holder's pid and the file's device and inode; the pid gives the user and the command.
Details that name a run's folders (its output folder, the file it computes) are kept in a
note only the holder's user can read (`.<lock file>.<uid>`, mode 0600), and are shown only to
that same user, and only while the kernel agrees on the pid.
"""

from __future__ import annotations

import json
import os

import psutil

from seqembed.shared_dir import user_name

PROC_LOCKS = "/proc/locks"


def kernel_holder(info: os.stat_result, proc_locks: str = PROC_LOCKS) -> int | None:
    """The pid holding a lock on the file with this `info` (fstat), or None when the kernel
    lists none (released meanwhile, or a filesystem whose locks /proc/locks does not show)."""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    by_inode = []
    try:
        with open(proc_locks) as lines:
            for line in lines:
                # "3: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; "3: -> FLOCK ..." waits
                fields = line.split()
                if len(fields) < 6 or fields[1] == "->":
                    continue
                if fields[5] == device:
                    return int(fields[4])
                if fields[5].rsplit(":", 1)[-1] == str(info.st_ino):
                    by_inode.append(int(fields[4]))
    except (OSError, ValueError):
        return None
    # some filesystems (btrfs subvolumes, overlays) report another device number to stat
    return by_inode[0] if len(by_inode) == 1 else None


def private_note_name(lock_name: str, uid: int) -> str:
    return f".{lock_name}.{uid}"


def read_private_note(folder_fd: int, lock_name: str) -> dict:
    """This user's own note for `lock_name` ({} when there is none we can trust)."""
    try:
        fd = os.open(
            private_note_name(lock_name, os.getuid()),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=folder_fd,
        )
    except OSError:
        return {}
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return {}
        return json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def read_public_note(fd: int) -> dict:
    """What the lock file says, as far as it is a small JSON object; another user wrote it,
    so anything else (too deep to parse, not an object) is nothing."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except Exception:  # noqa: BLE001 - RecursionError from "[[[[...", bad bytes, I/O
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(
    info: os.stat_result, public_note: dict, folder_fd: int, lock_name: str
) -> dict:
    """What a waiting job may say of the holder: pid, user and command from the kernel; for
    this user's own holder also its output folder and file; `claim`, what the lock file's
    note says, when it says something else."""
    pid = kernel_holder(info)
    holder: dict = {"pid": pid}
    if pid is not None:
        try:
            process = psutil.Process(pid)
            uid = process.uids().real
            holder.update(uid=uid, user=user_name(uid), command=process.name())
        except psutil.Error:
            holder.update(uid=None, user="?", command="?")
        if holder.get("uid") == os.getuid():
            private = read_private_note(folder_fd, lock_name)
            if private.get("pid") == pid:
                holder.update({k: private[k] for k in ("output_dir", "holder") if k in private})
    # a claim is shown only where the kernel says otherwise: an unknown pid (no /proc/locks)
    # or user (hidepid) proves nothing either way
    claimed_user, claimed_pid = public_note.get("user"), public_note.get("pid")
    known_user = holder.get("user") not in (None, "?")
    if (
        public_note
        and pid is not None
        and (claimed_pid != pid or (known_user and claimed_user != holder["user"]))
    ):
        holder["claim"] = f"{claimed_user} pid {claimed_pid}"
    return holder


def printable(text: object, limit: int = 80) -> str:
    """Another user's words (a process name, a note) as one short line: no escape sequences
    for the terminal, no line breaks to forge seqembed's own lines with."""
    cleaned = "".join(c if c.isprintable() else "?" for c in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def holder_line(label: str, holder: dict) -> str:
    """`cuda:0 by alice (pid 4242, python3[, output /data/run1])`, and the note's claim when
    it disagrees with the kernel."""
    if holder.get("pid") is None:
        text = f"{label} by an unknown holder"
    else:
        facts = [f"pid {holder['pid']}", printable(holder.get("command", "?"))]
        if holder.get("output_dir"):
            facts.append(f"output {printable(holder['output_dir'], 400)}")
        text = f"{label} by {printable(holder.get('user', '?'))} ({', '.join(facts)})"
    if holder.get("claim"):
        claim = printable(holder["claim"])
        text += f" [its lock file's note claims {claim}, which the kernel does not]"
    return text
