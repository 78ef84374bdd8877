"""The localdb cache manager against a real MariaDB (tests/conftest.py's mysql_db fixture)."""
import os

import pytest

from appliance import cache
from appliance.blob import blob_hash
from appliance.cache.localdb import LocalDB, LocalDBIndex
from appliance.cache.scan import CacheLoader, blob_path
from appliance.cache.spec import parse_disk_cache

MB = 1024 * 1024
HOUR = 3600


def h(n) -> str:
    return blob_hash(str(n).encode())


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def open_localdb(mysql_db, capacity, clock):
    index = LocalDBIndex(LocalDB(mysql_db.dsn, clock=clock), capacity)
    return index, index.load()


def stored(mysql_db) -> dict[str, int]:
    return dict(mysql_db.query("SELECT hash, length FROM blob_ WHERE is_stored = 1"))


def test_adds_are_rows_with_lengths_and_access_times(mysql_db, clock):
    index, overflow = open_localdb(mysql_db, 10 * MB, clock)
    assert overflow == [] and index.used_bytes == 0
    assert index.add(h(1), MB) == [] and index.add(h(2), 1234) == []
    assert index.add(h(2), 1234) == []  # a re-add is not counted twice
    assert stored(mysql_db) == {h(1): MB, h(2): 1234}
    assert index.used_bytes == MB + 1234 and len(index) == 2 and h(1) in index and h(3) not in index
    accessed = mysql_db.query("SELECT last_accessed_at FROM blob_ WHERE hash = %s", (h(1),))[0][0]
    assert accessed is not None
    index.close()


def test_over_capacity_evicts_the_least_recently_read_down_to_90_percent(mysql_db, clock):
    index, _ = open_localdb(mysql_db, 10 * MB, clock)
    for i in range(10):
        index.add(h(i), MB)
        clock.now += 60
    clock.now += 7 * HOUR  # reads only refresh access times older than 6 h (reflector.go)
    index.touch(h(0), h(1), h(2))
    assert index.flush() == 3
    evicted = index.add(h(10), MB)
    # 11 MB > 10 MB: down to 9 MB, the oldest unread ones leave
    assert evicted == [h(3), h(4)]
    assert index.used_bytes == 9 * MB and index.evictions == 2
    assert set(stored(mysql_db)) == {h(i) for i in (0, 1, 2, 5, 6, 7, 8, 9, 10)}
    # soft delete: the rows stay, marked not stored
    assert mysql_db.query("SELECT is_stored FROM blob_ WHERE hash = %s", (h(3),)) == [(0,)]
    index.close()


def test_a_50mb_cache_fed_200mb_never_exceeds_50mb(mysql_db, clock):
    index, _ = open_localdb(mysql_db, 50 * MB, clock)
    on_disk = set()
    for i in range(200):
        on_disk.add(h(i))
        on_disk.difference_update(index.add(h(i), MB))
        clock.now += 1
        assert index.used_bytes <= 50 * MB
    assert sum(stored(mysql_db).values()) == index.used_bytes
    assert set(stored(mysql_db)) == on_disk
    index.close()


def test_pinned_blobs_survive_and_oversized_blobs_are_refused(mysql_db, clock):
    index, _ = open_localdb(mysql_db, 4 * MB, clock)
    for i in range(4):
        index.add(h(i), MB)
        clock.now += 60
    index.pin(h(0))
    index.pin(h(1))
    evicted = index.add(h(5), MB)  # 5 MB: down to 3.6 MB, skipping the two oldest (pinned)
    assert evicted == [h(2), h(3)]
    assert {h(0), h(1), h(5)} == set(stored(mysql_db))
    assert index.add(h("huge"), 5 * MB) == [h("huge")]
    index.pin(h(5))
    assert index.add(h(6), 2 * MB) == [h(6)]  # nothing evictable: the newcomer is refused
    assert h(6) not in stored(mysql_db) and index.used_bytes <= 4 * MB
    index.close()


def test_forget_and_restart_with_a_smaller_capacity(mysql_db, clock):
    index, _ = open_localdb(mysql_db, 10 * MB, clock)
    for i in range(6):
        index.add(h(i), MB)
        clock.now += 60
    assert index.forget(h(5)) and not index.forget(h(5))
    assert index.used_bytes == 5 * MB
    index.close()
    smaller, overflow = open_localdb(mysql_db, 3 * MB, clock)
    assert overflow == [h(0), h(1), h(2)]  # down to 90% of 3 MB
    assert smaller.used_bytes == 2 * MB and set(stored(mysql_db)) == {h(3), h(4)}
    smaller.close()


def test_loader_adopts_files_and_forgets_vanished_rows(mysql_db, clock, tmp_path):
    root = str(tmp_path)
    index, _ = open_localdb(mysql_db, 10 * MB, clock)
    assert index.needs_scan
    index.add(h("gone"), 100)  # recorded, but its file is not there
    files = {}
    for i in range(25):
        data = b"%d" % i * (i + 1)
        files[blob_hash(data)] = len(data)
        os.makedirs(os.path.join(root, blob_hash(data)[:2]), exist_ok=True)
        with open(blob_path(root, blob_hash(data)), "wb") as f:
            f.write(data)
    counts = CacheLoader(root, index, batch=10).run()
    assert counts.adopted == 25 and counts.forgotten == 1
    assert stored(mysql_db) == files
    assert index.used_bytes == sum(files.values())
    # adopted blobs look a day old, so a blob read today outlives them
    ages = dict(mysql_db.query("SELECT hash, last_accessed_at FROM blob_ WHERE is_stored = 1"))
    assert len(set(ages.values())) == 1
    index.close()


def test_open_index_gives_localdb_for_the_localdb_manager(mysql_db, tmp_path):
    index = cache.open_index(parse_disk_cache(f"2MB:{tmp_path}:localdb"), mysql_db.dsn)
    assert isinstance(index, LocalDBIndex) and index.capacity == 2 * MB
    assert index.load() == []
    index.add(h(1), 100)
    assert stored(mysql_db) == {h(1): 100}
    index.close()
