"""The disk cache and the memory cache in a running appliance (issue 5 acceptance): a size bound that holds at
every moment under 200 MB of traffic, what lru and lfu keep, a restart over 1,000,000 index entries, and
--mem-cache serving a worker's second request from memory. Real `prism reflector` subprocesses on 127.0.0.1;
the origin is a standalone appliance whose local storage the test fills directly."""
from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.cache.index import CacheIndex, index_path
from appliance.cache.policies import make_policy
from tests.appliance_process import (
    Appliance,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    child_env,
    free_ports,
    http_get,
    poll,
    write_blobs,
)
from tests.test_cache_appliance_support import (
    HTTP_DOWNLOADS,
    blob_bytes_on_disk,
    cached_path,
    counter,
    manager_status,
    upstream_flags,
)

MiB = 1024 * 1024
CAPACITY = 50 * MiB  # --disk-cache 50MB: reflector.go's units are binary
BLOB = 2_000_000  # 26 of them fit
CLIENTS = 3  # concurrent misses, so several blobs are fetched and written at once


class Sampler:
    """Samples a cache's size on disk and the manager's used_bytes in a thread until stop(); keeps the maxima."""

    def __init__(self, app: Appliance, cache_dir):
        self.app, self.cache_dir = app, cache_dir
        self.max_disk = self.max_index = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_disk = max(self.max_disk, blob_bytes_on_disk(self.cache_dir))
            if self.samples % 5 == 0:
                self.max_index = max(self.max_index, manager_status(self.app)["used_bytes"])
            self.samples += 1
            self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_hits(app: Appliance, hits: int) -> None:
    """Wait until the manager has recorded `hits` cache hits (workers report them in batches)."""
    poll(lambda: manager_status(app)["hits"] >= hits, 10, f"the cache manager to record {hits} hits")


@pytest.mark.parametrize("manager", ["lru", "lfu"])
def test_a_50MB_cache_under_200MB_of_traffic_stays_bounded_and_keeps_what_its_policy_wants(appliance, tmp_path,
                                                                                           manager):
    origin = appliance("--workers", "1", name="origin", wait=False)
    cache_dir = tmp_path / "disk-cache"
    app = appliance("--workers", "2", *upstream_flags(origin, "http", cache_dir, "50MB", manager), name="cache",
                    wait=False)
    blobs = write_blobs(origin.dir / "data" / "blobs", 100, BLOB)  # 200 MB
    for a in (origin, app):
        a.wait_ready()
    hashes = list(blobs)
    hot, cold = hashes[:4], hashes[4:]

    def get(hash_: str) -> None:
        assert http_get(app.ports["http"], hash_) == blobs[hash_]

    sampler = Sampler(app, cache_dir)
    pool = ThreadPoolExecutor(CLIENTS)
    try:
        hits = 0
        for hash_ in hot:
            get(hash_)
        if manager == "lfu":  # the hot blobs are used often, then never again while the cold ones stream past
            for _ in range(5):
                for hash_ in hot:
                    get(hash_)
            hits += 5 * len(hot)
            wait_hits(app, hits)
        for start in range(0, len(cold), 12):
            list(pool.map(get, cold[start:start + 12]))
            if manager == "lru":  # the hot blobs are used again and again, never often in one go
                for hash_ in hot:
                    get(hash_)
                hits += len(hot)
                wait_hits(app, hits)
    finally:
        pool.shutdown()
        sampler.stop()

    assert sampler.samples > 50
    assert sampler.max_index <= CAPACITY
    assert sampler.max_disk <= CAPACITY + BLOB, f"{sampler.max_disk} bytes on disk (at most one blob in flight)"
    present = {h for h in hashes if cached_path(cache_dir, h).exists()}
    assert 20 <= len(present) <= CAPACITY // BLOB
    assert set(hot) <= present, f"{manager} evicted {len(set(hot) - present)} of the 4 hot blobs"
    assert not present & set(cold[:60]), "blobs neither recent nor frequent survived"
    status = app.wait_for(lambda s: s["cache"] if s["cache"].get("evictions", 0) >= 70 else None,
                          "the evictions in appliancectl status")
    assert status["used_bytes"] <= status["capacity_bytes"] == CAPACITY


def build_index(cache_dir, entries: int, real: dict[str, bytes]) -> None:
    """A cache index of `entries` synthetic blobs (no files) plus the `real` ones (written as files)."""
    index = CacheIndex(index_path(str(cache_dir)), make_policy("lru", 4 * 1024 ** 3))
    index.load()
    for i in range(entries):
        index.add(f"{i:096x}", 1000)
    for hash_, data in real.items():
        cached_path(cache_dir, hash_).parent.mkdir(parents=True, exist_ok=True)
        cached_path(cache_dir, hash_).write_bytes(data)
        index.add(hash_, len(data))
    index.close()


def test_restart_over_a_million_index_entries_serves_from_the_index(appliance, tmp_path):
    # How long the restart takes is measured by scripts/bench cache; a test asserts no timing.
    cache_dir = tmp_path / "disk-cache"
    real = write_blobs(tmp_path / "source", 3, 100_000)
    build_index(cache_dir, 1_000_000, real)
    dead_upstream = free_ports(1)[0]  # nothing listens there: every hit must come from the disk cache
    flags = ("--workers", "1", "--upstream-reflector", f"127.0.0.1:{dead_upstream}", "--upstream-protocol", "http",
             "--disk-cache", f"4GB:{cache_dir}:lru")

    app = appliance(*flags, name="clean", wait=False)
    app.wait_ready(timeout=60)
    assert app.status()["cache"]["blobs"] == 1_000_003
    for hash_, data in real.items():
        assert http_get(app.ports["http"], hash_) == data
    assert app.stop() == 0

    # The same index after a crash (not marked clean): the loader checks the 1,000,000 entries against the
    # directory in the background (~15 s here); readiness does not wait for it.
    crashed = CacheIndex(index_path(str(cache_dir)), make_policy("lru", 4 * 1024 ** 3))
    crashed.load()  # marks a run in progress in the journal ...
    crashed._close_quietly()  # ... that never stops cleanly
    app.start(wait=False)
    status = app.wait_ready(timeout=60)
    assert status["cache"]["blobs"] > 900_000, "readiness waited for the loader"
    for hash_, data in real.items():
        assert http_get(app.ports["http"], hash_) == data
    app.wait_for(lambda s: s["cache"]["blobs"] < 900_000, "the loader to forget entries without files", 30)


def test_mem_cache_serves_a_workers_second_request_from_memory(appliance, tmp_path):
    origin = appliance("--workers", "1", name="origin", wait=False)
    cache_dir = tmp_path / "disk-cache"
    app = appliance("--workers", "1", "--mem-cache", "2", *upstream_flags(origin, "http", cache_dir), name="cache",
                    wait=False)
    blobs = write_blobs(origin.dir / "data" / "blobs", 4, 300_000)
    for a in (origin, app):
        a.wait_ready()
    x, y, z, w = blobs

    def origin_requests() -> float:
        return counter(origin, HTTP_DOWNLOADS)

    assert http_get(app.ports["http"], x) == blobs[x]  # a miss: fetched, written to disk, kept in memory
    assert origin_requests() == 1
    cached_path(cache_dir, x).unlink()
    assert http_get(app.ports["http"], x) == blobs[x]  # the one worker answers from memory
    assert origin_requests() == 1

    for hash_ in (y, z):  # two more blobs push x out of a 2-blob memory cache
        assert http_get(app.ports["http"], hash_) == blobs[hash_]
    assert origin_requests() == 3
    assert http_get(app.ports["http"], x) == blobs[x]  # neither in memory nor on disk: fetched again
    assert origin_requests() == 4

    # A disk hit is kept in memory too (as reflector.go's caching layers do).
    cached_path(cache_dir, w).parent.mkdir(parents=True, exist_ok=True)
    cached_path(cache_dir, w).write_bytes(blobs[w])  # a file the worker finds in the cache directory
    assert http_get(app.ports["http"], w) == blobs[w]
    cached_path(cache_dir, w).unlink()
    assert http_get(app.ports["http"], w) == blobs[w]
    assert origin_requests() == 4


OFF_HUB_PROBE = """
from gevent import monkey
monkey.patch_all()
import threading
import gevent
from appliance.stores.tiered import off_hub

blocking_sleep = monkey.get_original("time", "sleep")

def write(fail):
    blocking_sleep(0.2)  # a slow write + fsync
    if fail:
        raise OSError(28, "No space left on device")
    return threading.get_ident()

ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(5)])
writer = off_hub(write, False)
print(len(ticks), writer != threading.get_ident())
try:
    off_hub(write, True)
except OSError as exc:
    print("raised", exc.errno)
"""


def test_disk_writes_leave_a_gevent_workers_hub_free_and_keep_their_errors():
    """In a monkey-patched process a cache write runs in a thread: other greenlets run meanwhile, and its
    OSError reaches the caller (without gevent printing a traceback)."""
    result = subprocess.run([sys.executable, "-c", OFF_HUB_PROBE], env=child_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["5 True", "raised 28"], result.stdout
    assert "Traceback" not in result.stderr, result.stderr
