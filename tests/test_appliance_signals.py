"""Signals and systemd: HUP under load loses nothing, TERM lets a slow transfer finish, and a fake
NOTIFY_SOCKET sees READY / STATUS / WATCHDOG / RELOADING / STOPPING as systemd expects them."""
from __future__ import annotations

import hashlib
import signal
import socket
import statistics
import threading
import time

from tests.appliance_process import (
    Load,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    pid_alive,
    poll,
    write_blobs,
)

MIB2 = 2 * 1024 * 1024


def test_hup_under_load_replaces_every_worker_with_zero_failed_requests(appliance, tmp_path):
    blobs = write_blobs(tmp_path / "blobs", 8, MIB2)
    app = appliance("--workers", "2", "--graceful-timeout", "10", "--storage-dir", str(tmp_path / "blobs"))
    old = set(app.worker_pids().values())
    manager = app.pids("cache-manager")
    load = Load(app.ports["http"], blobs, threads=4)
    try:
        load.wait_count(30)
        app.signal(signal.SIGHUP)
        app.wait_for(lambda s: s["state"] == "ready" and len(s["processes"]) == 3
                     and set(app.worker_pids().values()).isdisjoint(old), "every worker replaced")
        load.wait_count(30)
    finally:
        records = load.stop()
    assert [r for r in records if r[2] is not None] == []
    assert not any(pid_alive(pid) for pid in old)
    assert app.pids("cache-manager") == manager  # its settings did not change: it keeps running
    assert app.stop() == 0


def test_term_during_a_slow_2_mib_transfer_finishes_it_then_exits_0(appliance, tmp_path):
    blobs = write_blobs(tmp_path / "blobs", 1, MIB2)
    (hash_, data), = blobs.items()
    app = appliance("--workers", "1", "--graceful-timeout", "20", "--storage-dir", str(tmp_path / "blobs"))
    children, manager = app.pids(), app.pids("cache-manager")[0]
    client = socket.socket()
    # A small window and small segments keep the kernel from buffering the whole blob at once: the worker
    # is still in its sendfile loop when TERM arrives (with 64 KiB loopback segments it would be done).
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
    client.connect(("127.0.0.1", app.ports["http"]))
    client.sendall(f"GET /blob?hash={hash_} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = bytearray()
    term_at = checked = None
    while True:
        chunk = client.recv(16384)
        if not chunk:
            break  # the server closes the keep-alive connection after the response: it is stopping
        received += chunk
        time.sleep(0.02)  # a slow reader: about 0.8 MB/s
        if term_at is None and len(received) > 256 * 1024:
            app.signal(signal.SIGTERM)  # mid-transfer
            term_at = len(received)
        if term_at is not None and checked is None and len(received) > term_at + 512 * 1024:
            # Well over a megabyte is still to come, more than the kernel buffers hold: the worker is sending.
            assert app.proc.poll() is None, "the appliance exited before the transfer was done"
            assert pid_alive(manager), "the cache manager stopped before the workers"
            checked = len(received)
    client.close()
    header, _, body = bytes(received).partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200 OK") and f"Content-Length: {MIB2}".encode() in header
    assert checked is not None and hashlib.sha384(body).hexdigest() == hash_
    assert app.wait_exit(30) == 0
    assert not [pid for pid in children if pid_alive(pid)]


class NotifySocket:
    """A fake systemd notify socket: collects (monotonic time, fields) of every datagram."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait(self, key: str, value: str | None = None, after: float = 0.0, timeout: float = 20) -> float:
        """Time of the first message after `after` carrying key (=value); waits for it."""
        def find() -> float | None:
            return next((t for t, f in self.snapshot() if t > after and key in f
                         and (value is None or f[key] == value)), None)
        return poll(find, timeout, f"{key}={value or '*'} on the notify socket")

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_status_watchdog_reloading_stopping(appliance, tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        app = appliance("--workers", "2", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                               "WATCHDOG_USEC": "2000000"})
        ready = notify.wait("READY", "1")
        first_ready = next(f for t, f in notify.snapshot() if t == ready)
        assert first_ready["STATUS"] == "ready: 2 workers, cache-manager"
        # READY=1 comes only once every role is up; before it, status lines (and watchdog pings).
        assert all(set(f) <= {"STATUS", "WATCHDOG"} for t, f in notify.snapshot() if t < ready)

        notify.wait("WATCHDOG", "1", after=ready + 3.5, timeout=10)  # three and a half seconds of pings
        pings = [t for t, f in notify.snapshot() if f.get("WATCHDOG") == "1" and ready <= t <= ready + 3.5]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        # About every second (half of WATCHDOG_USEC), and never as late as the 2 s after which systemd kills.
        assert len(pings) >= 3 and 0.8 <= statistics.median(gaps) <= 1.4 and all(0.5 <= g < 2 for g in gaps), gaps

        hup = time.monotonic()
        app.signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", "1", after=hup)
        reload_message = next(f for t, f in notify.snapshot() if t == reloading)
        assert int(reload_message["MONOTONIC_USEC"]) > 0  # Type=notify-reload requires it
        reloaded = notify.wait("READY", "1", after=reloading)
        assert reloaded > reloading
        assert app.status()["state"] == "ready"

        term = time.monotonic()
        app.signal(signal.SIGTERM)
        notify.wait("STOPPING", "1", after=term)
        assert app.wait_exit(30) == 0
    finally:
        notify.close()


def test_a_reload_with_a_broken_config_keeps_the_running_one(appliance, tmp_path):
    conf = tmp_path / "appliance.toml"
    conf.write_text("mem_cache = 0\n")
    app = appliance("--workers", "1", "--conf", str(conf))
    workers = app.worker_pids()
    for broken, complaint in (("mem_cache = [\n", "cannot parse config file"),
                              ('disk_cache = "lots:somewhere"\n', "is formatted incorrectly")):
        conf.write_text(broken)
        app.signal(signal.SIGHUP)
        poll(lambda complaint=complaint: complaint in app.log(), 10, f"the reload to refuse: {complaint}")
        assert app.status()["state"] == "ready" and app.worker_pids() == workers
    conf.write_text("mem_cache = 16\n")
    app.signal(signal.SIGHUP)
    app.wait_for(lambda s: s["config"]["values"]["mem_cache"] == 16 and s["state"] == "ready"
                 and set(app.worker_pids().values()).isdisjoint(workers.values()), "the good config applied")
    assert app.stop() == 0
