"""Chained blobcaches on one machine (issue 5 acceptance): A (standalone, local storage) <- B (upstream A over
HTTP, a disk cache) <- C (upstream B over the TCP peer protocol, a disk cache), every one a real `prism
reflector` on 127.0.0.1. Requests are counted from each appliance's /metrics: A serves B over HTTP, B serves
C over the TCP peer protocol."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.appliance_process import (
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    child_env,
    http_get,
    write_blobs,
)
from tests.test_cache_appliance_support import (
    DISK_HITS,
    HTTP_DOWNLOADS,
    PEER_DOWNLOADS,
    cached_path,
    concurrent_fetch,
    counter,
    fetch,
    manager_status,
    upstream_flags,
)

PROMPT = 5.0  # seconds: a miss with the upstream down must be answered within this (no store timeout)


def prism(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], env=child_env(),
                          capture_output=True, text=True, timeout=120)


def chain(appliance, tmp_path, c_workers: str = "2"):
    """(A, B, C, B's cache dir, C's cache dir), all ready (started together: ports are known up front)."""
    a = appliance("--workers", "1", name="A", wait=False)
    b_cache, c_cache = tmp_path / "B-cache", tmp_path / "C-cache"
    b = appliance("--workers", "1", *upstream_flags(a, "http", b_cache), name="B", wait=False)
    c = appliance("--workers", c_workers, *upstream_flags(b, "tcp", c_cache), name="C", wait=False)
    for app in (a, b, c):
        app.wait_ready()
    return a, b, c, b_cache, c_cache


def test_stream_through_the_chain_single_flight_and_second_download_from_disk(appliance, tmp_path):
    a, b, c, b_cache, c_cache = chain(appliance, tmp_path)

    source = tmp_path / "clip.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))  # an sd blob and 3 content blobs
    sent = prism("send", f"127.0.0.1:{a.ports['receiver']}", str(source))
    assert sent.returncode == 0, sent.stderr
    sd_hash = json.loads(sent.stdout)["sd_hash"]
    peer_copy, http_copy = tmp_path / "peer.bin", tmp_path / "http.bin"
    got = prism("getstream", f"127.0.0.1:{c.ports['tcp_peer']}", sd_hash, "-o", str(peer_copy))
    assert got.returncode == 0, got.stderr
    got = prism("getstream", "--http", f"127.0.0.1:{c.ports['http']}", sd_hash, "-o", str(http_copy))
    assert got.returncode == 0, got.stderr
    assert peer_copy.read_bytes() == source.read_bytes() == http_copy.read_bytes()
    # Four blobs crossed each hop once; the second download (over HTTP) came from C's disk.
    assert counter(a, HTTP_DOWNLOADS) == 4 and counter(b, PEER_DOWNLOADS) == 4
    assert cached_path(c_cache, sd_hash).is_file() and cached_path(b_cache, sd_hash).is_file()

    # One cold blob, 100 clients at once at C (2 workers): exactly one request at B, one at A.
    (blob_hash, data), = write_blobs(a.dir / "data" / "blobs", 1, 2 * 1024 * 1024).items()
    a_before, b_before = counter(a, HTTP_DOWNLOADS), counter(b, PEER_DOWNLOADS)
    results = concurrent_fetch(c.ports["http"], blob_hash, 100)
    assert all(r == (200, data) for r in results), {repr(r)[:120] for r in results if r != (200, data)}
    assert counter(b, PEER_DOWNLOADS) - b_before == 1
    assert counter(a, HTTP_DOWNLOADS) - a_before == 1
    status = manager_status(c)
    assert status["origin_fetches"] == 5  # the stream's 4 blobs and this one
    assert status["misses"] > 4 + 1, "the 100 requests did not overlap: single flight was not exercised"

    # The second download is served from C's disk: hit counters move, B sees nothing.
    hits_before, b_before = counter(c, DISK_HITS), counter(b, PEER_DOWNLOADS)
    assert http_get(c.ports["http"], blob_hash) == data
    assert counter(c, DISK_HITS) == hits_before + 1
    assert counter(b, PEER_DOWNLOADS) == b_before
    c.wait_for(lambda s: s["cache"].get("hits", 0) >= 1 and s["cache"]["blobs"] == 5,
               "C's status to count the hit and the 5 cached blobs")


def test_a_file_removed_behind_the_caches_back_is_refetched(appliance, tmp_path):
    a, b, c, _b_cache, c_cache = chain(appliance, tmp_path, c_workers="1")
    (blob_hash, data), = write_blobs(a.dir / "data" / "blobs", 1, 300_000).items()
    assert http_get(c.ports["http"], blob_hash) == data
    assert counter(b, PEER_DOWNLOADS) == 1

    cached_path(c_cache, blob_hash).unlink()
    assert http_get(c.ports["http"], blob_hash) == data
    assert counter(b, PEER_DOWNLOADS) == 2  # one more upstream request, not an error
    assert cached_path(c_cache, blob_hash).read_bytes() == data  # and the cache holds it again
    assert http_get(c.ports["http"], blob_hash) == data
    assert counter(b, PEER_DOWNLOADS) == 2


def test_upstream_down_hits_served_misses_fail_fast_and_recover(appliance, tmp_path):
    a, b, c, _b_cache, _c_cache = chain(appliance, tmp_path, c_workers="1")
    blobs = write_blobs(a.dir / "data" / "blobs", 3, 500_000)
    cached, cold_at_b, cold_at_c = blobs
    assert http_get(c.ports["http"], cached) == blobs[cached]  # now on B's and C's disks
    assert http_get(b.ports["http"], cold_at_c) == blobs[cold_at_c]  # on B's disk only

    os.killpg(a.proc.pid, signal.SIGKILL)  # the whole appliance, children included
    a.proc.wait(10)

    for port in (b.ports["http"], c.ports["http"]):
        assert fetch(port, cached) == (200, blobs[cached])
    assert fetch(c.ports["http"], cold_at_c) == (200, blobs[cold_at_c])  # a miss at C is a hit at B
    for port, what in ((b.ports["http"], "B"), (c.ports["http"], "C")):
        for _ in range(2):  # an origin error is not remembered as "not found": both are fresh attempts
            started = time.monotonic()
            status, body = fetch(port, cold_at_b)
            elapsed = time.monotonic() - started
            assert status == 500, (what, status, body[:200])
            assert elapsed < PROMPT, f"a miss at {what} took {elapsed:.1f}s with the upstream down"

    a.start()  # the same ports, the same storage
    assert fetch(c.ports["http"], cold_at_b) == (200, blobs[cold_at_b])
    assert fetch(b.ports["http"], cold_at_b) == (200, blobs[cold_at_b])
