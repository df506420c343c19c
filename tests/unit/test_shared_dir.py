"""Lock folders and lock files another user controls: real files made another uid's with
chown (root only; elsewhere these tests skip), real flock, the kernel's /proc/locks. The same
scenarios as real runs against a stranger process: tests/workflow/test_shared_machine.py."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat

import pytest

from seqembed.claims import claim_device, unavailable_devices
from seqembed.errors import DeviceError
from seqembed.lock_holders import describe_holder, holder_line, kernel_holder
from seqembed.run.preflight import PreflightError, check_lock_files

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="making files another uid's needs root")

OTHER = 54321


def host(tmp_path):
    """A proper shared lock folder, as seqembed makes it."""
    root = tmp_path / "locks"
    folder = root / socket.gethostname()
    folder.mkdir(parents=True)
    root.chmod(0o1777)
    folder.chmod(0o1777)
    return folder


def others(path, mode):
    os.chown(path, OTHER, OTHER, follow_symlinks=False)
    if not path.is_symlink():
        path.chmod(mode)


def test_a_planted_symlink_is_not_followed_and_the_next_device_is_taken(tmp_path):
    folder = host(tmp_path)
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    precious.chmod(0o600)
    (folder / "cpu_0.lock").symlink_to(precious)
    others(folder / "cpu_0.lock", 0)
    with claim_device(["cpu:0", "cpu:1"], tmp_path / "locks", holder="f", timeout_s=0) as claim:
        assert claim.label == "cpu:1"
    assert precious.read_text() == "keep me" and stat.S_IMODE(precious.stat().st_mode) == 0o600
    (why,) = unavailable_devices(["cpu:0", "cpu:1"], tmp_path / "locks").values()
    assert why == (
        f"device cpu:0 is unavailable to this run: {folder / 'cpu_0.lock'} (owner uid {OTHER}, "
        "mode lrwxrwxrwx) is a symbolic link"
    )
    with pytest.raises(DeviceError, match="no device of the pool is usable: cpu:0: .*symbolic"):
        claim_device(["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0)


def test_hard_links_fifos_and_folders_under_a_lock_name_are_refused(tmp_path):
    folder = host(tmp_path)
    mine = tmp_path / "mine.sh"
    mine.write_text("echo hi\n")
    os.link(mine, folder / "cpu_0.lock")  # this user's own file, linked in
    os.mkfifo(folder / "cpu_1.lock")  # opening it for reading would hang
    (folder / "cpu_2.lock").mkdir()
    reasons = unavailable_devices(["cpu:0", "cpu:1", "cpu:2"], tmp_path / "locks")
    assert reasons["cpu:0"].endswith("is a hard link")
    assert reasons["cpu:1"].endswith("is not a plain file")
    assert reasons["cpu:2"].endswith("is not a plain file")
    with pytest.raises(PreflightError, match="no device is usable: device cpu:0 is unavail"):
        check_lock_files(["cpu:0", "cpu:1", "cpu:2"], tmp_path / "locks")
    assert mine.read_text() == "echo hi\n"


def test_another_users_lock_file_is_locked_but_never_written(tmp_path):
    folder = host(tmp_path)
    lock = folder / "cpu_0.lock"
    lock.write_text('{"pid": 1, "user": "root"}')
    others(lock, 0o666)  # as an older seqembed left them: anyone could rewrite the note
    with claim_device(["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0) as claim:
        assert claim.label == "cpu:0"
        assert kernel_holder(lock.stat()) == os.getpid()
    assert lock.read_text() == '{"pid": 1, "user": "root"}'
    assert stat.S_IMODE(lock.stat().st_mode) == 0o666  # not ours to chmod either


@pytest.mark.parametrize(
    "mode, owner, problem",
    [
        (0o1777, OTHER, "belongs to another user, who could plant files"),
        (0o755, OTHER, "belongs to another user, who could plant files"),
        (0o777, 0, "is writable by others without the sticky bit, so they could replace its files"),
        (0o775, 0, "is writable by others without the sticky bit, so they could replace its files"),
    ],
)
def test_a_lock_folder_level_another_user_controls_is_refused(tmp_path, mode, owner, problem):
    root = tmp_path / "locks"
    (root / socket.gethostname()).mkdir(parents=True)
    root.chmod(0o1777)
    level = root / socket.gethostname()
    os.chown(level, owner, owner)
    level.chmod(mode)
    with pytest.raises(DeviceError) as refused:
        claim_device(["cpu:0"], root, holder="f", timeout_s=0)
    assert str(refused.value) == (
        f"unsafe device lock folder: {level} (owner {'uid ' + str(owner) if owner else 'root'}, "
        f"mode {stat.filemode(stat.S_IFDIR | mode)}) {problem}; remove it, or set lock_dir to "
        "a folder of your own"
    )


def test_a_symlinked_lock_root_is_refused_not_resolved(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "locks").symlink_to(real)
    with pytest.raises(DeviceError, match=r"locks \(owner root, mode lrwxrwxrwx\) is a symbolic"):
        claim_device(["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0)
    assert list(real.iterdir()) == []


def test_the_holder_is_the_kernels_and_a_disagreeing_note_is_only_a_claim(tmp_path):
    folder = host(tmp_path)
    lock = folder / "cpu_0.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, json.dumps({"pid": 1, "user": "root"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        seen = []
        with pytest.raises(DeviceError):
            claim_device(
                ["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0.05, poll_s=0.01,
                on_wait=seen.append,
            )  # fmt: skip
        holder = seen[0]["cpu:0"]
        assert holder["pid"] == os.getpid() and holder["user"] == "root"
        assert holder["claim"] == "root pid 1"
        assert holder_line("cpu:0", holder).endswith(
            "[its lock file's note claims root pid 1, which the kernel does not]"
        )
    finally:
        os.close(fd)


def test_proc_locks_is_matched_by_device_and_inode(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("")
    info = lock.stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    table = tmp_path / "locks"
    table.write_text(
        f"1: POSIX  ADVISORY  WRITE 11 00:aa:{info.st_ino} 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE 4242 {device} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 77 {device} 0 EOF\n"
    )
    assert kernel_holder(info, str(table)) == 4242
    # where stat's device differs from the kernel's (btrfs, overlays): the inode alone, if
    # it is one lock's
    table.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 00:99:{info.st_ino} 0 EOF\n")
    assert kernel_holder(info, str(table)) == 4242
    table.write_text("")
    assert kernel_holder(info, str(table)) is None
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        assert describe_holder(info, {}, folder, "x.lock")["pid"] is None
    finally:
        os.close(folder)


def test_another_users_words_reach_the_terminal_as_one_plain_line():
    forged = {
        "pid": 4242,
        "user": "bob",
        "command": "\x1b[31mEVIL\x1b[0m",
        "claim": "\x1b]0;owned\x07\nseqembed: all 500 files done, exit 0\n pid 1",
    }
    line = holder_line("cuda:0", forged)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert line.startswith("cuda:0 by bob (pid 4242, ?[31mEVIL?[0m) [its lock file's note")
