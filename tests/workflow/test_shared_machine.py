"""Another user of the machine against a run (README, "Shared machines"): real `snakemake` runs
of the suite's user (root in CI), and a stranger, an unprivileged uid with no account, acting
from its own process as an attacker would. Root is needed to act as another uid; elsewhere
these tests skip, saying so.

Where the run must meet file permissions as an ordinary user does (a lock file it cannot
open), it runs as root without the capabilities that override them (setpriv): the suite's
Python lives where no other uid may run it (/root on this machine), and without them uid 0
is refused another user's 0600 file like anyone else."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    NAMES,
    assert_embeddings_correct,
    command,
    environment,
    last_line,
    make_workdir,
    progress_of,
    record,
    snakemake,
    start_run,
    wait_for,
)

from seqembed.job.client import run_key
from seqembed.lock_folder import lock_name

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(os.getuid() != 0, reason="acting as other uids needs root (CI is root)"),
]

#: unused uids: no account is needed to run a process as one
STRANGER = 54321


def as_uid(uid: int):
    def demote() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return demote


def world_runnable(path: str) -> bool:
    """Every folder above `path` and `path` itself executable by any user."""
    target = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [target, *target.parents])


#: an interpreter the stranger may run (its scripts need only the standard library)
STRANGER_PYTHON = next(
    (p for p in (sys.executable, "/usr/bin/python3") if os.path.exists(p) and world_runnable(p)),
    None,
)


def stranger(code: str, **popen) -> subprocess.Popen:
    """Python `code` run by the stranger, in the background; its stdout is a pipe."""
    if STRANGER_PYTHON is None:
        pytest.skip("no Python interpreter here that another uid may run")
    return subprocess.Popen(
        [STRANGER_PYTHON, "-c", textwrap.dedent(code)],
        preexec_fn=as_uid(STRANGER),
        cwd="/",
        env={"PATH": os.defpath, "HOME": "/"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def stranger_does(code: str) -> str:
    process = stranger(code)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


@pytest.fixture
def shared():
    """A folder like /tmp itself, that every uid can reach and write to (pytest's own are
    root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="seqembed-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def lock_folder(shared: Path) -> Path:
    """A lock folder as /tmp is: root's, sticky, open to all."""
    locks = shared / "locks"
    locks.mkdir()
    locks.chmod(0o1777)
    return locks


def lock_file(folder: Path, label: str) -> Path:
    return folder / lock_name(label)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize("mode", [0o1777, 0o755])
def test_a_lock_folder_made_by_another_user_stops_the_run_with_one_line(
    tmp_path, tiny_model, shared, mode
):
    locks = shared / "locks"
    stranger_does(f"import os; os.mkdir({str(locks)!r}); os.chmod({str(locks)!r}, {mode})")
    workdir = make_workdir(tmp_path / "run", tiny_model, lock_dir=str(locks))
    result = snakemake(workdir)
    assert result.returncode == 1
    assert last_line(result) == (
        f"seqembed: pre-flight failed: unsafe device lock folder: {locks} (owner uid "
        f"{STRANGER}, mode {stat.filemode(stat.S_IFDIR | mode)}) belongs to another user, who "
        "could plant files; remove it, or set lock_dir to a folder that root or you own (on a "
        "machine nobody else computes on)"
    )
    assert not (workdir / "results" / "records").exists()


#: a root process that meets file permissions as any user does
AS_ORDINARY_USER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def test_planted_lock_files_are_never_followed_and_take_only_their_device(
    tmp_path, tiny_model, shared
):
    """A symlink to a file of the user's at one device's lock name, a 0600 file of the
    stranger's at another's: neither is followed, opened for writing or fatal; the run says so
    once each and computes on the third device."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    host = lock_folder(shared)
    precious = shared / "precious.sh"  # the user's, as ~/.bashrc would be
    precious.write_text("echo hello\n")
    precious.chmod(0o700)
    link, unreadable = lock_file(host, "cpu:0"), lock_file(host, "cpu:1")
    stranger_does(
        f"import os; os.symlink({str(precious)!r}, {str(link)!r}); "
        f"os.open({str(unreadable)!r}, os.O_CREAT | os.O_WRONLY, 0o600)"
    )
    workdir = make_workdir(tmp_path / "run", tiny_model, lock_dir=str(host), cpu_slots=3)
    result = subprocess.run(
        AS_ORDINARY_USER + command(slots=3),
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = output_of(result)
    assert result.returncode == 0, output
    assert precious.read_text() == "echo hello\n"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o700
    # said once each, before any job; the files went to the other device
    for line in (
        f"seqembed: warning: device cpu:0 is unavailable to this run: {link} (owner uid "
        f"{STRANGER}, mode lrwxrwxrwx) is a symbolic link",
        f"seqembed: warning: device cpu:1 is unavailable to this run: {unreadable} (owner uid "
        f"{STRANGER}, mode -rw-------) cannot be opened by this user",
    ):
        assert output.count(line) == 1, output
    assert "Traceback" not in output and "PermissionError" not in output
    assert {record(workdir, name)["device"] for name in NAMES} == {"cpu:2"}
    assert_embeddings_correct(workdir, tiny_model, NAMES)


def test_the_waiting_line_names_the_holder_the_kernel_knows_not_a_forged_note(
    tmp_path, tiny_model, shared
):
    host = lock_folder(shared)
    forged = json.dumps({"pid": 1, "user": "root", "output_dir": "/srv/cluster-maintenance"})
    holder = stranger(
        f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock_file(host, "cpu:0"))!r}, os.O_RDWR | os.O_CREAT, 0o666)
        os.fchmod(fd, 0o666)
        os.write(fd, {forged!r}.encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()  # until the test lets go
        """,
        stdin=subprocess.PIPE,
    )
    assert holder.stdout.readline() == "held\n"
    workdir = make_workdir(
        tmp_path / "run", tiny_model, lock_dir=str(shared / "locks"), cpu_slots=1
    )
    for name in ("alpha", "beta", "gamma"):  # one file is enough to wait
        (workdir / "fasta" / f"{name}.fasta").unlink()
    run = start_run(workdir, slots=1)
    try:
        wait_for(lambda: progress_of(workdir, "delta").get("status") == "waiting", 120)
        time.sleep(2.0)  # the job has found the device taken, and said by whom
    finally:
        holder.stdin.close()
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert f"waiting for a device held by another run: cpu:0 by uid {STRANGER} (pid " in output
    assert f"(pid {holder.pid}, " in output
    assert "its lock file's note claims root pid 1, which the kernel does not" in output
    assert "/srv/cluster-maintenance" not in output
    # another user's lock file is never written, only locked
    assert lock_file(host, "cpu:0").read_text() == forged
    assert_embeddings_correct(workdir, tiny_model, ["delta"])


def listening(address: str) -> bool:
    """`address` (an abstract socket name) is listed for every user to see."""
    names = (line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:])
    return "@" + address in names


def owner_facts_of(pid: int) -> dict:
    """What a job of the run with Snakemake `pid` names its workers by (job.client)."""
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def worker_address(workdir: Path, run: subprocess.Popen, label: str) -> str:
    """The run's worker address for `label`, as a stranger finds it in /proc/net/unix."""
    key = run_key(str(workdir / "results" / ".seqembed" / "run"), owner_facts_of(run.pid))
    return f"seqembed/{key}/{label}"


def test_a_stranger_cannot_stop_use_or_stall_a_live_worker_and_ps_shows_nothing(
    tmp_path, tiny_model
):
    # one device, so every attack lands between two files of one worker, which accepts
    # connections in the order they came
    workdir = make_workdir(tmp_path / "run", tiny_model, cpu_slots=1, toks_per_batch=1000)
    secret = workdir / "results"
    run = start_run(workdir, {"seconds_per_batch": 0.2}, slots=1)
    try:
        address = worker_address(workdir, run, "cpu:0")
        wait_for(lambda: listening(address), 120)
        # what `ps` shows every user while the worker computes
        shown = " ".join(
            " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
        )
        assert "seqembed.compute.worker" in shown
        assert str(tiny_model) not in shown and str(secret) not in shown
        attack = stranger(
            f"""
            import json, socket, time
            answers = []
            for message in (
                {{"op": "exit"}},
                {{"op": "embed", "settings": {{"model": "other"}}, "request": {{}}}},
                {{"op": "embed", "settings": None, "request": {{"name": "x", "attempt": 1,
                  "output": "/tmp/stranger-output.pt", "ids": ["a"], "sequences": ["MKV"],
                  "faults": '{{"device_error": {{}}}}'}}}},
            ):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect("\\0" + {address!r})
                try:
                    sock.sendall((json.dumps(message) + "\\n").encode())
                    sock.settimeout(60)
                    answers.append(sock.recv(100).decode())
                except OSError as error:
                    answers.append(type(error).__name__)
                sock.close()
            # and one that says nothing, holding the line open
            silent = socket.socket(socket.AF_UNIX)
            silent.connect("\\0" + {address!r})
            print(json.dumps(answers), flush=True)
            time.sleep(60)
            """
        )
        answers = json.loads(attack.stdout.readline() or attack.communicate()[1])
        # a silent client of the run's own user: dropped after a few seconds
        own_silent = socket.socket(socket.AF_UNIX)
        own_silent.connect("\0" + address)
        output = run.communicate(timeout=600)[0]
    finally:
        if run.poll() is None:
            run.kill()
    attack.kill()
    own_silent.close()
    assert run.returncode == 0, output
    # every message of the stranger's went unanswered: the connection was closed unread
    assert set(answers) <= {"", "ConnectionResetError", "BrokenPipeError"}, answers
    assert not Path("/tmp/stranger-output.pt").exists()
    logs = "".join(p.read_text() for p in (secret / "logs" / "workers").glob("*.log"))
    assert logs.count(f"refused a connection from uid {STRANGER}") == 4, logs
    assert "dropped a client that sent nothing for 5 s" in logs
    assert "asked to exit" not in logs and "replaced" not in logs
    # one model load: every file was served by the one worker
    records = [json.loads((secret / "records" / f"{n}.json").read_text()) for n in NAMES]
    assert len({r["worker_pid"] for r in records}) == 1
    assert sum(not r["model_was_loaded"] for r in records) == 1
    assert_embeddings_correct(workdir, tiny_model, NAMES)


def test_an_impostor_at_the_workers_address_is_refused_and_the_files_come_out_right(
    tmp_path, tiny_model
):
    workdir = make_workdir(tmp_path / "run", tiny_model)
    run = start_run(workdir)
    try:
        # the run's worker addresses, as the stranger can learn them once a worker ran (from
        # /proc/net/unix): bound here before the first job looks for a worker
        key = worker_address(workdir, run, "").split("/")[1]
        impostor = stranger(
            f"""
            import json, socket, threading
            heard = []
            def serve(server):
                while True:
                    conn, _ = server.accept()
                    conn.settimeout(2)
                    try:
                        heard.append(conn.recv(1 << 16).decode())
                    except OSError:
                        pass
                    try:
                        conn.sendall(b'{{"event": "accepted", "pid": 1, "files_served": 1, '
                                     b'"load_seconds": 0, "ready": 0}}\\n{{"event": "done", '
                                     b'"stats": {{"temporary": "/etc/hostname"}}}}\\n')
                    except OSError:
                        pass
                    conn.close()
                    print(json.dumps(heard), flush=True)
            for label in ("cpu:0", "cpu:1"):
                server = socket.socket(socket.AF_UNIX)
                server.bind("\\0seqembed/{key}/" + label)
                server.listen(8)
                threading.Thread(target=serve, args=(server,), daemon=True).start()
            print("bound", flush=True)
            threading.Event().wait(600)
            """
        )
        assert impostor.stdout.readline() == "bound\n"
        output = run.communicate(timeout=600)[0]
    finally:
        if run.poll() is None:
            run.kill()
    impostor.kill()
    heard = impostor.stdout.read().splitlines()
    assert run.returncode == 0, output
    assert_embeddings_correct(workdir, tiny_model, NAMES)
    # the jobs asked the kernel who listened, and sent nothing
    assert heard and all(json.loads(line) == [""] * len(json.loads(line)) for line in heard)
    assert f"of uid {STRANGER}: not used: computing it in the job" in output
    for name in NAMES:
        assert record(workdir, name)["worker_pid"] != 1
