"""Per-source limits on the worker ports (issue 15 item 8), with real connections to real processes:
a per-IP connection cap on the upload, TCP peer and HTTP ports, and the upload port's idle timeout."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest
from server_process import ServerProcess, closed_by_peer, metric, recv_json

from appliance.blob import blob_hash
from appliance.protocol import peer as peer_codec
from appliance.protocol import reflector as codec
from tests.appliance_process import appliance_fixture  # noqa: F401

HASH = "ab" * 48


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection to 127.0.0.1:port from `source` (another loopback address is another client IP)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def served(kind: str, sock: socket.socket) -> bool:
    """Whether one request on this connection is answered (and the connection stays usable)."""
    try:
        if kind == "peer":
            sock.sendall(peer_codec.encode_request(HASH))
            return "incoming_blob" in recv_json(sock)[0]
        if kind == "http":
            sock.sendall(f"HEAD /blob?hash={HASH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return sock.recv(4096).startswith(b"HTTP/1.1 404")
        sock.sendall(codec.encode_handshake(1))
        return recv_json(sock)[0] == {"version": 1}
    except (OSError, EOFError):
        return False


@pytest.mark.parametrize("kind", ["receiver", "peer", "http"])
def test_a_client_ip_over_its_connection_cap_is_refused_and_others_are_not(kind):
    with ServerProcess("--store", "memory", "--receiver-port", "0", "--peer-port", "0", "--http-port", "0",
                       "--max-per-ip", "3", "--print-metrics") as srv:
        port = srv.ports[kind]
        held = [connect(port) for _ in range(3)]
        assert all(served(kind, sock) for sock in held)
        extra = connect(port)
        if kind == "http":  # HTTP clients are told why
            assert extra.recv(4096).startswith(b"HTTP/1.1 503 ")
        assert closed_by_peer(extra)
        other = connect(port, source="127.0.0.2")  # another client is not affected
        assert served(kind, other)
        held.pop().close()  # a slot frees up once one of the three closes
        deadline = time.monotonic() + 10
        while True:
            again = connect(port)
            if served(kind, again):
                break
            again.close()
            assert time.monotonic() < deadline, "a freed slot was never reused"
        for sock in held + [again, other, extra]:
            sock.close()
        out, _ = srv.stop()
    refused = metric(out, f'appliance_connections_closed_total{{reason="per_ip_cap",server="{kind}"}}')
    assert refused >= 1


def test_without_a_cap_many_connections_from_one_ip_are_served():
    with ServerProcess("--store", "memory", "--peer-port", "0") as srv:
        socks = [connect(srv.ports["peer"]) for _ in range(20)]
        assert all(served("peer", sock) for sock in socks)
        for sock in socks:
            sock.close()


def test_the_appliance_caps_one_ip_across_its_workers(appliance):  # noqa: F811
    app = appliance("--workers", "2", "--max-connections-per-ip", "4")  # 2 per worker
    port = app.ports["tcp_peer"]
    socks = [connect(port) for _ in range(16)]
    accepted = [sock for sock in socks if served("peer", sock)]
    # Each worker holds at most its share (2); SO_REUSEPORT decides which worker gets each connection.
    assert 2 <= len(accepted) <= 4
    assert served("peer", connect(port, source="127.0.0.2"))
    for sock in socks:
        sock.close()


# --- the upload port's idle timeout --------------------------------------------------------------------

def test_idle_upload_connections_are_closed_after_the_idle_timeout_but_slow_uploads_are_not():
    data = os.urandom(5000)
    h = blob_hash(data)
    # The per-message timeout (30 s) is far beyond what closed_by_peer waits (10 s): only the idle
    # timeout (1 s) can close these connections in time.
    with ServerProcess("--store", "memory", "--receiver-port", "0", "--peer-port", "0", "--idle-timeout", "1",
                       "--upload-timeout", "30", "--print-metrics") as srv:
        with srv.connect("receiver") as silent:  # connects and sends nothing
            assert closed_by_peer(silent)
        with srv.connect("receiver") as idle:  # handshakes, then sends nothing
            idle.sendall(codec.encode_handshake(1))
            assert recv_json(idle)[0] == {"version": 1}
            assert closed_by_peer(idle)
        with srv.connect("receiver") as slow:  # every part of the upload slower than the idle timeout
            handshake = codec.encode_handshake(1)
            for part in (handshake[:5], handshake[5:]):
                slow.sendall(part)
                time.sleep(0.6)
            assert recv_json(slow)[0] == {"version": 1}
            request = codec.encode_blob_request(h, len(data))
            for i in range(0, len(request), 20):
                slow.sendall(request[i:i + 20])
                time.sleep(0.3)
            assert recv_json(slow)[0] == {"send_blob": True}
            for i in range(0, len(data), 1000):
                slow.sendall(data[i:i + 1000])
                time.sleep(0.6)
            assert recv_json(slow)[0] == {"received_blob": True}
        with srv.connect("peer") as peer:
            peer.sendall(json.dumps({"requested_blobs": [h]}).encode())
            assert recv_json(peer)[0]["available_blobs"] == [h]
        out, _ = srv.stop()
    assert metric(out, 'appliance_connections_closed_total{reason="idle",server="receiver"}') == 2
