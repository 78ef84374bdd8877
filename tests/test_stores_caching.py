import os

import pytest

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound
from appliance.stores.caching import CachingStore
from appliance.stores.disk import DiskStore
from appliance.stores.memory import MemoryStore


class BrokenStore(MemoryStore):
    """A cache whose disk went bad: every read fails with an I/O error."""

    name = "broken"

    def has(self, hash_):
        raise OSError(5, "Input/output error")

    def get(self, hash_):
        raise OSError(5, "Input/output error")


def _blob(n=1000):
    data = os.urandom(n)
    return blob_hash(data), data


def test_put_lands_in_origin_and_cache():
    origin, cache = MemoryStore(), MemoryStore()
    store = CachingStore(origin, cache)
    h, data = _blob()
    store.put(h, data)
    assert origin.get_bytes(h) == data and cache.get_bytes(h) == data
    sd_h, sd = _blob(300)
    store.put_sd(sd_h, sd)
    assert origin.has(sd_h) and cache.has(sd_h)


def test_miss_copies_into_the_cache_and_counts(tmp_path):
    origin, cache = MemoryStore(), DiskStore(str(tmp_path))
    store = CachingStore(origin, cache, component="test-miss")
    hits = metrics.CACHE_HIT_TOTAL.labels(cache_type="disk", component="test-miss")
    misses = metrics.CACHE_MISS_TOTAL.labels(cache_type="disk", component="test-miss")
    h, data = _blob()
    origin.put(h, data)
    with store.get(h) as blob:
        assert blob.data == data
        assert [hop.origin_name for hop in blob.trace.stacks] == ["mem", "caching"]
    assert cache.get_bytes(h) == data
    with store.get(h) as blob:  # now a hit, served from the file
        assert blob.file is not None and blob.data == data
        assert [hop.origin_name for hop in blob.trace.stacks] == ["disk", "caching"]
    assert (hits._value.get(), misses._value.get()) == (1, 1)


def test_missing_everywhere_is_not_found():
    store = CachingStore(MemoryStore(), MemoryStore())
    with pytest.raises(BlobNotFound) as err:
        store.get(blob_hash(b"nope"))
    assert [hop.origin_name for hop in err.value.trace.stacks] == ["mem", "caching"]
    assert not store.has(blob_hash(b"nope"))


def test_a_broken_cache_falls_back_to_the_origin(caplog):
    origin = MemoryStore()
    store = CachingStore(origin, BrokenStore())
    h, data = _blob()
    origin.put(h, data)
    assert store.get_bytes(h) == data
    assert store.has(h)
    assert "Input/output error" in caplog.text


def test_delete_removes_from_the_cache_only_unless_asked():
    origin, cache = MemoryStore(), MemoryStore()
    h, data = _blob()
    CachingStore(origin, cache).put(h, data)
    CachingStore(origin, cache).delete(h)
    assert origin.has(h) and not cache.has(h)
    CachingStore(origin, cache, delete_from_origin=True).delete(h)
    assert not origin.has(h)


class FullStore(MemoryStore):
    """A cache on a full disk."""

    def put(self, hash_, data):
        raise OSError(28, "No space left on device")


def test_a_cache_that_cannot_write_does_not_fail_the_upload(caplog):
    origin, cache = MemoryStore(), FullStore()
    store = CachingStore(origin, cache)
    h, data = _blob()
    store.put(h, data)
    assert origin.has(h) and not cache.has(h)
    assert "No space left" in caplog.text
    other, data = _blob()
    origin.put(other, data)
    assert store.get_bytes(other) == data  # a failed cache fill still serves the blob
