"""Health and drain: /health 200 → 503 on `appliancectl drain` or a graceful stop, while blobs are still
served; the TCP peer and upload ports refuse new connections (a real connect) while an established
connection goes on; `undrain` puts everything back, also for a worker respawned during the drain."""
from __future__ import annotations

import http.client
import os
import signal
import socket

from tests.appliance_process import (
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    http_get,
    peer_get,
    poll,
    write_blobs,
)


def health(port: int, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/health")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def connects(port: int) -> bool:
    """Whether a TCP connect to 127.0.0.1:port succeeds (what HAProxy's plain `check` does)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


def tcp_ports(app) -> list[int]:
    return [app.ports["tcp_peer"], app.ports["receiver"]]


def all_refuse(app) -> bool:
    # With two workers each port has two SO_REUSEPORT sockets: several connects sample both.
    return not any(connects(port) for port in tcp_ports(app) for _ in range(8))


def all_accept(app) -> bool:
    return all(connects(port) for port in tcp_ports(app) for _ in range(8))


def test_drain_and_undrain(appliance, tmp_path):
    blobs = write_blobs(tmp_path / "blobs", 3, 1000)
    app = appliance("--workers", "2", "--storage-dir", str(tmp_path / "blobs"))
    port = app.ports["http"]
    assert health(port) == (200, b"ok\n")
    assert health(port, "HEAD")[0] == 200
    assert all_accept(app)
    hash_ = next(iter(blobs))
    from appliance.clients.peer import PeerClient

    with PeerClient("127.0.0.1", app.ports["tcp_peer"], timeout=10) as established:
        assert established.get_blob(hash_) == blobs[hash_]
        result = app.ctl("drain")
        assert result.returncode == 0, result.stderr
        assert health(port) == (503, b"draining\n")  # at once: `drain` answers once the flag is set
        assert http_get(port, hash_) == blobs[hash_]  # blobs are still served
        poll(lambda: all_refuse(app), 5, "the TCP ports to refuse connections")
        assert established.get_blob(hash_) == blobs[hash_]  # an established connection goes on
        assert app.status()["state"] == "draining"

    # A worker that is respawned during the drain starts drained.
    old = app.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    app.wait_for(lambda s: app.worker_pids().get(0) not in (None, old[0])
                 and all(p["state"] == "ready" for p in s["processes"]), "worker 0 respawned")
    assert all_refuse(app)
    assert health(port)[0] == 503

    result = app.ctl("undrain")
    assert result.returncode == 0, result.stderr
    assert health(port) == (200, b"ok\n")
    poll(lambda: all_accept(app), 5, "the TCP ports to accept again")
    for _ in range(20):  # fresh connections, spread over both slots (the respawned worker's among them)
        assert peer_get(app, hash_) == blobs[hash_]
    assert app.status()["state"] == "ready"
    assert app.stop() == 0


def test_graceful_stop_drains_first_and_serves_meanwhile(appliance, tmp_path):
    blobs = write_blobs(tmp_path / "blobs", 2, 1000)
    app = appliance("--workers", "1", "--drain-seconds", "3", "--storage-dir", str(tmp_path / "blobs"))
    port = app.ports["http"]
    assert health(port)[0] == 200
    app.signal(signal.SIGTERM)
    poll(lambda: health(port)[0] == 503, 5, "/health to answer 503")
    hash_ = next(iter(blobs))
    assert http_get(port, hash_) == blobs[hash_]  # still serving while the balancer moves away
    poll(lambda: all_refuse(app), 5, "the TCP ports to refuse connections")
    assert app.proc.poll() is None  # the stop waits for the drain period
    result = app.ctl("undrain")
    assert result.returncode == 1 and "stopping" in result.stderr
    assert app.wait_exit(30) == 0
    assert "draining for" in app.log()


PAUSE_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, socket
import gevent
from appliance.servers.http import HttpServer
from appliance.servers.standalone import listen
from appliance.stores.memory import MemoryStore

probe = listen("127.0.0.1", 0)
port = probe.getsockname()[1]
probe.close()
# An explicit port, as the appliance binds: a socket bound to port 0 loses its port when it stops listening.
listener = listen("127.0.0.1", port)
server = HttpServer(listener, MemoryStore())
# Handshakes the kernel completed but nobody accepted yet: the accept queue.
queued = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
server.start()
server.pause()  # before the hub ran the accept loop: all five are still queued
answers = []
for sock in queued:
    sock.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    try:
        answers.append(sock.recv(100).split(b" ")[1].decode())
    except OSError as exc:
        answers.append(type(exc).__name__)
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    refused = False
except ConnectionRefusedError:
    refused = True
server.resume()
again = socket.create_connection(("127.0.0.1", port), timeout=2)
again.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
print(json.dumps({"answers": answers, "refused": refused, "resumed": again.recv(100).split(b" ")[1].decode()}))
"""


def test_pause_serves_the_accept_queue_refuses_new_connections_and_resume_accepts_again():
    import json
    import subprocess
    import sys

    from tests.appliance_process import REPO, child_env

    out = subprocess.run([sys.executable, "-c", PAUSE_SCRIPT], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env=child_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"answers": ["200"] * 5, "refused": True, "resumed": "200"}
