import pytest

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound
from appliance.stores.memory import LRUMemoryStore, MemoryStore


def test_memory_store_put_get_missing_delete():
    store = MemoryStore()
    h = blob_hash(b"abcdefg")
    store.put(h, bytearray(b"abcdefg"))
    assert store.has(h) and store.get_bytes(h) == b"abcdefg"
    assert store.get(h).trace.stacks[0].origin_name == "mem"
    missing = blob_hash(b"missing")
    with pytest.raises(BlobNotFound):
        store.get(missing)
    store.delete(h)
    store.delete(h)
    assert not store.has(h) and store.items() == []


def test_memory_store_lists_what_it_holds():
    store = MemoryStore()
    blobs = {blob_hash(bytes([i]) * i): bytes([i]) * i for i in range(1, 4)}
    for h, data in blobs.items():
        store.put_sd(h, data)
    assert store.items() == sorted((h, len(d)) for h, d in blobs.items())
    assert len(store) == 3


def test_lru_store_evicts_the_least_recently_used_and_counts_it():
    evictions = metrics.CACHE_EVICT_TOTAL.labels(cache_type="mem", component="test-lru")
    before = evictions._value.get()
    store = LRUMemoryStore(3, component="test-lru")
    a, b, c, d = (blob_hash(x) for x in (b"a", b"b", b"c", b"d"))
    for h in (a, b, c):
        store.put(h, b"x")
    store.get(a)  # a is now the most recently used; b the least
    store.put(d, b"x")
    assert [store.has(h) for h in (a, b, c, d)] == [True, False, True, True]
    assert len(store) == 3
    assert evictions._value.get() == before + 1
    with pytest.raises(BlobNotFound):
        store.get(b)


def test_lru_store_needs_a_positive_size():
    with pytest.raises(ValueError):
        LRUMemoryStore(0)
