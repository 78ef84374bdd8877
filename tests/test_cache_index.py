import os
import sqlite3

import pytest

from appliance import cache
from appliance.blob import blob_hash
from appliance.cache.index import CacheIndex, CacheIndexError, index_path
from appliance.cache.policies import POLICIES, make_policy
from appliance.cache.spec import parse_disk_cache
from tests.small_fs import (
    fill,
    small_fs_fixture,  # noqa: F401  (the `small_fs` fixture)
)

MB = 1024 * 1024


def h(n) -> str:
    return blob_hash(str(n).encode())


def open_index(cache_dir, name="lru", capacity=10 * MB):
    index = CacheIndex(index_path(str(cache_dir)), make_policy(name, capacity))
    return index, index.load()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_survives_a_restart(tmp_path, name):
    index, overflow = open_index(tmp_path, name)
    assert overflow == [] and index.needs_scan  # a new index: the directory must be scanned
    for i in range(12):
        index.add(h(i), MB)
        if i % 3 == 0:
            index.flush()
    index.touch(h(5), h(6), h(6), h(5))
    index.forget(h(11))
    index.close()

    again, overflow = open_index(tmp_path, name)
    assert overflow == [] and not again.needs_scan  # closed cleanly
    assert list(again) == list(index.policy)
    assert again.used_bytes == index.used_bytes and len(again) == len(index)
    assert again.stats() == index.stats() | {"evictions": 0}
    assert again.add(h(100), 2 * MB) == index.policy.add(h(100), 2 * MB)
    again.close()


def test_unflushed_changes_are_lost_and_a_crash_asks_for_a_scan(tmp_path):
    index, _ = open_index(tmp_path)
    index.add(h(1), MB)
    index.flush()
    index.add(h(2), MB)  # never flushed: the process "crashes" (no close)
    again, _ = open_index(tmp_path)
    assert again.needs_scan
    assert h(1) in again and h(2) not in again
    again.close()
    index._close_quietly()


def test_lru_order_is_kept_across_restarts(tmp_path):
    index, _ = open_index(tmp_path, capacity=5 * MB)
    for i in range(5):
        index.add(h(i), MB)
    index.flush()
    index.touch(h(0))  # now h(1) is the least recently used
    index.close()
    again, _ = open_index(tmp_path, capacity=5 * MB)
    assert again.add(h(9), MB) == [h(1)]
    again.close()


def test_a_smaller_capacity_evicts_at_load(tmp_path):
    index, _ = open_index(tmp_path, capacity=10 * MB)
    for i in range(10):
        index.add(h(i), MB)
    index.close()
    smaller, overflow = open_index(tmp_path, capacity=3 * MB)
    assert overflow == [h(i) for i in range(7)]
    smaller.close()
    third, overflow = open_index(tmp_path, capacity=3 * MB)
    assert overflow == [] and set(third) == {h(7), h(8), h(9)}
    third.close()


def test_changing_the_policy_keeps_the_entries_in_order(tmp_path):
    index, _ = open_index(tmp_path, "arc", 4 * MB)
    for i in range(4):
        index.add(h(i), MB)
    index.touch(h(0))
    index.add(h(4), MB)  # leaves a ghost behind
    index.close()
    lru, _ = open_index(tmp_path, "lru", 4 * MB)
    assert len(lru) == 4 and lru.used_bytes == 4 * MB
    assert set(lru) == set(index.policy)
    lru.close()
    arc, _ = open_index(tmp_path, "arc", 4 * MB)  # ARC's ghosts did not survive the change
    assert all(arc.policy.list_of(h(i)) in ("T1", "T2", None) for i in range(5)) and len(arc) == 4
    arc.close()


def test_a_damaged_index_is_set_aside_and_rebuilt(tmp_path):
    path = index_path(str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"this is not sqlite" * 100)
    index, overflow = open_index(tmp_path)
    assert overflow == [] and len(index) == 0 and index.needs_scan
    assert os.path.exists(path + ".broken")
    index.add(h(1), MB)
    index.close()
    again, _ = open_index(tmp_path)
    assert h(1) in again
    again.close()


def test_an_unwritable_location_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    index = CacheIndex(str(blocker / "sub" / "index.sqlite3"), make_policy("lru", MB))
    with pytest.raises(CacheIndexError, match="cannot open cache index"):
        index.load()


def test_flush_writes_only_changes(tmp_path):
    index, _ = open_index(tmp_path)
    for i in range(5):
        index.add(h(i), MB)
    assert index.flush() == 5
    assert index.flush() == 0
    index.touch(h(1), h(2))
    assert index.flush() == 2
    index.close()


def test_a_million_entries_restart_from_the_snapshot_and_journal(tmp_path):
    """A restart reads the arrays back (scripts/bench cache times it at 1M and 10M entries)."""
    count = 1_000_000
    index, _ = open_index(tmp_path, "lru", count * MB)
    add = index.add
    for i in range(count):
        add(f"{i:096x}", MB)
    index.touch(*(f"{i:096x}" for i in range(0, count, 1000)))
    index.close()
    again, overflow = open_index(tmp_path, "lru", count * MB)
    assert overflow == [] and len(again) == count and again.used_bytes == count * MB and not again.needs_scan
    assert list(again)[-1] == f"{999_000:096x}"  # the touched ones are the most recent, in order
    again.touch(f"{1:096x}")
    again.forget(f"{2:096x}")
    again.flush()
    again._close_quietly()  # a crash: the journal holds the changes since the snapshot
    third, _ = open_index(tmp_path, "lru", count * MB)
    assert third.needs_scan and len(third) == count - 1 and f"{2:096x}" not in third
    assert list(third)[-1] == f"{1:096x}"
    third.close()
    for name in os.listdir(tmp_path):  # pytest keeps old tmp dirs: do not leave 100 MB behind
        os.unlink(tmp_path / name)


def test_an_index_of_the_sqlite_format_is_converted(tmp_path):
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.executescript("CREATE TABLE entries (rank INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, size INTEGER, "
                         "lst INTEGER, freq INTEGER, prio INTEGER); CREATE TABLE meta (key TEXT PRIMARY KEY, "
                         "value TEXT NOT NULL);")
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, 0, 0, 0)", [(i, h(i), MB) for i in range(5)])
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("version", "1"), ("policy", "lru"), ("clean", "1")])
    index, overflow = open_index(tmp_path, "lru", 5 * MB)
    assert overflow == [] and list(index) == [h(i) for i in range(5)] and not index.needs_scan
    assert not os.path.exists(tmp_path / "index.sqlite3") and os.path.exists(index_path(str(tmp_path)))
    assert index.add(h(9), MB) == [h(0)]
    index.close()


def test_open_index_builds_the_spec_s_policy_inside_the_cache_directory(tmp_path):
    spec = parse_disk_cache(f"3MB:{tmp_path}:arc")
    index = cache.open_index(spec, "unused:x@tcp(127.0.0.1:1)/unused")
    assert index.load() == [] and index.capacity == 3 * MB and index.policy.name == "arc"
    index.add(h(1), MB)
    index.close()
    assert os.path.exists(tmp_path / "index.snapshot")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_crash_replays_the_journal_onto_the_snapshot(tmp_path, name):
    import random

    index, _ = open_index(tmp_path, name, 20 * MB)
    rng = random.Random(3)
    for step in range(2000):
        key = h(rng.randrange(60))
        roll = rng.random()
        if roll < 0.05:
            index.adopt([(key, rng.randint(1, MB))])
        elif roll < 0.08:
            index.forget(key)
        elif key in index and roll < 0.7:
            index.touch(key)
        else:
            index.add(key, rng.randint(1, MB))
        if step % 41 == 0:
            index.flush()
        if step == 1000:
            index.close()  # a snapshot in the middle: the rest goes to the journal after it
            index, _ = open_index(tmp_path, name, 20 * MB)
    index.flush()
    index._close_quietly()  # crash
    again, overflow = open_index(tmp_path, name, 20 * MB)
    assert overflow == [] and again.needs_scan
    assert list(again) == list(index.policy) and again.used_bytes == index.used_bytes
    for i in range(100, 130):
        assert again.add(h(i), MB) == index.policy.add(h(i), MB)
    again.close()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_smaller_capacity_evicts_in_eviction_order_and_spares_pinned_blobs(tmp_path, name):
    index, _ = open_index(tmp_path, name, capacity=10 * MB)
    for i in range(10):
        index.add(h(i), MB)
    index.pin(h(0))  # being written: never chosen
    expected = [v for v in index.policy if v != h(0)][:6]
    assert index.resize(4 * MB) == expected
    assert index.used_bytes == 4 * MB and index.capacity == 4 * MB and h(0) in index
    assert index.stats()["evictions"] == 6
    assert index.resize(2 * MB) and index.used_bytes == 2 * MB
    assert index.resize(10 * MB) == []  # room again: nothing comes back, new blobs fit
    assert index.add(h(20), 5 * MB) == []
    index.close()


def test_an_index_that_cannot_be_opened_on_a_full_disk_runs_in_memory(small_fs):
    root = small_fs(2)
    index, _ = open_index(root)
    index.add(h(1), MB)
    index.close()  # a clean index: without the fallback's removal the next start would trust it
    filler = fill(root)
    again = CacheIndex(index_path(str(root)), make_policy("lru", 10 * MB))
    with pytest.raises(CacheIndexError, match="cannot open cache index"):
        again.load()
    again.run_in_memory("disk full")
    assert again.needs_scan and again.persistence_error == "disk full" and len(again) == 0
    assert not os.path.exists(index_path(str(root)))  # removed: the next start rebuilds and rescans
    for i in range(3):
        again.add(h(i), MB)
    assert again.flush() == 0 and again.policy.drain_changes() == ([], [])  # nothing piles up unsaved
    again.close()
    filler.unlink()
    third, _ = open_index(root)
    assert third.needs_scan and len(third) == 0 and third.persistence_error is None
    third.close()


def test_an_index_that_cannot_be_written_stops_saving_and_asks_for_a_scan(small_fs):
    root = small_fs(2)
    index, _ = open_index(root)
    index.add(h(0), MB)
    index.flush()
    filler = fill(root)
    for i in range(1, 3000):  # rows enough to need new pages
        index.add(h(i), 1000)
    with pytest.raises(CacheIndexError, match="cannot write cache index"):
        index.flush()
    assert index.persistence_error and index.flush() == 0
    index.add(h(5000), 1000)
    assert index.flush() == 0 and index.policy.drain_changes() == ([], [])
    index.close()  # does not mark the file clean
    filler.unlink()
    again, _ = open_index(root)
    assert again.needs_scan and h(0) in again
    again.close()
