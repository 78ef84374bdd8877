"""Test helper: blob servers in a real subprocess (appliance.servers.standalone) on free 127.0.0.1 ports."""
from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time


class ServerProcess:
    """`with ServerProcess("--store", "memory", "--peer-port", "0") as srv: srv.ports["peer"]`."""

    def __init__(self, *args: str, module: str = "appliance.servers.standalone"):
        self.args = [sys.executable, "-m", module, *args]
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = _readline(self.proc, timeout=20)
        assert line.startswith("ready "), f"server did not start: {line!r} {self.stop()[1]}"
        self.ports = json.loads(line[6:])
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[str, str]:
        """Signal the server and wait for it; returns (stdout, stderr)."""
        if self.proc is None:
            return "", ""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.proc = None
        return out, err

    def connect(self, name: str, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[name]), timeout=timeout)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_json(sock: socket.socket, limit: int = 1 << 16) -> tuple[dict, bytes]:
    """One JSON object from the socket as the SDK client finds it (try to parse at each `}`); + leftover."""
    buf = b""
    while len(buf) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; got {buf[:200]!r}")
        start = len(buf)
        buf += chunk
        i = buf.find(b"}", start)
        while i >= 0:
            try:
                return json.loads(buf[: i + 1]), buf[i + 1:]
            except ValueError:
                i = buf.find(b"}", i + 1)
    raise AssertionError("no JSON object within the limit")


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    """True when the server closes the connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(condition, timeout: float = 10.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


__all__ = ["ServerProcess", "recv_exactly", "recv_json", "closed_by_peer", "rss_kib", "wait_for"]


def metric(text: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0
