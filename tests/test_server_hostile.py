"""Hostile input on each port never crashes the server, never blocks other clients, and memory stays bounded."""
import json
import os
import socket
import time

import pytest
from server_process import ServerProcess, closed_by_peer, recv_exactly, recv_json, rss_kib

from appliance.blob import MAX_BLOB_SIZE, blob_hash
from appliance.protocol import peer as peer_codec
from appliance.protocol import reflector as codec

BLOB = os.urandom(MAX_BLOB_SIZE)
HASH = blob_hash(BLOB)


@pytest.fixture(scope="module")
def srv():
    with ServerProcess("--store", "memory", "--receiver-port", "0", "--peer-port", "0", "--http-port", "0",
                       "--idle-timeout", "30", "--upload-timeout", "30", "--header-timeout", "30",
                       "--send-timeout", "2") as server:
        with server.connect("receiver") as sock:
            sock.sendall(codec.encode_handshake(1))
            recv_json(sock)
            sock.sendall(codec.encode_blob_request(HASH, len(BLOB)))
            assert recv_json(sock)[0] == {"send_blob": True}
            sock.sendall(BLOB)
            assert recv_json(sock)[0] == {"received_blob": True}
        yield server
        assert server.alive()


def healthy(server) -> None:
    """Every port still answers a well-behaved client promptly."""
    started = time.monotonic()
    with server.connect("peer", timeout=5) as sock:
        sock.sendall(peer_codec.encode_request(HASH))
        header, rest = recv_json(sock)
        length = peer_codec.accept_blob(peer_codec.parse_response(header), HASH)
        assert rest + recv_exactly(sock, length - len(rest)) == BLOB
    with server.connect("http", timeout=5) as sock:
        sock.sendall(f"HEAD /blob?hash={HASH} HTTP/1.1\r\n\r\n".encode())
        assert sock.recv(1000).startswith(b"HTTP/1.1 204")
    with server.connect("receiver", timeout=5) as sock:
        sock.sendall(codec.encode_handshake(0))
        assert recv_json(sock)[0] == {"version": 0}
    assert time.monotonic() - started < 5


NESTED = b'{"a":' * 10000 + b"1" + b"}" * 10000
HOSTILE = {
    "garbage": os.urandom(65536),
    "braces": b"}" * 100_000,
    "nested": NESTED,
    "nested_lists": b"{" + b"[" * 10000,
}


@pytest.mark.parametrize("port", ["receiver", "peer", "http"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_bytes_close_only_that_connection(srv, port, kind):
    with srv.connect(port) as sock:
        try:
            sock.sendall(HOSTILE[kind])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already hung up on the first bytes
        assert closed_by_peer(sock)
    healthy(srv)


def test_a_2_gb_declared_size_is_refused(srv):
    with srv.connect("receiver") as sock:
        sock.sendall(codec.encode_handshake(1))
        recv_json(sock)
        sock.sendall(json.dumps({"blob_hash": HASH, "blob_size": 2 * 1024 ** 3}).encode())
        assert closed_by_peer(sock)
    with srv.connect("http") as sock:
        sock.sendall(f"GET /blob?hash={HASH} HTTP/1.1\r\nContent-Length: 2147483648\r\n\r\n".encode())
        assert closed_by_peer(sock)
    with srv.connect("peer") as sock:
        sock.sendall(json.dumps({"requested_blob": HASH, "length": 2 * 1024 ** 3}).encode())
        header, _ = recv_json(sock)
        assert header["incoming_blob"]["length"] == MAX_BLOB_SIZE  # the field is ignored: the blob is served
    healthy(srv)


def test_500_idle_connections_per_port_neither_block_others_nor_grow_memory(srv):
    before = rss_kib(srv.proc.pid)
    idle = []
    try:
        for port in ("receiver", "peer", "http"):
            for _ in range(500):
                idle.append(srv.connect(port))
        for sock in idle[::50]:  # some of them started a message and stalled
            sock.sendall(b"{")
        healthy(srv)
        grown = rss_kib(srv.proc.pid) - before
        assert grown < 100 * 1024, f"server grew by {grown} KiB for 1500 idle connections"
    finally:
        for sock in idle:
            sock.close()
    healthy(srv)


@pytest.mark.parametrize("port", ["peer", "http"])
def test_a_client_that_reads_nothing_is_dropped_without_blocking_others(srv, port):
    request = (peer_codec.encode_request(HASH) if port == "peer"
               else f"GET /blob?hash={HASH} HTTP/1.1\r\n\r\n".encode())
    with srv.connect(port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.5)
        try:  # ask for 20 x 2 MiB and read none of it for longer than the server's 2 s send timeout
            for _ in range(20):
                sock.sendall(request)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        stalled_since = time.monotonic()
        before = rss_kib(srv.proc.pid)
        while time.monotonic() - stalled_since < 3:
            healthy(srv)  # meanwhile everybody else is served
        assert rss_kib(srv.proc.pid) - before < 50 * 1024
        received = drain(sock)
        assert received < 20 * MAX_BLOB_SIZE  # the server gave up on this client instead of waiting forever
    healthy(srv)


def drain(sock) -> int:
    """Read until the server closes the connection; the byte count."""
    total = 0
    sock.settimeout(10)
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total
