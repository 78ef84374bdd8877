"""Consistent answers after an upload (issue 15, item 4): a blob stored or fetched by any process stops being
"not found" in every worker's misses cache. Unit tests of the shared board, then real appliances with several
workers (SO_REUSEPORT spreads fresh connections over them)."""
from __future__ import annotations

import hashlib
import json
import os
import signal

from appliance.blob import blob_hash
from appliance.clients.reflector import ReflectorClient
from appliance.misses import MissesCache, StoredBoard
from tests.appliance_process import (
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    http_status,
    peer_get,
)

GETS = 20


def h(n) -> str:
    return blob_hash(str(n).encode())


def test_a_miss_is_forgotten_when_another_process_stores_the_blob(tmp_path):
    path = str(tmp_path / "board")
    here, there = StoredBoard(path), StoredBoard(path)  # two mappings of one file, as two processes have
    misses = MissesCache(board=here)
    misses.add(h(1), misses.stamp(h(1)))
    misses.add(h(2), misses.stamp(h(2)))
    assert h(1) in misses and h(2) in misses
    there.stored(h(1))
    assert h(1) not in misses  # stored elsewhere: looked up again
    assert h(2) in misses  # another hash keeps its miss
    misses.add(h(1))
    assert h(1) in misses  # remembered again from now on


def test_a_blob_stored_during_the_lookup_is_not_remembered_as_missing(tmp_path):
    board = StoredBoard(str(tmp_path / "board"))
    misses = MissesCache(board=board)
    stamp = misses.stamp(h(1))  # the server takes it before asking the store
    board.stored(h(1))  # the upload lands while the lookup runs (and the lookup still found nothing)
    misses.add(h(1), stamp)
    assert h(1) not in misses


def test_without_a_board_misses_expire_and_stay_bounded():
    misses = MissesCache(ttl=0.0, max_size=2, board=None)
    misses.add(h(1))
    assert h(1) not in misses  # expired at once
    misses = MissesCache(max_size=2, board=None)
    for i in range(3):
        misses.add(h(i))
    assert h(0) not in misses and h(1) in misses and h(2) in misses


def all_statuses(app, hash_: str, n: int = GETS) -> list[int]:
    return [http_status(app, hash_)[0] for _ in range(n)]


def test_an_upload_through_one_worker_is_found_by_every_worker(appliance):
    app = appliance("--workers", "3")
    data = os.urandom(100_000)
    hash_ = hashlib.sha384(data).hexdigest()
    # Every worker answers 404 (and remembers it): 20 fresh connections reach all three with near certainty.
    assert set(all_statuses(app, hash_)) == {404}
    with ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=30) as client:
        assert client.send_blob(hash_, data)
    statuses = all_statuses(app, hash_)
    assert statuses == [200] * GETS, statuses
    assert http_status(app, hash_)[1] == data


def test_an_upload_in_front_of_s3_clears_the_managers_negative_cache_too(appliance, tmp_path, s3_bucket):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps(s3_bucket.config_values()))  # S3 is the origin: misses are remembered twice
    app = appliance("--conf", str(conf), "--workers", "3", "--disk-cache", f"50MB:{tmp_path / 'cache'}:lru")
    data = os.urandom(100_000)
    hash_ = hashlib.sha384(data).hexdigest()
    assert set(all_statuses(app, hash_)) == {404}  # the manager's negative cache and the workers' misses
    app.wait_for(lambda s: s["cache"].get("negative_entries") == 1, "the manager's negative entry")
    with ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=30) as client:
        assert client.send_blob(hash_, data)  # stored in S3, written through into the disk cache
    statuses = all_statuses(app, hash_)
    assert statuses == [200] * GETS, statuses
    s3_bucket.client().delete_object(Bucket=s3_bucket.bucket, Key=hash_)
    assert http_status(app, hash_) == (200, data)  # served from the disk cache copy


def test_a_blob_fetched_by_a_miss_elsewhere_is_found_by_every_worker(appliance, tmp_path):
    origin = appliance("--workers", "1", name="origin")
    edge = appliance("--workers", "3", "--upstream-reflector", f"127.0.0.1:{origin.ports['http']}",
                     "--upstream-protocol", "http", "--disk-cache", f"50MB:{tmp_path / 'edge-cache'}:lru",
                     name="edge")
    data = os.urandom(100_000)
    hash_ = hashlib.sha384(data).hexdigest()
    assert set(all_statuses(edge, hash_)) == {404}  # remembered by every worker
    # The blob appears at the origin, and the edge's manager restarts (its negative cache is gone) ...
    (origin.dir / "data" / "blobs" / hash_[:2]).mkdir(parents=True, exist_ok=True)
    (origin.dir / "data" / "blobs" / hash_[:2] / hash_).write_bytes(data)
    manager = edge.pids("cache-manager")[0]
    os.kill(manager, signal.SIGKILL)
    edge.wait_for(lambda s: any(p["role"] == "cache-manager" and p["pid"] != manager and p["state"] == "ready"
                                for p in s["processes"]), "a new cache manager")
    # ... so a miss over the TCP peer port (no misses cache there) fetches and caches it in one worker.
    assert peer_get(edge, hash_) == data
    statuses = all_statuses(edge, hash_)
    assert statuses == [200] * GETS, statuses
