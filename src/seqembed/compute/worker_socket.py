"""The worker's end of its socket: the address, who is at the other end (the kernel's word),
the request line, and the connections it refuses (seqembed.compute.worker)."""

from __future__ import annotations

import json
import socket
import struct
import time
from datetime import datetime

from seqembed.errors import SeqembedError

#: a client must start its request within this time: a silent one is dropped
FIRST_LINE_SECONDS = 5.0


class ClientGone(SeqembedError):
    """The job that asked for the file is gone (killed, or it stopped waiting)."""

    error_type = "Crash"


def address(run_key: str, label: str) -> str:
    return f"\0seqembed/{run_key}/{label}"


def peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel knows it."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def log(message: str) -> None:
    try:
        print(f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}", flush=True)
    except OSError:
        pass  # the log's disk is full: the worker serves on, the job reports


class Connection:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def send(self, message: dict) -> None:
        try:
            self.conn.sendall((json.dumps(message) + "\n").encode())
        except OSError:
            raise ClientGone("the job went away mid-file") from None

    def receive(self, first_byte_seconds: float = FIRST_LINE_SECONDS) -> dict | None:
        """The request line. It must start within `first_byte_seconds`, and go on with no
        such pause; None when the client closed or fell silent."""
        chunks = []
        self.conn.settimeout(first_byte_seconds)
        try:
            while True:
                chunk = self.conn.recv(1 << 20)
                if not chunk:
                    return None
                newline = chunk.find(b"\n")
                if newline >= 0:
                    chunks.append(chunk[:newline])
                    break
                chunks.append(chunk)
        except TimeoutError:
            log(f"dropped a client that sent nothing for {first_byte_seconds:.0f} s")
            return None
        finally:
            self.conn.settimeout(None)
        return json.loads(b"".join(chunks))

    def check_client(self) -> None:
        """Raises ClientGone when the job closed its end (it was killed, or stopped)."""
        try:
            if self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                raise ClientGone("the job went away mid-file")
        except BlockingIOError:
            return
        except OSError:
            raise ClientGone("the job went away mid-file") from None

    def close(self) -> None:
        self.conn.close()


class Refusals:
    """Refused connections, logged without letting a stranger fill the log's disk: the first
    few one by one, then one count a minute."""

    SAID_ONE_BY_ONE = 5

    def __init__(self) -> None:
        self.count = 0
        self.unsaid = 0
        self.said_at = 0.0

    def refused(self, uid: int, pid: int) -> None:
        self.count += 1
        if self.count <= self.SAID_ONE_BY_ONE:
            log(f"refused a connection from uid {uid} (pid {pid}): not this worker's user")
            self.said_at = time.monotonic()
            return
        self.unsaid += 1
        if time.monotonic() - self.said_at >= 60:
            log(f"refused {self.unsaid} more connections of other users (last: uid {uid})")
            self.unsaid, self.said_at = 0, time.monotonic()
