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
