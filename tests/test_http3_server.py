"""The HTTP/3 blob server (spec §3d) on a real UDP socket, driven by an independent sans-io HTTP/3 client."""
import asyncio
import json
import os
import socket
import ssl
import threading
import time

import pytest
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from test_http3_support import H3Probe, ServerThread, wait_for

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import OriginError
from appliance.http3 import server as h3server
from appliance.stores.base import BlobStore
from appliance.stores.disk import DiskStore
from appliance.trace import Trace

HAS_BODY = '{{"lbrycrd_address":"bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct","is_available":{}}}'


class CountingStore(BlobStore):
    """A real store in front of another: optional delay per get, and the highest number of concurrent gets."""

    def __init__(self, inner: BlobStore, delay: float = 0.0):
        self.inner, self.delay = inner, delay
        self.active = self.max_active = 0
        self.lock = threading.Lock()

    def has(self, hash_):
        return self.inner.has(hash_)

    def get(self, hash_):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            return self.inner.get(hash_)
        finally:
            with self.lock:
                self.active -= 1


class FailingStore(BlobStore):
    def has(self, hash_):
        raise OriginError("upstream exploded")

    def get(self, hash_):
        raise OriginError("upstream exploded")


class Protected:
    def __init__(self, *hashes):
        self.hashes = set(hashes)

    def is_protected(self, hash_):
        return hash_ in self.hashes


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    store = DiskStore(str(tmp_path_factory.mktemp("blobs")))
    data = {}
    for payload in (b"\x00", os.urandom(2 * 1024 * 1024), b'{"stream_name": "x"}'):
        data[blob_hash(payload)] = payload
        store.put(blob_hash(payload), payload)
    return store, data


@pytest.fixture(scope="module")
def server(blobs, tmp_path_factory):
    with ServerThread(blobs[0], str(tmp_path_factory.mktemp("cert"))) as srv:
        yield srv


def _counter(metric) -> float:
    return metric._value.get()


def test_get_serves_blobs_with_trace_on_request(server, blobs):
    _, data = blobs
    before = (_counter(metrics.HTTP3_DOWNLOAD_TOTAL), _counter(metrics.UDP_OUT_BYTES))
    with H3Probe(server.port) as probe:
        for h, payload in data.items():
            status, headers, body = probe.request(f"/get/{h}?trace=true")
            assert status == 200 and body == payload
            assert headers[b"content-length"] == str(len(payload)).encode()
            assert [hop.origin_name for hop in Trace.from_json(headers[b"via"]).stacks] == ["disk"]
            expected_type = b"text/plain; charset=utf-8" if payload.startswith(b"{") else b"application/octet-stream"
            assert headers[b"content-type"] == expected_type
        # A 2 MiB blob went out in datagrams a real network carries (1,452 bytes of UDP payload at most).
        assert 1200 <= probe.largest_datagram <= 1452
        h = next(iter(data))
        for query in ("", "?trace=false", "?trace=yes"):  # Go's ParseBool: anything else is false
            status, headers, _ = probe.request(f"/get/{h}{query}")
            assert status == 200 and b"via" not in headers
        assert b"via" in probe.request(f"/get/{h}?trace=T")[1]
        assert probe.request(f"/get/{h}", method="POST")[0] == 200  # any method, as reflector.go
    assert _counter(metrics.HTTP3_DOWNLOAD_TOTAL) - before[0] == len(data) + 5
    assert _counter(metrics.UDP_OUT_BYTES) - before[1] >= sum(len(p) for p in data.values())


def test_has_and_not_found_answer_like_reflector_go(server, blobs):
    _, data = blobs
    missing = blob_hash(b"nobody has this")
    with H3Probe(server.port) as probe:
        status, headers, body = probe.request(f"/has/{next(iter(data))}")
        assert (status, body.decode()) == (200, HAS_BODY.format("true"))
        assert headers[b"content-type"] == b"application/json"
        assert probe.request(f"/has/{missing}")[::2] == (404, HAS_BODY.format("false").encode())
        status, headers, body = probe.request(f"/get/{missing}?trace=true")
        assert (status, body) == (404, b"blob not found\n")
        assert [hop.origin_name for hop in Trace.from_json(headers[b"via"]).stacks] == ["disk"]
        for path in ("/get/abc", f"/get/{missing.upper()}", "/has/../../etc/passwd", f"/get/{missing}x"):
            assert probe.request(path)[::2] == (400, b"invalid blob hash\n"), path
        assert probe.request("/blob")[::2] == (404, b"404 page not found\n")


def test_misses_are_remembered(blobs, tmp_path):
    store = DiskStore(str(tmp_path / "blobs"))
    payload = os.urandom(100)
    h = blob_hash(payload)
    with ServerThread(store, str(tmp_path / "cert")) as srv, H3Probe(srv.port) as probe:
        assert probe.request(f"/get/{h}")[0] == 404
        store.put(h, payload)
        status, headers, _ = probe.request(f"/get/{h}?trace=1")
        assert status == 404  # from the misses cache, not the store
        assert [hop.origin_name for hop in Trace.from_json(headers[b"via"]).stacks] == ["http3"]
        assert probe.request(f"/has/{h}")[0] == 200


def test_protected_blobs_need_the_edge_token(blobs, tmp_path):
    store, data = blobs
    secret, public = list(data)[:2]
    with ServerThread(store, str(tmp_path / "a"), protected=Protected(secret), edge_token="tok") as srv, \
            H3Probe(srv.port) as probe:
        assert probe.request(f"/get/{secret}")[::2] == (403, b"requested blob is protected\n")
        assert probe.request(f"/get/{secret}?edge_token=wrong")[0] == 403
        assert probe.request(f"/get/{secret}?edge_token=tok")[::2] == (200, data[secret])
        assert probe.request(f"/get/{public}")[0] == 200
    with ServerThread(store, str(tmp_path / "b"), protected=Protected(secret)) as srv, H3Probe(srv.port) as probe:
        assert probe.request(f"/get/{secret}?edge_token=")[0] == 403  # no token configured: nobody gets it


def test_store_errors_are_a_generic_500_and_classified(tmp_path, caplog):
    counter = metrics.ERROR_TOTAL.labels(direction="download", error_type="other")
    before = _counter(counter)
    with ServerThread(FailingStore(), str(tmp_path)) as srv, H3Probe(srv.port) as probe:
        h = blob_hash(b"x")
        assert probe.request(f"/get/{h}")[::2] == (500, b"internal server error\n")
        assert probe.request(f"/has/{h}")[::2] == (500, b"internal server error\n")
    assert _counter(counter) - before == 2
    assert "upstream exploded" in caplog.text  # the details go to the log only


def _send_requests(probe: H3Probe, paths: list[str]) -> list[int]:
    """Several requests in flight at once on one connection; their statuses in order."""
    ids = [probe.send(path) for path in paths]
    probe.pump_until(lambda: all(probe.responses[i]["done"] for i in ids))
    return [int(dict(probe.responses.pop(i)["headers"])[b":status"]) for i in ids]


def test_request_queue_size_bounds_concurrent_gets(blobs, tmp_path):
    store, data = blobs
    counting = CountingStore(store, delay=0.2)
    with ServerThread(counting, str(tmp_path), queue_size=2) as srv, H3Probe(srv.port) as probe:
        statuses = _send_requests(probe, [f"/get/{h}" for h in list(data) * 2])
    assert statuses == [200] * 6
    assert counting.max_active == 2


def test_gets_beyond_the_waiting_limit_get_503(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(h3server, "MAX_WAITING", 1)
    store, data = blobs
    h = next(iter(data))
    with ServerThread(CountingStore(store, delay=0.3), str(tmp_path), queue_size=1) as srv, \
            H3Probe(srv.port) as probe:
        assert _send_requests(probe, [f"/get/{h}"] * 3) == [200, 200, 503]  # running, waiting, refused


def test_a_client_that_stops_reading_loses_its_slot_after_the_send_timeout(blobs, tmp_path):
    _, data = blobs
    # Larger than a first congestion window, so a client that never acknowledges cannot be sent all of it;
    # small enough that the next client takes it well within the send timeout on a loaded machine.
    payload = os.urandom(300_000)
    big = blob_hash(payload)
    store = DiskStore(str(tmp_path / "stall"))
    store.put(big, payload)
    data = {big: payload}
    with ServerThread(store, str(tmp_path), queue_size=1, send_timeout=2.0) as srv:
        stalled = H3Probe(srv.port)
        stream_id = stalled.quic.get_next_available_stream_id()
        stalled.h3.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                                            (b":path", f"/get/{big}".encode())], end_stream=True)
        for datagram, addr in stalled.quic.datagrams_to_send(now=time.monotonic()):
            stalled.sock.sendto(datagram, addr)  # ... and never reads or acknowledges anything again
        wait_for(lambda: srv.service.in_flight == 1, 5, "the stalled request to take the only slot")
        started = time.monotonic()
        with H3Probe(srv.port) as probe:
            status, _, body = probe.request(f"/get/{big}")
        assert status == 200 and body == data[big]
        assert time.monotonic() - started >= 1.0  # it had to wait for the stalled client's slot
        stalled.sock.close()


def test_graceful_drain_finishes_requests_in_flight_and_refuses_new_ones(blobs, tmp_path):
    store, data = blobs
    h = next(iter(data))
    with ServerThread(CountingStore(store, delay=1.0), str(tmp_path)) as srv:
        results = {}

        def slow_request():
            with H3Probe(srv.port) as probe:
                results["slow"] = probe.request(f"/get/{h}")

        slow = threading.Thread(target=slow_request)
        slow.start()
        wait_for(lambda: srv.service.in_flight == 1, 5, "the slow request")
        drained = asyncio.run_coroutine_threadsafe(srv.service.drain(10), srv.loop)
        wait_for(lambda: srv.service.stopping, 5, "the drain to start")
        with H3Probe(srv.port) as probe:
            assert probe.request(f"/get/{h}")[::2] == (503, b"server is shutting down\n")
        assert drained.result(10) is True
        slow.join(10)
        assert results["slow"][0] == 200 and results["slow"][2] == data[h]


def test_garbage_datagrams_and_abandoned_handshakes_do_not_disturb_service(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(h3server, "HANDSHAKE_TIMEOUT", 2.0)  # not 4 s, to keep the test short
    store, data = blobs
    h = next(iter(data))
    with ServerThread(store, str(tmp_path)) as srv:
        addr = ("127.0.0.1", srv.port)
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind(("127.0.0.1", 0))
        for i in range(300):  # short and long header shapes, Initial-sized and not, and plain noise
            first = bytes([0xC0 | (i & 0x3F)]) if i % 3 else os.urandom(1)
            junk.sendto(first + os.urandom([5, 40, 1199, 1200, 1400][i % 5]), addr)
        abandoned = []
        for _ in range(30):  # a client Initial each, then silence
            quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                                                  verify_mode=ssl.CERT_NONE))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            quic.connect(addr, now=time.monotonic())
            for datagram, to in quic.datagrams_to_send(now=time.monotonic()):
                sock.sendto(datagram, to)
            abandoned.append(sock)
        wait_for(lambda: len(srv.call(lambda: set(srv.service.open_connections))) >= 25, 5,
                 "the server to hold the half-open handshakes")
        with H3Probe(srv.port) as probe:
            assert probe.request(f"/get/{h}")[::2] == (200, data[h])
            assert probe.request(f"/has/{h}")[0] == 200
        # Half-open connections are held only until the handshake timeout, not the 20 s idle timeout.
        wait_for(lambda: not srv.call(lambda: set(srv.service.open_connections)), 10,
                 "the abandoned handshakes to be dropped")
        with H3Probe(srv.port) as probe:
            assert probe.request(f"/get/{h}")[::2] == (200, data[h])
        junk.close()
        for sock in abandoned:
            sock.close()


def test_has_body_is_json(server, blobs):
    _, data = blobs
    with H3Probe(server.port) as probe:
        _, _, body = probe.request(f"/has/{next(iter(data))}")
    assert json.loads(body) == {"lbrycrd_address": "bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct", "is_available": True}
