import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from appliance.blob import InvalidBlobHash, blob_hash
from appliance.errors import BlobNotFound
from appliance.stores.disk import DiskStore

# reflector.go's store/disk_test.go vector (spec §9.4).
GO_HASH = "f428b8265d65dad7f8ffa52922bba836404cbd62f3ecfe10adba6b444f8f658938e54f5981ac4de39644d5b93d89a94b"
GO_DATA = b"oyuntyausntoyaunpdoyruoyduanrstjwfjyuwf"


def test_reads_a_file_placed_in_reflector_go_layout(tmp_path):
    (tmp_path / GO_HASH[:2]).mkdir()
    (tmp_path / GO_HASH[:2] / GO_HASH).write_bytes(GO_DATA)
    store = DiskStore(str(tmp_path))
    assert store.has(GO_HASH)
    with store.get(GO_HASH) as blob:
        assert blob.file is not None and blob.size == len(GO_DATA) and blob.data == GO_DATA
        assert [hop.origin_name for hop in blob.trace.stacks] == ["disk"]


def test_missing_blob_is_not_found_with_a_trace(tmp_path):
    store = DiskStore(str(tmp_path))
    missing = blob_hash(b"nothing")
    assert not store.has(missing)
    with pytest.raises(BlobNotFound, match="blob not found") as err:
        store.get(missing)
    assert err.value.trace.stacks[0].origin_name == "disk"


def test_put_uses_the_layout_and_leaves_no_temp_file(tmp_path):
    store = DiskStore(str(tmp_path))
    data = os.urandom(5000)
    h = blob_hash(data)
    store.put(h, data)
    assert (tmp_path / h[:2] / h).read_bytes() == data
    assert os.listdir(tmp_path / "tmp") == []
    assert store.path(h) == str(tmp_path / h[:2] / h)
    assert store.list() == [h]


def test_hashes_are_validated_before_any_path_is_built(tmp_path):
    store = DiskStore(str(tmp_path))
    for bad in ["../../etc/passwd", "nonexistent", GO_HASH.upper(), GO_HASH + "/x"]:
        with pytest.raises(InvalidBlobHash):
            store.put(bad, b"x")
        with pytest.raises(InvalidBlobHash):
            store.get(bad)
        with pytest.raises(InvalidBlobHash):
            store.has(bad)
    assert sorted(os.listdir(tmp_path)) == ["tmp"]


def test_delete_is_idempotent_and_an_open_blob_survives_it(tmp_path):
    store = DiskStore(str(tmp_path))
    data = os.urandom(3000)
    h = blob_hash(data)
    store.put(h, data)
    blob = store.get(h)
    store.delete(h)
    store.delete(h)
    assert not store.has(h)
    with blob:  # the reader opened the file before the unlink (eviction) and still reads it whole
        assert os.pread(blob.file.fileno(), blob.size, 0) == data


def test_list_skips_temp_files_and_foreign_names(tmp_path):
    store = DiskStore(str(tmp_path))
    hashes = sorted(blob_hash(bytes([i])) for i in range(5))
    for h in hashes:
        store.put(h, b"x")
    (tmp_path / "tmp" / f"{hashes[0]}").write_bytes(b"leftover")
    (tmp_path / hashes[1][:2] / "README").write_bytes(b"not a blob")
    (tmp_path / "notes.txt").write_bytes(b"not a blob")
    assert sorted(store.list()) == hashes


def test_concurrent_puts_of_one_hash_are_safe(tmp_path):
    store = DiskStore(str(tmp_path))
    data = os.urandom(256 * 1024)
    h = blob_hash(data)
    errors = []

    def put():
        try:
            store.put(h, data)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / h[:2] / h).read_bytes() == data
    assert os.listdir(tmp_path / "tmp") == []


WRITER = """
import os, sys
from appliance.stores import disk
def stuck_fsync(fd):
    print("writing", flush=True)  # the bytes are in the temp file; the 'disk' now hangs
    os.read(0, 1)
os.fsync = os.fdatasync = stuck_fsync
disk.DiskStore(sys.argv[1]).put(sys.argv[2], os.urandom(1024 * 1024))
"""


def test_a_writer_killed_mid_write_leaves_nothing_visible(tmp_path):
    h = blob_hash(b"never completed")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), h], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"writing\n"
        leftovers = os.listdir(tmp_path / "tmp")
        assert len(leftovers) == 1 and leftovers[0].startswith(h)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    store = DiskStore(str(tmp_path))  # a restart cleans what the dead writer left
    assert not store.has(h) and store.list() == []
    assert os.listdir(tmp_path / "tmp") == []


def test_temp_files_of_live_writers_are_kept(tmp_path):
    store = DiskStore(str(tmp_path))
    live = tmp_path / "tmp" / f"{GO_HASH}.{os.getpid()}.abc.tmp"
    dead_owner = tmp_path / "tmp" / f"{GO_HASH}.999999999.abc.tmp"
    old = tmp_path / "tmp" / f"{GO_HASH}.{os.getpid()}.old.tmp"
    for path in (live, dead_owner, old):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert store.remove_stale_temp_files() == 2
    assert os.listdir(tmp_path / "tmp") == [live.name]


def test_concurrent_commits_share_directory_fsyncs_and_each_waits_for_one_after_its_rename(tmp_path, monkeypatch):
    from appliance.stores import disk

    store = DiskStore(str(tmp_path))
    syncs: list[tuple[int, int]] = []  # (start, end) sequence numbers of each directory fsync
    clock = iter(range(1_000_000)).__next__
    lock = threading.Lock()

    def slow_fsync_dir(directory: str) -> None:
        with lock:
            start = clock()
        time.sleep(0.05)  # an fsync long enough for other commits to arrive meanwhile
        with lock:
            syncs.append((start, clock()))

    monkeypatch.setattr(disk, "_fsync_dir", slow_fsync_dir)
    calls: list[tuple[int, int]] = []

    def commit_one() -> None:
        with lock:
            arrived = clock()
        store.dir_sync.sync(str(tmp_path / "ab"))
        with lock:
            calls.append((arrived, clock()))

    threads = [threading.Thread(target=commit_one) for _ in range(12)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert len(calls) == 12
    # Every commit returned after an fsync that started after it arrived (so after its rename) had ended...
    for arrived, returned in calls:
        assert any(arrived < start and end < returned for start, end in syncs), (arrived, returned, syncs)
    # ...and commits that arrived during one fsync shared the next one.
    assert len(syncs) < len(calls)


def test_a_durable_writer_starts_writeback_as_bytes_arrive(tmp_path, monkeypatch):
    from appliance.stores import disk

    started: list[tuple[int, int]] = []
    monkeypatch.setattr(disk, "_start_writeback", lambda fd, offset, length: started.append((offset, length)))
    data = os.urandom(disk.WRITEBACK_BYTES * 3 + 1000)
    store = DiskStore(str(tmp_path))
    with store.writer(blob_hash(data)) as writer:
        for i in range(0, len(data), 65536):
            writer.write(data[i:i + 65536])
        writer.commit()
    assert started == [(0, disk.WRITEBACK_BYTES), (disk.WRITEBACK_BYTES, disk.WRITEBACK_BYTES),
                       (2 * disk.WRITEBACK_BYTES, disk.WRITEBACK_BYTES)]
    assert store.get_bytes(blob_hash(data)) == data
    with store.writer(blob_hash(b"copy"), durable=False) as writer:  # a cache copy: no writeback asked
        writer.write(b"copy" * 100_000)
    assert len(started) == 3


def _resident_bytes(path) -> int:
    """Bytes of the file in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--raw", "--noheadings", "--bytes", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def test_a_durable_blob_leaves_the_page_cache_and_a_cache_copy_stays(tmp_path):
    # The durable file's clean pages go back at once, for the next upload's writes to reuse; a cache copy,
    # written to be served, keeps them. Both read back whole.
    data = os.urandom(2 * 1024 * 1024)
    store = DiskStore(str(tmp_path / "origin"))
    with store.writer(blob_hash(data)) as writer:
        writer.write(data)
        writer.commit()
    assert _resident_bytes(store.path(blob_hash(data))) == 0
    cache = DiskStore(str(tmp_path / "cache"))
    with cache.writer(blob_hash(data), durable=False) as writer:
        writer.write(data)
        writer.commit()
    assert _resident_bytes(cache.path(blob_hash(data))) == len(data)
    assert store.get_bytes(blob_hash(data)) == data == cache.get_bytes(blob_hash(data))


def test_tiered_upload_streams_into_the_origin_and_a_cache_copy(tmp_path):
    from appliance.stores.tiered import TieredStore

    origin, cache = DiskStore(str(tmp_path / "origin")), DiskStore(str(tmp_path / "cache"))
    stored = []
    tiered = TieredStore(origin, local=origin, caches=[cache], on_stored=lambda h, sd: stored.append((h, sd)))
    data = os.urandom(700_000)
    h = blob_hash(data)
    with tiered.upload(h, len(data)) as upload:
        upload.write(data[:300_000])
        assert not origin.has(h) and not cache.has(h)  # nothing visible before commit
        upload.write(data[300_000:])
        upload.commit()
    assert origin.get_bytes(h) == data and cache.get_bytes(h) == data and stored == [(h, False)]
    other = os.urandom(1000)
    with tiered.upload(blob_hash(other), len(other)) as upload:
        upload.write(other[:500])  # the client went away: the context aborts it
    assert not origin.has(blob_hash(other)) and not cache.has(blob_hash(other))
    assert os.listdir(tmp_path / "origin" / "tmp") == [] and os.listdir(tmp_path / "cache" / "tmp") == []
