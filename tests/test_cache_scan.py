import os

import pytest

from appliance.blob import MAX_BLOB_SIZE, blob_hash
from appliance.cache.index import CacheIndex, index_path
from appliance.cache.policies import make_policy
from appliance.cache.scan import CacheLoader, ScanCounts, blob_path, iter_blob_files, iter_blob_names


def put(root, data: bytes) -> str:
    """Write a blob the way reflector.go lays it out."""
    hash_ = blob_hash(data)
    os.makedirs(os.path.join(root, hash_[:2]), exist_ok=True)
    with open(blob_path(root, hash_), "wb") as f:
        f.write(data)
    return hash_


def reflector_go_dir(root, n=30):
    hashes = {put(root, b"blob %d " % i + b"x" * (1000 * i)): 1000 * i + len(b"blob %d " % i) for i in range(n)}
    os.makedirs(os.path.join(root, "tmp"))
    with open(os.path.join(root, "tmp", blob_hash(b"unfinished")), "wb") as f:
        f.write(b"half")
    some = next(iter(hashes))
    with open(os.path.join(root, some[:2], "notes.txt"), "w") as f:
        f.write("not a blob")
    wrong_dir = blob_hash(b"misplaced")
    os.makedirs(os.path.join(root, "zz"), exist_ok=True)
    with open(os.path.join(root, "zz", wrong_dir), "wb") as f:
        f.write(b"misplaced")
    empty = blob_hash(b"empty")
    os.makedirs(os.path.join(root, empty[:2]), exist_ok=True)
    open(blob_path(root, empty), "wb").close()
    with open(os.path.join(root, blob_hash(b"top")), "wb") as f:  # flat layout: not where workers look
        f.write(b"top")
    return hashes


def test_iter_blob_files_finds_only_blobs(tmp_path):
    root = str(tmp_path)
    hashes = reflector_go_dir(root)
    counts = ScanCounts()
    found = dict(iter_blob_files(root, counts))
    assert found == hashes
    assert counts.blobs == len(hashes) and counts.blob_bytes == sum(hashes.values())
    assert counts.skipped == 3  # notes.txt, the misplaced blob, the empty file
    assert sorted(iter_blob_names(root)) == sorted([*hashes, blob_hash(b"empty")])  # names only: no stat


def test_loader_adopts_a_reflector_go_directory_while_the_manager_keeps_working(tmp_path):
    root = str(tmp_path)
    hashes = reflector_go_dir(root)
    index = CacheIndex(index_path(root), make_policy("lru", 10 * 1024 * 1024))
    index.load()
    assert index.needs_scan
    loader = CacheLoader(root, index, batch=7)
    steps = 0
    fresh = put(root, b"written by a worker during the scan")
    for _ in loader.steps():
        steps += 1
        if steps == 2:  # the manager serves between batches: a worker reports a new blob
            index.add(fresh, len(b"written by a worker during the scan"))
    assert steps >= 30 // 7
    assert set(index) == set(hashes) | {fresh}
    assert index.used_bytes == sum(hashes.values()) + len(b"written by a worker during the scan")
    assert loader.counts.forgotten == 0 and loader.counts.refused == 0
    assert blob_hash(b"unfinished") not in index
    assert os.listdir(os.path.join(root, "tmp")) == []  # a leftover nobody is writing any more


def test_loader_forgets_files_deleted_behind_its_back(tmp_path):
    root = str(tmp_path)
    index = CacheIndex(index_path(root), make_policy("lfu", 10 * 1024 * 1024))
    index.load()
    kept, gone = put(root, b"kept"), put(root, b"gone")
    index.add(kept, 4)
    index.add(gone, 4)
    os.unlink(blob_path(root, gone))
    counts = CacheLoader(root, index).run()
    assert counts.forgotten == 1 and gone not in index and kept in index and index.used_bytes == 4


def test_loader_deletes_what_exceeds_the_capacity_and_keeps_indexed_blobs(tmp_path):
    root = str(tmp_path)
    capacity = 5 * MAX_BLOB_SIZE
    index = CacheIndex(index_path(root), make_policy("arc", capacity))
    index.load()
    hot = put(root, b"h" * MAX_BLOB_SIZE)
    index.add(hot, MAX_BLOB_SIZE)
    for i in range(9):
        put(root, bytes([i]) * MAX_BLOB_SIZE)
    pauses = []
    counts = CacheLoader(root, index, batch=2).run(lambda: pauses.append(1))
    assert counts.adopted == 4 and counts.refused == 5
    assert hot in index and index.used_bytes == capacity
    on_disk = dict(iter_blob_files(root))
    assert set(on_disk) == set(index)  # refused files were deleted, nothing indexed is missing
    assert len(pauses) >= 5


def test_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_blob_files(str(tmp_path / "nope")))
