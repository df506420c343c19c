"""Lock folders and lock files another user controls: real files made another uid's with
chown (root only; elsewhere these tests skip), real flock, the kernel's /proc/locks. The same
scenarios as real runs against a stranger process: tests/workflow/test_shared_machine.py."""

from __future__ import annotations

import fcntl
import json
import os
import stat

import pytest

from seqembed.claims import claim_device
from seqembed.errors import DeviceError
from seqembed.lock_folder import lock_name, unavailable_devices
from seqembed.lock_holders import describe_holder, holder_line, kernel_holder
from seqembed.run.preflight import PreflightError, check_lock_files

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="making files another uid's needs root")

OTHER = 54321


def host(tmp_path):
    """A proper shared lock folder, as /tmp is: root's, sticky, open to all."""
    root = tmp_path / "locks"
    root.mkdir()
    root.chmod(0o1777)
    return root


def lock(folder, label):
    return folder / lock_name(label)


def others(path, mode):
    os.chown(path, OTHER, OTHER, follow_symlinks=False)
    if not path.is_symlink():
        path.chmod(mode)


def test_a_planted_symlink_is_not_followed_and_the_next_device_is_taken(tmp_path):
    folder = host(tmp_path)
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    precious.chmod(0o600)
    lock(folder, "cpu:0").symlink_to(precious)
    others(lock(folder, "cpu:0"), 0)
    with claim_device(["cpu:0", "cpu:1"], tmp_path / "locks", holder="f", timeout_s=0) as claim:
        assert claim.label == "cpu:1"
    assert precious.read_text() == "keep me" and stat.S_IMODE(precious.stat().st_mode) == 0o600
    (why,) = unavailable_devices(["cpu:0", "cpu:1"], tmp_path / "locks").values()
    assert why == (
        f"device cpu:0 is unavailable to this run: {lock(folder, 'cpu:0')} (owner uid {OTHER}, "
        "mode lrwxrwxrwx) is a symbolic link"
    )
    with pytest.raises(DeviceError, match="no device of the pool is usable: cpu:0: .*symbolic"):
        claim_device(["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0)


def test_hard_links_fifos_and_folders_under_a_lock_name_are_refused(tmp_path):
    folder = host(tmp_path)
    mine = tmp_path / "mine.sh"
    mine.write_text("echo hi\n")
    os.link(mine, lock(folder, "cpu:0"))  # this user's own file, linked in
    os.mkfifo(lock(folder, "cpu:1"))  # opening it for reading would hang
    lock(folder, "cpu:2").mkdir()
    reasons = unavailable_devices(["cpu:0", "cpu:1", "cpu:2"], tmp_path / "locks")
    assert reasons["cpu:0"].endswith("is a hard link")
    assert reasons["cpu:1"].endswith("is not a plain file")
    assert reasons["cpu:2"].endswith("is not a plain file")
    with pytest.raises(PreflightError, match="no device is usable: device cpu:0 is unavail"):
        check_lock_files(["cpu:0", "cpu:1", "cpu:2"], tmp_path / "locks")
    assert mine.read_text() == "echo hi\n"


def test_another_users_lock_file_is_locked_but_never_written(tmp_path):
    folder = host(tmp_path)
    path = lock(folder, "cpu:0")
    path.write_text('{"pid": 1, "user": "root"}')
    others(path, 0o666)  # as an older seqembed left them: anyone could rewrite the note
    with claim_device(["cpu:0"], tmp_path / "locks", holder="f", timeout_s=0) as claim:
        assert claim.label == "cpu:0"
        assert kernel_holder(path.stat()) == os.getpid()
    assert path.read_text() == '{"pid": 1, "user": "root"}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o666  # not ours to chmod either


@pytest.mark.parametrize(
    "mode, owner, problem",
    [
        (0o1777, OTHER, "belongs to another user, who could plant files"),
        (0o755, OTHER, "belongs to another user, who could plant files"),
        (0o777, 0, "is writable by others without the sticky bit, so they could replace its files"),
        (0o775, 0, "is writable by others without the sticky bit, so they could replace its files"),
    ],
)
def test_a_lock_folder_another_user_controls_is_refused(tmp_path, mode, owner, problem):
    root = tmp_path / "locks"
    root.mkdir()
    os.chown(root, owner, owner)
    root.chmod(mode)
    with pytest.raises(DeviceError) as refused:
        claim_device(["cpu:0"], root, holder="f", timeout_s=0)
    assert str(refused.value) == (
        f"unsafe device lock folder: {root} (owner {'uid ' + str(owner) if owner else 'root'}, "
        f"mode {stat.filemode(stat.S_IFDIR | mode)}) {problem}; remove it, or set lock_dir to "
        "a folder that root or you own (on a machine nobody else computes on)"
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
    path = lock(folder, "cpu:0")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
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


def test_a_socket_under_a_lock_name_takes_only_that_device(tmp_path):
    import socket as sockets

    folder = host(tmp_path)
    planted = sockets.socket(sockets.AF_UNIX)
    planted.bind(str(lock(folder, "cpu:0")))  # opening it fails with ENXIO
    try:
        (why,) = unavailable_devices(["cpu:0", "cpu:1"], folder).values()
        assert "cannot be opened: No such device or address" in why
        with claim_device(["cpu:0", "cpu:1"], folder, holder="f", timeout_s=0) as claim:
            assert claim.label == "cpu:1"
    finally:
        planted.close()


def test_a_note_made_to_break_the_parser_is_only_no_note(tmp_path):
    folder = host(tmp_path)
    fd = os.open(lock(folder, "cpu:0"), os.O_RDWR | os.O_CREAT)
    os.write(fd, b"[" * 60000)  # RecursionError in json, where it is parsed whole
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = len(os.listdir("/proc/self/fd"))
        seen = []
        for _ in range(3):
            with pytest.raises(DeviceError, match="no free device"):
                claim_device(
                    ["cpu:0"], folder, holder="f", timeout_s=0.05, poll_s=0.01,
                    on_wait=seen.append,
                )  # fmt: skip
        assert len(os.listdir("/proc/self/fd")) == before  # no descriptor left open
        assert seen[0]["cpu:0"]["pid"] == os.getpid() and "claim" not in seen[0]["cpu:0"]
    finally:
        os.close(fd)


def test_a_holder_the_kernel_names_without_its_user_is_no_forgery(tmp_path, monkeypatch):
    import seqembed.lock_holders as holders

    (tmp_path / "x").touch()
    info = (tmp_path / "x").stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    table = tmp_path / "locks"
    # a pid whose process cannot be seen (hidepid, another pid namespace)
    table.write_text(f"1: FLOCK  ADVISORY  WRITE 999999999 {device} 0 EOF\n")
    monkeypatch.setattr(holders.kernel_holder, "__defaults__", (str(table),))
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        holder = describe_holder(info, {"pid": 999999999, "user": "bob"}, folder, "x")
    finally:
        os.close(folder)
    assert holder["user"] == "?" and "claim" not in holder
