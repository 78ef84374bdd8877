"""Stream-through misses (issue 13) against real `prism reflector` processes and a scripted HTTP origin.

The origin (OriginServer below) is a real socket server in this process that speaks the `/blob?hash=`
endpoint and can send wrong bytes, stall in the middle of a blob, or accept and never answer; it counts
the requests it gets.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.appliance_process import appliance_fixture, poll  # noqa: F401  (the `appliance` fixture)
from tests.test_cache_appliance_support import cached_path, concurrent_fetch, counter, fetch
from tests.test_http3_support import H3Probe, free_udp_port

CHUNK = 64 * 1024


class OriginServer(socketserver.ThreadingTCPServer):
    """GET /blob?hash=H answers `blobs[H]` (or `forged[H]`, same length, wrong bytes) in CHUNK pieces,
    `delay` seconds apart; mode "silent" accepts and never answers; mode "stall" sends half then waits
    for `release`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.blobs: dict[str, bytes] = {}
        self.forged: dict[str, bytes] = {}
        self.mode = "serve"
        self.delay = 0.0
        self.requests: list[str] = []
        self.half_sent = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def add(self, data: bytes) -> str:
        hash_ = hashlib.sha384(data).hexdigest()
        self.blobs[hash_] = data
        return hash_

    def count(self, hash_: str) -> int:
        with self.lock:
            return self.requests.count(hash_)

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _OriginHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: OriginServer = self.server
        while True:
            line = self.rfile.readline()
            if not line:
                return
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            hash_ = parse_qs(urlsplit(line.split()[1].decode()).query).get("hash", [""])[0]
            with server.lock:
                server.requests.append(hash_)
            if server.mode == "silent":
                server.release.wait(120)
                return
            body = server.forged.get(hash_, server.blobs.get(hash_))
            if body is None:
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for offset in range(0, len(body), CHUNK):
                if server.mode == "stall" and offset >= len(body) // 2:
                    self.wfile.flush()
                    server.half_sent.set()
                    server.release.wait(120)
                    return
                self.wfile.write(body[offset:offset + CHUNK])
                self.wfile.flush()
                if server.delay:
                    time.sleep(server.delay)


@pytest.fixture
def origin():
    server = OriginServer()
    yield server
    server.stop()


def cache_node(appliance, origin: OriginServer, cache: Path, *extra: str, workers: str = "1"):
    return appliance("--workers", workers, "--upstream-reflector", origin.address, "--upstream-protocol", "http",
                     "--disk-cache", f"200MB:{cache}:lru", *extra)


def origin_failures(app, reason: str) -> float:
    return counter(app, f'appliance_origin_failures_total{{reason="{reason}"}}')


def blob_files(cache: Path) -> list[Path]:
    """Blob files visible under their names (prefix directories), not temp files."""
    return [p for p in cache.glob("??/*") if p.is_file()]


def test_wrong_bytes_from_the_origin_never_reach_a_client_whole_and_are_never_cached(appliance, origin, tmp_path):
    good = os.urandom(1024 * 1024)
    hash_ = origin.add(good)
    origin.forged[hash_] = bytes(b ^ 0xFF for b in good[:10]) + good[10:]  # same length, wrong bytes
    origin.delay = 0.005  # the body arrives in pieces: the appliance relays it before it can know
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache)

    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=30)
        try:
            conn.request("GET", f"/blob?hash={hash_}")
            response = conn.getresponse()
            if response.status == 200:  # the header went out with the first bytes; the body must break
                with pytest.raises(http.client.IncompleteRead) as cut:
                    response.read()
                assert len(cut.value.partial) < len(good)
        finally:
            conn.close()
    assert origin_failures(app, "hash_mismatch") == 2
    assert not cached_path(cache, hash_).exists()
    assert blob_files(cache) == []
    poll(lambda: not any((cache / "tmp").iterdir()), 10, "the aborted temp files to be removed")

    del origin.forged[hash_]  # the origin mends: the blob is fetched again, served and cached
    assert fetch(app.ports["http"], hash_) == (200, good)
    assert cached_path(cache, hash_).read_bytes() == good


def test_wrong_bytes_relayed_over_the_tcp_peer_protocol_end_in_a_closed_connection(appliance, origin, tmp_path):
    good = os.urandom(1024 * 1024)
    hash_ = origin.add(good)
    origin.forged[hash_] = good[:-10] + bytes(10)  # the mismatch shows only at the very end
    origin.delay = 0.005
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache)

    with socket.create_connection(("127.0.0.1", app.ports["tcp_peer"]), timeout=30) as sock:
        sock.sendall(json.dumps({"requested_blob": hash_}).encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    header_end = received.index(b"}}") + 2  # {"incoming_blob": {...}} then the body
    assert json.loads(received[:header_end])["incoming_blob"]["length"] == len(good)
    assert len(received) - header_end < len(good)  # closed before the announced length
    assert origin_failures(app, "hash_mismatch") == 1
    assert blob_files(cache) == []


def http3_cache_node(appliance, origin: OriginServer, cache: Path) -> tuple[object, int]:
    port = free_udp_port()
    app = appliance("--workers", "1", "--upstream-reflector", origin.address, "--upstream-protocol", "http",
                    "--disk-cache", f"200MB:{cache}:lru", "--http3-peer-port", str(port), "--http3-processes", "1",
                    http3=True)
    return app, port


def test_an_http3_client_gets_a_cold_blob_while_it_arrives_and_never_whole_when_it_breaks(appliance, origin,
                                                                                          tmp_path):
    good = os.urandom(1024 * 1024)
    hash_ = origin.add(good)
    origin.mode = "stall"  # half the blob, then the origin waits for `release` and hangs up
    cache = tmp_path / "cache"
    app, port = http3_cache_node(appliance, origin, cache)
    with H3Probe(port, timeout=30) as probe:
        stream_id = probe.send(f"/get/{hash_}")
        response = probe.responses[stream_id]
        # the origin has sent half and waits: the client has its headers and bytes already
        probe.pump_until(lambda: len(response["body"]) > 0 or response["done"])
        # (the origin flags `half_sent` just after its send returns: the bytes can reach the client first)
        assert origin.half_sent.wait(10) and not response["done"]
        headers = dict(response["headers"])
        assert headers[b":status"] == b"200" and int(headers[b"content-length"]) == len(good)
        origin.release.set()  # the origin hangs up: the response must break, not end
        probe.pump_until(lambda: response["done"])
        assert response["reset"] and len(response["body"]) < len(good)
    assert not cached_path(cache, hash_).exists()

    origin.mode, origin.forged[hash_] = "serve", bytes(b ^ 0xFF for b in good[:10]) + good[10:]
    origin.delay = 0.005
    with H3Probe(port, timeout=30) as probe, pytest.raises(ConnectionError, match="reset"):
        probe.request(f"/get/{hash_}")  # wrong bytes: never a complete body
    assert origin_failures(app, "hash_mismatch") == 1 and not cached_path(cache, hash_).exists()

    del origin.forged[hash_]
    with H3Probe(port, timeout=30) as probe:
        status, _, body = probe.request(f"/get/{hash_}")
    assert (status, body) == (200, good)
    assert cached_path(cache, hash_).read_bytes() == good


def test_a_hundred_concurrent_requests_for_one_cold_blob_make_one_origin_request(appliance, origin, tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    hash_ = origin.add(data)
    origin.delay = 0.01  # ~0.3 s of transfer: the requests overlap it
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache, workers="2")

    results = concurrent_fetch(app.ports["http"], hash_, 100)
    bad = [r if isinstance(r, BaseException) else (r[0], len(r[1])) for r in results if r != (200, data)]
    assert bad == []
    assert origin.count(hash_) == 1
    assert cached_path(cache, hash_).read_bytes() == data


def test_kill_9_of_the_worker_streaming_a_miss_leaves_nothing_visible(appliance, origin, tmp_path):
    data = os.urandom(1024 * 1024)
    hash_ = origin.add(data)
    origin.mode = "stall"
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache)
    worker, = app.pids("worker")

    received = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", app.ports["http"]), timeout=30) as sock:
            sock.sendall(f"GET /blob?hash={hash_} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                while chunk := sock.recv(65536):
                    received.append(chunk)
            except OSError:
                pass
    reader = threading.Thread(target=client)
    reader.start()
    assert origin.half_sent.wait(30)
    poll(lambda: len(list((cache / "tmp").iterdir())) == 1, 10, "the cache copy being written")
    os.kill(worker, signal.SIGKILL)
    reader.join(30)
    head, _, body = b"".join(received).partition(b"\r\n\r\n")
    assert len(body) < len(data)  # the client saw the transfer break, not a whole blob
    assert not cached_path(cache, hash_).exists()

    origin.mode = "serve"
    origin.release.set()
    app.wait_for(lambda s: any(p["role"] == "worker" and p["pid"] != worker and p["state"] == "ready"
                               for p in s["processes"]), "a new worker")
    assert not cached_path(cache, hash_).exists()  # still nothing under the blob's name
    assert fetch(app.ports["http"], hash_) == (200, data)
    assert cached_path(cache, hash_).read_bytes() == data
    poll(lambda: not any((cache / "tmp").iterdir()), 10, "the dead worker's temp file to be removed")


def test_an_upstream_that_accepts_and_never_answers_fails_the_miss_at_the_first_byte_timeout(appliance, origin,
                                                                                             tmp_path):
    hash_ = origin.add(os.urandom(1000))
    origin.mode = "silent"
    app = cache_node(appliance, origin, tmp_path / "cache", "--upstream-first-byte-timeout", "1",
                     "--upstream-idle-timeout", "600")
    status, body = fetch(app.ports["http"], hash_, timeout=60)  # far below the idle timeout
    assert (status, body) == (500, b"internal server error")  # the details go to the log only
    assert "no answer within 1s" in app.log()
    assert origin.count(hash_) == 1
    assert origin_failures(app, "first_byte_timeout") == 1


def test_a_transfer_that_stalls_fails_at_the_idle_timeout_and_is_not_cached(appliance, origin, tmp_path):
    data = os.urandom(512 * 1024)
    hash_ = origin.add(data)
    origin.mode = "stall"
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache, "--upstream-idle-timeout", "1", "--upstream-first-byte-timeout", "600")
    conn = http.client.HTTPConnection("127.0.0.1", app.ports["http"], timeout=60)
    try:
        conn.request("GET", f"/blob?hash={hash_}")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()
    assert origin_failures(app, "idle_timeout") == 1
    assert not cached_path(cache, hash_).exists()


def test_cache_files_cut_short_or_corrupted_by_an_unclean_stop_are_refetched_never_served(appliance, origin,
                                                                                           tmp_path):
    short, corrupt, intact = (os.urandom(700_000) for _ in range(3))
    hashes = [origin.add(d) for d in (short, corrupt, intact)]
    cache = tmp_path / "cache"
    app = cache_node(appliance, origin, cache, "--cache-sync-interval", "3600")  # no sync after the boot one
    for hash_, data in zip(hashes, (short, corrupt, intact), strict=True):
        assert fetch(app.ports["http"], hash_) == (200, data)

    os.killpg(app.proc.pid, signal.SIGKILL)  # as a power loss: no process gets to clean up or sync
    app.proc.wait(10)
    with open(cached_path(cache, hashes[0]), "r+b") as f:  # what an unsynced file may look like afterwards
        f.truncate(len(short) // 2)
    with open(cached_path(cache, hashes[1]), "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 4096)

    app.start()
    for hash_, data in zip(hashes, (short, corrupt, intact), strict=True):
        assert fetch(app.ports["http"], hash_) == (200, data)
    assert [origin.count(h) for h in hashes] == [2, 2, 1]  # the two damaged copies were refetched
    assert cached_path(cache, hashes[0]).read_bytes() == short
    assert cached_path(cache, hashes[1]).read_bytes() == corrupt
    assert "checked 3 cache file(s)" in app.log()
