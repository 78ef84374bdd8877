"""A cache can never take the appliance down (issue 15, item 2), with real processes and a real small filesystem:
a cache configured larger than its filesystem, a full disk under the index, a `kill -9` of the cache manager,
a full restart, and a cache manager that cannot start at all. Misses keep being served throughout, and
`appliancectl status` and /metrics say the cache is degraded and why."""
from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.appliance_process import (
    Appliance,
    Load,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    free_ports,
    http_get,
    poll,
    write_blobs,
)
from tests.small_fs import (
    fill,
    free_bytes,
    small_fs_fixture,  # noqa: F401  (the `small_fs` fixture)
)
from tests.test_cache_appliance_support import cached_path, upstream_flags

MiB = 1024 * 1024
BLOB = 300_000
DEGRADED = 'appliance_cache_degraded{reason="%s"}'


class FreeSpaceSampler:
    """Samples a filesystem's free bytes in a thread until stop(); keeps the minimum."""

    def __init__(self, root: Path):
        self.root, self.min_free, self.samples = root, free_bytes(root), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.min_free = min(self.min_free, free_bytes(self.root))
            self.samples += 1
            self._stop.wait(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.min_free


def get_all(app: Appliance, blobs: dict[str, bytes], clients: int = 3) -> None:
    def get(hash_: str) -> None:
        assert http_get(app.ports["http"], hash_) == blobs[hash_]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(get, blobs))


def serving(app: Appliance) -> dict:
    """Wait until the supervisor is ready and every worker too (a cache manager may be down); its status."""
    def check(s: dict) -> dict | None:
        workers = [p for p in s["processes"] if p["role"] == "worker"]
        return s if s["state"] == "ready" and workers and all(p["state"] == "ready" for p in workers) else None
    return app.wait_for(check, "the appliance to serve", 30)


def cache_degraded(app: Appliance, reason: str) -> dict:
    return app.wait_for(lambda s: s["cache"] if reason in (s["cache"].get("degraded") or {}) else None,
                        f"status to show the cache degraded ({reason})")


def test_a_cache_larger_than_its_filesystem_never_fills_it(small_fs, appliance):
    root = small_fs(10)
    cache_dir = root / "cache"
    origin = appliance("--workers", "1", name="origin", wait=False)
    blobs = write_blobs(origin.dir / "data" / "blobs", 60, BLOB)  # 18 MB through a 10 MiB filesystem
    hashes = list(blobs)
    edge = appliance("--workers", "2", *upstream_flags(origin, "http", cache_dir, "100MB"), name="edge", wait=False)
    origin.wait_ready()
    edge.wait_ready()
    sampler = FreeSpaceSampler(root)
    try:
        get_all(edge, blobs)
        cache = cache_degraded(edge, "capacity")
        assert cache["state"] == "degraded" and cache["capacity_bytes"] < 10 * MiB
        assert "configured" in cache["degraded"]["capacity"]
        assert edge.metrics()[DEGRADED % "capacity"] == 1
        text = edge.ctl("status")
        assert "cache   degraded (capacity)" in text.stdout, text.stdout
        cached = [h for h in hashes if cached_path(cache_dir, h).exists()]
        assert 10 <= len(cached) < 35, "the cache kept what fits"

        # kill -9 of the cache manager under load: every request still answered.
        manager = edge.pids("cache-manager")[0]
        load = Load(edge.ports["http"], blobs, threads=3)
        try:
            load.wait_count(20)
            os.kill(manager, signal.SIGKILL)
            edge.wait_for(lambda s: any(p["role"] == "cache-manager" and p["pid"] != manager and p["state"] == "ready"
                                        for p in s["processes"]), "a new cache manager")
            load.wait_count(40)
        finally:
            records = load.stop()
        assert not [r for r in records if r[2] is not None], [r for r in records if r[2]][:3]
        cache = cache_degraded(edge, "capacity")
        assert "manager" not in cache["degraded"]  # the manager is back
        # The supervisor's loop clears the gauge when it sees the new manager ready (status may say so first).
        poll(lambda: edge.metrics()[DEGRADED % "manager"] == 0, 10, "the manager's degraded gauge to clear")

        # A full restart over the same small filesystem.
        assert edge.stop() == 0
        edge.start()
        get_all(edge, blobs)
        cache_degraded(edge, "capacity")
    finally:
        min_free = sampler.stop()
    assert sampler.samples > 100
    assert min_free > 0, "the cache filesystem reached 100 %"
    assert "Traceback" not in edge.log()


def test_a_full_disk_under_the_index_at_restart_serves_with_an_index_in_memory(small_fs, appliance):
    root = small_fs(10)
    cache_dir = root / "cache"
    origin = appliance("--workers", "1", name="origin", wait=False)
    blobs = write_blobs(origin.dir / "data" / "blobs", 12, BLOB)
    hashes = list(blobs)
    edge = appliance("--workers", "2", *upstream_flags(origin, "http", cache_dir, "100MB"), name="edge", wait=False)
    origin.wait_ready()
    edge.wait_ready()
    get_all(edge, {h: blobs[h] for h in hashes[:6]})
    assert edge.stop() == 0
    filler = fill(root)  # something else filled the disk while the appliance was stopped
    assert free_bytes(root) == 0

    edge.start(wait=False)
    serving(edge)
    cache = cache_degraded(edge, "index")
    assert "capacity" in cache["degraded"]
    assert edge.metrics()[DEGRADED % "index"] == 1
    get_all(edge, blobs)  # misses served (nothing can be cached: no room)
    assert free_bytes(root) > 0, "the cache gave its blobs back to the full disk"

    filler.unlink()  # room again: the capacity follows the free space, caching resumes (unsaved)
    edge.wait_for(lambda s: "capacity" not in (s["cache"].get("degraded") or {}) or
                  s["cache"]["capacity_bytes"] > 4 * MiB, "the capacity to grow back")
    fresh = write_blobs(origin.dir / "data" / "blobs", 2, BLOB)
    get_all(edge, fresh)
    assert all(cached_path(cache_dir, h).exists() for h in fresh)

    assert edge.stop() == 0
    edge.start()  # the index opens again: rebuilt from a scan, saved again
    status = edge.wait_for(lambda s: s["cache"] if s["cache"].get("blobs", 0) >= 2 else None,
                           "the rescanned blobs in the index")
    assert "index" not in status["degraded"]
    get_all(edge, blobs)
    assert "Traceback" not in edge.log()


def test_a_cache_manager_that_cannot_start_leaves_the_workers_serving(appliance, tmp_path):
    origin = appliance("--workers", "1", name="origin", wait=False)
    blobs = write_blobs(origin.dir / "data" / "blobs", 4, BLOB)
    dead_mysql = free_ports(1)[0]  # the localdb manager's database is not there: the manager cannot start
    edge = appliance("--workers", "2", *upstream_flags(origin, "http", tmp_path / "cache", "100MB", "localdb"),
                     "--localdb-conn", f"reflector:reflector@tcp(127.0.0.1:{dead_mysql})/reflector",
                     name="edge", wait=False)
    origin.wait_ready()
    status = serving(edge)  # READY without the cache manager
    assert edge.proc.poll() is None
    cache = cache_degraded(edge, "manager")
    assert "could not start" in cache["degraded"]["manager"]
    get_all(edge, blobs)  # misses straight from the origin
    assert not any(cached_path(tmp_path / "cache", h).exists() for h in blobs)
    assert edge.metrics()[DEGRADED % "manager"] == 1
    text = edge.ctl("status")
    assert text.returncode == 0 and "cache   degraded (manager)" in text.stdout, text.stdout
    # Retried with backoff, not in a loop, and never a halt.
    poll(lambda: edge.log().count("started cache-manager") >= 3, 20, "three attempts to start the cache manager")
    assert edge.log().count("started cache-manager") < 10
    assert edge.proc.poll() is None and status["state"] == "ready"
    assert edge.stop() == 0


class InProcessManager:
    """The worker side's calls answered by a real CacheManager in this process (no IPC in between)."""

    def __init__(self, manager):
        self.manager = manager

    def nospace(self, cache: int, size: int) -> bool:
        return self.manager.nospace(cache, size)

    def admit(self, hash_: str, size: int) -> list[bool]:
        return self.manager.admit(hash_, size)


def test_enospc_on_a_cache_write_evicts_and_retries_and_the_upload_still_succeeds(small_fs, tmp_path):
    from appliance import metrics
    from appliance.cache.spec import parse_disk_cache
    from appliance.stores.disk import DiskStore
    from appliance.stores.tiered import TieredStore
    from workers.cache_manager import CacheManager, Layer

    root = small_fs(8)
    layer = Layer(parse_disk_cache(f"100MB:{root / 'cache'}:lru"), "unused")
    layer.load()
    manager = CacheManager([layer])
    local = DiskStore(str(tmp_path / "storage"))
    cache = DiskStore(layer.root)
    store = TieredStore(local, local=local, caches=[cache], manager=InProcessManager(manager))
    blobs = write_blobs(tmp_path / "source", 8, BLOB)
    hashes = list(blobs)
    for hash_ in hashes[:6]:
        store.put(hash_, blobs[hash_])  # written through and indexed
    assert len(layer.index) == 6
    failures = metrics.CACHE_WRITE_FAILURES_TOTAL.labels(reason="nospace")
    before = failures._value.get()

    filler = fill(root)  # another writer takes the last byte between two free-space checks
    store.put(hashes[6], blobs[hashes[6]])  # ENOSPC, the manager evicts, the retry writes the copy
    assert local.get(hashes[6]).data == blobs[hashes[6]]  # the upload is stored whatever the cache did
    assert layer.index.stats()["evictions"] >= 6
    assert failures._value.get() == before  # the retry succeeded: no failed write
    assert free_bytes(root) > 0

    fill(root, "filler2")  # full again, and the cache has nothing left to evict: the copy is not admitted
    store.put(hashes[7], blobs[hashes[7]])
    assert local.has(hashes[7]) and not cached_path(root / "cache", hashes[7]).exists()
    assert hashes[7] not in layer.index  # the manager's free-space check refused it before any write
    assert failures._value.get() == before
    filler.unlink()
