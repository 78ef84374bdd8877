import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound
from appliance.stores.disk import DiskStore
from appliance.stores.http import HttpStore
from appliance.stores.memory import MemoryStore
from appliance.stores.singleflight import SingleFlightStore


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def waiting(component, cache_type):
    return metrics.CACHE_WAITING_REQUESTS.labels(cache_type=cache_type, component=component)._value.get()


class SlowOrigin(ThreadingHTTPServer):
    """A real HTTP blob origin on 127.0.0.1 that counts GETs and answers each one only when `ready()`."""

    daemon_threads = True

    def __init__(self, blobs):
        self.blobs, self.gets, self.ready = blobs, 0, lambda: True
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with self.server.lock:
            self.server.gets += 1
        wait_for(self.server.ready)
        data = self.server.blobs.get(parse_qs(urlparse(self.path).query).get("hash", [""])[0])
        self.send_response(200 if data else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_origin():
    data = os.urandom(100_000)
    server = SlowOrigin({blob_hash(data): data})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server, blob_hash(data), data
    server.shutdown()
    server.server_close()


def _concurrently(n, fn):
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def fetches(outcome: str) -> float:
    return metrics.ORIGIN_FETCHES_TOTAL.labels(outcome=outcome)._value.get()


def test_twenty_concurrent_gets_make_one_origin_request(slow_origin):
    server, h, data = slow_origin
    store = SingleFlightStore(HttpStore(f"127.0.0.1:{server.server_address[1]}"), "test-sf20")
    fetched = fetches("ok")
    server.ready = lambda: waiting("test-sf20", "sf_http") == 20  # every caller has joined the flight
    results, errors = _concurrently(20, lambda: store.get_bytes(h))
    assert errors == [] and results == [data] * 20
    assert server.gets == 1 and fetches("ok") == fetched + 1  # one origin fetch, counted once
    server.ready = lambda: True
    assert store.get_bytes(h) == data and server.gets == 2  # a later call starts a new flight
    assert fetches("ok") == fetched + 2
    labels = {"cache_type": "sf_http", "component": "test-sf20"}
    assert metrics.CACHE_ORIGIN_REQUESTS.labels(**labels)._value.get() == 0
    assert metrics.CACHE_WAITING_REQUESTS.labels(**labels)._value.get() == 0


def test_waiters_share_a_not_found_but_get_their_own_trace(slow_origin):
    server, _, _ = slow_origin
    store = SingleFlightStore(HttpStore(f"127.0.0.1:{server.server_address[1]}"), "test-sf5")
    server.ready = lambda: waiting("test-sf5", "sf_http") == 5
    not_found = fetches("notfound")
    results, errors = _concurrently(5, lambda: store.get(blob_hash(b"missing")))
    assert len(errors) == 5 and all(isinstance(e, BlobNotFound) for e in errors)
    assert len({id(e.trace) for e in errors}) == 5
    assert server.gets == 1 and fetches("notfound") == not_found + 1


class SlowDisk(DiskStore):
    def __init__(self, root):
        super().__init__(root)
        self.calls = 0

    def get(self, hash_):
        self.calls += 1
        wait_for(lambda: waiting("test-sf-disk", "sf_disk") == 8)
        return super().get(hash_)


def test_file_backed_blobs_are_shared_as_separate_descriptors(tmp_path):
    disk = SlowDisk(str(tmp_path))
    data = os.urandom(10_000)
    h = blob_hash(data)
    disk.put(h, data)
    store = SingleFlightStore(disk, "test-sf-disk")
    blobs, errors = _concurrently(8, lambda: store.get(h))
    assert errors == [] and disk.calls == 1
    assert len({b.file.fileno() for b in blobs}) == 8
    blobs[0].close()  # closing one caller's copy does not break the others
    for blob in blobs[1:]:
        assert os.pread(blob.file.fileno(), blob.size, 0) == data
        assert blob.trace.stacks[-1].origin_name == "sf_disk"
        blob.close()


class GatedStore(MemoryStore):
    """Puts wait for `gate`; counts how many reach the store."""

    def __init__(self):
        super().__init__()
        self.puts, self.gate = 0, threading.Event()

    def put(self, hash_, data):
        self.puts += 1
        self.gate.wait(5)
        super().put(hash_, data)


def test_puts_are_collapsed_separately_from_gets():
    inner = GatedStore()
    store = SingleFlightStore(inner, "test-sf-put")
    data = b"payload"
    h = blob_hash(data)
    threads = [threading.Thread(target=store.put, args=(h, data)) for _ in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: waiting("test-sf-put", "sf_mem") == 6)
    # A get overlapping the put of the same hash is a real miss, not the put's empty outcome (§10.12).
    with pytest.raises(BlobNotFound):
        store.get(h)
    inner.gate.set()
    for t in threads:
        t.join()
    assert inner.puts == 1 and store.get_bytes(h) == data


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import time, gevent
from appliance.blob import blob_hash
from appliance.stores.memory import MemoryStore
from appliance.stores.singleflight import SingleFlightStore

class Slow(MemoryStore):
    calls = 0
    def get(self, hash_):
        Slow.calls += 1
        time.sleep(0.3)  # patched: yields to the other greenlets
        return super().get(hash_)

inner = Slow()
inner.put(blob_hash(b"x"), b"x")
store = SingleFlightStore(inner, "gevent")
started = time.monotonic()
jobs = [gevent.spawn(store.get_bytes, blob_hash(b"x")) for _ in range(20)]
gevent.joinall(jobs, raise_error=True)
print(Slow.calls, all(j.value == b"x" for j in jobs), round(time.monotonic() - started, 1))
"""


def test_collapses_greenlets_when_threading_is_monkey_patched():
    out = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    calls, ok, elapsed = out.stdout.split()
    assert (calls, ok) == ("1", "True") and float(elapsed) < 1.0
