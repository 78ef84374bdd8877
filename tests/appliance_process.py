"""Test helper: `prism reflector` as a real subprocess on free 127.0.0.1 ports, in a tmp directory.

    from tests.appliance_process import appliance_fixture  # noqa: F401   (registers the `appliance` fixture)

    def test_x(appliance):
        app = appliance("--workers", "2")      # started and ready (every process), always stopped afterwards
        app.ports["http"]                       # receiver, tcp_peer, http, metrics
        app.status()                            # what `appliancectl status --json` prints
        app.pids("worker")                      # pids of one role, or of every child with no role
        app.wait_for(lambda s: ..., "what")     # poll status until the predicate is truthy (deadline)
        app.stop()                              # SIGTERM, wait; returns the exit code

Each appliance runs in its own directory (cwd, so the embedded default ./run and ./data land there) and
its own session (process group). The finalizer SIGTERMs it and SIGKILLs the whole group if it does not
exit, so no test leaves a process behind. `--disable-dht --disable-http3` are passed unless the test
passes `dht=True` / `http3=True`. stdout and stderr go to `<dir>/appliance.log` (`app.log()`).
"""
from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance import ipc

REPO = Path(__file__).resolve().parents[1]
PORT_NAMES = ("receiver", "tcp_peer", "http", "metrics")
FLAGS = {"receiver": "--receiver-port", "tcp_peer": "--tcp-peer-port", "http": "--http-peer-port",
         "metrics": "--metrics-port"}


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for our commands: this checkout first on the path, unbuffered output."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Appliance:
    def __init__(self, directory: Path, args: tuple[str, ...], env: dict[str, str] | None = None,
                 dht: bool = False, http3: bool = False):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.runtime_dir = self.dir / "run"
        self.log_path = self.dir / "appliance.log"
        # Nothing may reach outside this machine: no protected-content list, no LBRY blocklist, no LBRY
        # DHT seeds (a test that wants one of them passes its own local source after these).
        flags = ["--conf", "none", "--listen-address", "127.0.0.1", "--protected-content-url", "",
                 "--disable-blocklist", "--dht-seeds", ""]
        for name, port in self.ports.items():
            flags += [FLAGS[name], str(port)]
        flags += [] if dht else ["--disable-dht"]
        flags += [] if http3 else ["--disable-http3"]
        self.argv = [sys.executable, "-m", "appliance.cli.prism", "reflector", *flags, *args]
        self.env = child_env(**(env or {}))
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 30) -> Appliance:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> dict:
        """Poll the control socket until the supervisor and every process say "ready"."""
        def ready() -> dict | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the appliance exited ({self.proc.returncode}) while starting:\n{self.log()}")
            status = self.try_status()
            if status and status["state"] == "ready" and all(p["state"] == "ready" for p in status["processes"]):
                return status
            return None
        return poll(ready, timeout, "the appliance to be ready")

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the supervisor to exit; its exit code."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the appliance did not exit within {timeout:g}s:\n{self.log()[-3000:]}") from None
        return self.returncode

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (graceful stop) and wait; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill_all(self) -> None:
        """The finalizer: SIGTERM, then SIGKILL to the whole process group (children included)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    # -- inspection ---------------------------------------------------------------------------------------
    def try_status(self) -> dict | None:
        """The supervisor's status over the control socket, or None when it does not answer."""
        client = ipc.IpcClient(str(self.runtime_dir / "control.sock"), name="control", timeout=5)
        try:
            return client.call("status")
        except (ipc.IpcError, OSError, TimeoutError):
            return None
        finally:
            client.close()

    def status(self) -> dict:
        status = self.try_status()
        assert status is not None, f"the appliance does not answer on its control socket:\n{self.log()[-3000:]}"
        return status

    def pids(self, role: str | None = None) -> list[int]:
        return [p["pid"] for p in self.status()["processes"] if role is None or p["role"] == role]

    def worker_pids(self) -> dict[int, int]:
        """Worker slot -> pid of the workers not retiring."""
        return {p["slot"]: p["pid"] for p in self.status()["processes"]
                if p["role"] == "worker" and p["state"] != "retiring"}

    def wait_for(self, predicate: Callable[[dict], Any], what: str, timeout: float = 20) -> Any:
        """Poll status until predicate(status) is truthy; returns what it returned."""
        def check() -> Any:
            status = self.try_status()
            return predicate(status) if status else None
        return poll(check, timeout, what)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """/metrics on the metrics port: sample name with labels -> value."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["metrics"], timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200, response.status
            text = response.read().decode()
        finally:
            conn.close()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """`appliancectl --runtime-dir <run> ARGS` as a subprocess."""
        return subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", "--runtime-dir",
                               str(self.runtime_dir), *args], env=child_env(), capture_output=True, text=True,
                              timeout=timeout)


def http_status(app: Appliance, hash_: str, token: str | None = None) -> tuple[int, bytes]:
    """(status, body) of GET /blob?hash=[&edge_token=] on a fresh connection to the appliance's HTTP port."""
    query = f"/blob?hash={hash_}" + (f"&edge_token={token}" if token is not None else "")
    conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=30)
    try:
        conn.request("GET", query, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def peer_get(app: Appliance, hash_: str) -> bytes | None:
    """The blob over the TCP peer protocol on a fresh connection; None when refused or not found."""
    from appliance.clients.peer import PeerClient
    from appliance.errors import BlobNotFound

    with PeerClient("127.0.0.1", app.ports["tcp_peer"], timeout=30) as client:
        try:
            return client.get_blob(hash_)
        except BlobNotFound:
            return None


def http_get(port: int, hash_: str, timeout: float = 30) -> bytes:
    """GET /blob?hash= on a fresh connection; the body (AssertionError on a non-200 answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/blob?hash={hash_}", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, f"HTTP {response.status}: {body[:200]!r}"
        return body
    finally:
        conn.close()


class Load:
    """Bounded load: `threads` client threads GET random blobs, each on a fresh connection, until stop().

    Every request is recorded as (started, finished, error or None), monotonic seconds; a body that is not
    the expected blob is an error. At most `max_requests` requests and `max_seconds` seconds in all.
    """

    def __init__(self, port: int, blobs: dict[str, bytes], threads: int = 4, max_requests: int = 3000,
                 max_seconds: float = 60):
        self.port, self.blobs, self.hashes = port, blobs, list(blobs)
        self.max_requests, self.deadline = max_requests, time.monotonic() + max_seconds
        self.records: list[tuple[float, float, str | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            with self._lock:
                if len(self.records) >= self.max_requests:
                    return
            hash_ = rng.choice(self.hashes)
            started = time.monotonic()
            try:
                error = None if http_get(self.port, hash_) == self.blobs[hash_] else "wrong body"
            except (OSError, AssertionError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.records.append((started, time.monotonic(), error))

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def wait_count(self, n: int, timeout: float = 30) -> None:
        """Wait until at least n more requests than now have completed."""
        target = self.count() + n
        poll(lambda: self.count() >= target, timeout, f"{n} more requests to complete")

    def stop(self) -> list[tuple[float, float, str | None]]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return list(self.records)

    def failures(self) -> list[tuple[float, float, str]]:
        return [r for r in self.records if r[2] is not None]


def write_blobs(root: Path, count: int, size: int) -> dict[str, bytes]:
    """`count` random blobs of `size` bytes in reflector.go's layout under root; hash -> data."""
    import hashlib

    blobs = {}
    for _ in range(count):
        data = os.urandom(size)
        hash_ = hashlib.sha384(data).hexdigest()
        (root / hash_[:2]).mkdir(parents=True, exist_ok=True)
        (root / hash_[:2] / hash_).write_bytes(data)
        blobs[hash_] = data
    return blobs


@pytest.fixture(name="appliance")
def appliance_fixture(tmp_path: Path):
    """A factory: appliance(*flags, env=None, dht=False, http3=False, wait=True, name=None) -> Appliance."""
    started: list[Appliance] = []

    def start(*args: str, env: dict[str, str] | None = None, dht: bool = False, http3: bool = False,
              wait: bool = True, name: str | None = None) -> Appliance:
        app = Appliance(tmp_path / (name or f"appliance{len(started)}"), args, env, dht, http3)
        started.append(app)
        return app.start(wait=wait)

    yield start
    for app in reversed(started):
        app.kill_all()
