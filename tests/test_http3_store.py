"""Http3Store against the real HTTP/3 server: verified blobs, traces, one reused connection, timeouts,
reconnects after the upstream restarts, and use from gevent greenlets without blocking the hub."""
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_http3_server import CountingStore, FailingStore
from test_http3_support import ROOT, AioquicBlobServer, ServerThread, free_udp_port

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound, NotImplementedByStore, OriginError
from appliance.http3.client import H3Client
from appliance.stores.base import Blob, BlobStore
from appliance.stores.disk import DiskStore
from appliance.stores.http3 import Http3Store


class LyingStore(BlobStore):
    """Answers every get with bytes that do not hash to the name."""

    def get(self, hash_):
        return Blob(hash_, data=b"not what you asked for")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    store = DiskStore(str(tmp_path_factory.mktemp("blobs")))
    data = {}
    for size in (1, 5000, 2 * 1024 * 1024, 2 * 1024 * 1024):
        payload = os.urandom(size)
        data[blob_hash(payload)] = payload
        store.put(blob_hash(payload), payload)
    return store, data


@pytest.fixture
def upstream(blobs, tmp_path):
    with ServerThread(blobs[0], str(tmp_path / "cert")) as srv:
        yield srv


@pytest.fixture
def store(upstream):
    s = Http3Store(f"127.0.0.1:{upstream.port}", timeout=10)
    yield s
    s.shutdown()


def test_get_and_has_verified_with_the_upstream_trace_stacked(store, blobs):
    _, data = blobs
    before = metrics.UDP_IN_BYTES._value.get()
    for h, payload in data.items():
        with store.get(h) as blob:
            assert blob.data == payload
            assert [hop.origin_name for hop in blob.trace.stacks] == ["disk", "http3"]
        assert store.has(h) is True
    assert metrics.UDP_IN_BYTES._value.get() - before == sum(len(p) for p in data.values())
    missing = blob_hash(b"missing")
    assert store.has(missing) is False
    with pytest.raises(BlobNotFound) as info:
        store.get(missing)
    assert [hop.origin_name for hop in info.value.trace.stacks] == ["disk", "http3"]


def test_more_concurrent_requests_than_the_server_allows_streams_wait_for_credit(upstream, blobs):
    """The server grants 100 streams at a time (MAX_STREAMS); 250 requests at once on one connection all succeed."""
    _, data = blobs
    h = next(h for h, p in data.items() if len(p) == 5000)

    async def burst():
        client = H3Client(f"127.0.0.1:{upstream.port}")
        try:
            return await asyncio.gather(*(client.get(("127.0.0.1", upstream.port), f"/get/{h}", timeout=60,
                                                     max_body=10_000) for _ in range(250)))
        finally:
            await client.close()

    responses = asyncio.run(burst())
    assert [(r.status, r.body) for r in responses] == [(200, data[h])] * 250


def test_fetches_from_an_upstream_on_the_other_quic_stack(blobs, tmp_path):
    """Our client (qh3) against a server built on aioquic: statuses and bytes as from our own server."""
    _, data = blobs
    with AioquicBlobServer(data, str(tmp_path / "cert")) as upstream:
        store = Http3Store(f"127.0.0.1:{upstream.port}", timeout=20)
        try:
            for h, payload in data.items():
                with store.get(h) as blob:
                    assert blob.data == payload
                assert store.has(h) is True
            assert store.has(blob_hash(b"missing")) is False
            with pytest.raises(BlobNotFound):
                store.get(blob_hash(b"missing"))
        finally:
            store.shutdown()


def test_writes_are_not_implemented_and_hashes_are_checked_first(store):
    with pytest.raises(NotImplementedByStore):
        store.put(blob_hash(b"x"), b"x")
    with pytest.raises(NotImplementedByStore):
        store.delete(blob_hash(b"x"))
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")
    with pytest.raises(ValueError):
        Http3Store("no-port")


def test_bad_data_and_upstream_errors_are_origin_errors(tmp_path):
    h = blob_hash(b"x")
    with ServerThread(LyingStore(), str(tmp_path / "a")) as srv:
        s = Http3Store(f"127.0.0.1:{srv.port}", timeout=5)
        with pytest.raises(OriginError, match="do not match its hash"):
            s.get(h)
        s.shutdown()
    with ServerThread(FailingStore(), str(tmp_path / "b")) as srv:
        s = Http3Store(f"127.0.0.1:{srv.port}", timeout=5)
        with pytest.raises(OriginError, match=r"non 200 status code returned: 500 \(internal server error\)"):
            s.get(h)
        with pytest.raises(OriginError, match="500"):
            s.has(h)
        s.shutdown()


def test_concurrent_gets_share_one_connection(store, upstream, blobs):
    _, data = blobs
    hashes = list(data) * 6
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda h: store.get(h).data == data[h], hashes))
    assert all(results)
    assert len(upstream.service.connections) == 1
    assert upstream.service.requests == len(hashes)


def test_timeout_is_honoured_and_the_connection_survives_it(blobs, tmp_path):
    inner, data = blobs
    slow = CountingStore(inner, delay=5.0)
    with ServerThread(slow, str(tmp_path)) as srv:
        s = Http3Store(f"127.0.0.1:{srv.port}", timeout=0.5)
        h = next(iter(data))
        started = time.monotonic()
        with pytest.raises(OriginError, match="i/o timeout"):
            s.get(h)
        assert time.monotonic() - started < 3.0  # not the 5 s the upstream takes
        slow.delay = 0.0
        assert s.get(h).data == data[h]
        assert len(srv.service.connections) == 1  # the timed-out stream was cancelled, not the connection
        s.shutdown()


def test_reconnects_after_the_upstream_restarts(blobs, tmp_path):
    inner, data = blobs
    h = next(iter(data))
    port = free_udp_port()
    srv = ServerThread(inner, str(tmp_path), port=port).start()
    s = Http3Store(f"127.0.0.1:{port}", timeout=15)
    try:
        assert s.get(h).data == data[h]
        srv.stop()  # gone without a CONNECTION_CLOSE, like a killed process
        started = time.monotonic()
        with pytest.raises(OriginError):
            s.get(h)  # nothing listens: ICMP port unreachable fails it fast
        assert time.monotonic() - started < 5
        srv = ServerThread(inner, str(tmp_path), port=port).start()
        assert s.get(h).data == data[h]
        srv.stop()  # the restarted server will not know the connection and drops its packets silently
        srv = ServerThread(inner, str(tmp_path), port=port).start()
        started = time.monotonic()
        assert s.get(h).data == data[h]
        assert time.monotonic() - started < 8  # found dead by the liveness ping, not the 20 s idle timeout
        assert s.has(h)
    finally:
        s.shutdown()
        srv.stop()


GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent
from appliance.stores.http3 import Http3Store

port, hashes = int(sys.argv[1]), sys.argv[2].split(",")
store = Http3Store(f"127.0.0.1:{port}", timeout=20)
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.01)
tick = gevent.spawn(ticker)
started = time.monotonic()
jobs = [gevent.spawn(lambda h=h: len(store.get(h).data)) for h in hashes]
gevent.joinall(jobs, raise_error=True)
elapsed = time.monotonic() - started
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
tick.kill()
store.shutdown()
print(json.dumps({"sizes": [j.value for j in jobs], "elapsed": elapsed, "ticks": len(ticks),
                  "max_gap": max(gaps)}))
"""


def test_from_gevent_greenlets_without_blocking_the_hub(blobs, tmp_path):
    inner, data = blobs
    with ServerThread(CountingStore(inner, delay=3.0), str(tmp_path)) as srv:
        hashes = list(data) * 2
        out = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, str(srv.port), ",".join(hashes)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["sizes"] == [len(data[h]) for h in hashes]
        # The gets waited >= 3 s on the upstream; the hub kept running its other greenlets meanwhile (a
        # blocked hub would show one gap as long as the wait, and a handful of ticks). The margin is wide: a
        # loaded machine may not schedule the process for a while.
        assert result["elapsed"] >= 3.0 and result["ticks"] >= 20
        assert result["max_gap"] < 2.0
        assert len(srv.service.connections) == 1  # every greenlet's request went over one connection
