"""Helpers shared by the cache-tier acceptance tests (test_chain*.py, test_cache_appliance*.py); no tests here.

Everything runs against real `prism reflector` subprocesses (tests/appliance_process.py) on 127.0.0.1.
"""
from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path

from appliance import ipc
from tests.appliance_process import Appliance

# The per-server download counters (reflector.go's names), read from each appliance's /metrics.
HTTP_DOWNLOADS = "reflector_http_blob_download_total"
PEER_DOWNLOADS = "reflector_peer_download_total"
ALL_DOWNLOADS = "reflector_blob_download_total"
DISK_HITS = 'reflector_cache_hit_total{cache_type="disk",component="reflector"}'


def upstream_flags(upstream: Appliance, protocol: str, cache_dir: Path, size: str = "200MB",
                   manager: str = "lru") -> tuple[str, ...]:
    """Flags that make an appliance a blobcache of `upstream` (its HTTP or TCP peer port) with one disk cache."""
    port = upstream.ports["http" if protocol == "http" else "tcp_peer"]
    return ("--upstream-reflector", f"127.0.0.1:{port}", "--upstream-protocol", protocol,
            "--disk-cache", f"{size}:{cache_dir}:{manager}")


def counter(app: Appliance, name: str) -> float:
    """One sample of the appliance's /metrics (0 when the series has not been created yet)."""
    return app.metrics().get(name, 0.0)


def manager_status(app: Appliance) -> dict:
    """The cache manager's own status, asked on its socket (fresher than the 1 s heartbeat in status)."""
    client = ipc.IpcClient(str(app.runtime_dir / "cache.sock"), name="cache manager", timeout=5)
    try:
        return client.call("status")
    finally:
        client.close()


def fetch(port: int, hash_: str, timeout: float = 30) -> tuple[int, bytes]:
    """GET /blob?hash= on a fresh connection: (status, body), whatever the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/blob?hash={hash_}", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def concurrent_fetch(port: int, hash_: str, clients: int) -> list[tuple[int, bytes] | BaseException]:
    """`clients` threads GET the same blob at once (released together by a barrier); their outcomes."""
    barrier = threading.Barrier(clients)
    results: list[tuple[int, bytes] | BaseException] = [RuntimeError("did not run")] * clients

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = fetch(port, hash_)
        except BaseException as exc:  # reported to the test through `results`
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def cached_path(cache_dir: Path, hash_: str) -> Path:
    """Where a disk cache keeps a blob (reflector.go's layout)."""
    return cache_dir / hash_[:2] / hash_


def blob_bytes_on_disk(cache_dir: Path) -> int:
    """Bytes of blob files in a cache directory, temp files of writes in progress included (the index is not).

    The prefix directories are read before tmp/, so a blob renamed from tmp/ during the walk is never
    counted twice.
    """
    total = 0
    tmp = cache_dir / "tmp"
    for entry in os.scandir(cache_dir):
        if len(entry.name) != 2 or not entry.is_dir():  # prefix directories only (not the index, not tmp/)
            continue
        total += _sizes(entry.path)
    if tmp.is_dir():
        total += _sizes(str(tmp))
    return total


def _sizes(directory: str) -> int:
    total = 0
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:  # evicted or renamed while we looked
                    pass
    except FileNotFoundError:
        pass
    return total
