"""DBBackedStore over real stores and a real MariaDB (spec §4.9)."""
import logging

import pytest

from appliance.blob import blob_hash
from appliance.db import Database, DatabaseUnavailable, TrackAccess
from appliance.errors import BlobNotFound, OriginError
from appliance.stores.base import Blocklister, NeededBlobsChecker
from appliance.stores.dbbacked import DBBackedStore
from appliance.stores.memory import MemoryStore
from appliance.stores.s3 import S3Store
from appliance.stream import InvalidStreamDescriptor
from tests.servers.ports import free_port
from tests.servers.streams import make_stream


def stored(test_db) -> dict[str, int]:
    return dict(test_db.query("SELECT hash, is_stored FROM blob_"))


def test_database_is_the_source_of_truth(mysql_db):
    mem = MemoryStore()
    store = DBBackedStore(mem, Database(mysql_db.dsn, TrackAccess.STREAMS))
    assert isinstance(store, NeededBlobsChecker) and isinstance(store, Blocklister)
    data = b"content blob" * 10
    h = blob_hash(data)
    store.put(h, data)
    assert mem.has(h) and stored(mysql_db) == {h: 1}
    assert store.has(h)
    with store.get(h) as blob:
        assert blob.data == data and [s.origin_name for s in blob.trace.stacks] == ["mem", "db-backed"]
    other = b"only in the underlying store"
    mem.put(blob_hash(other), other)
    assert not store.has(blob_hash(other))
    with pytest.raises(BlobNotFound):
        store.get(blob_hash(other))
    store.delete(h)
    assert not mem.has(h) and stored(mysql_db) == {} and not store.has(h)


def test_sd_blob_recorded_and_content_uploaded_first_is_kept(mysql_db):
    stream = make_stream(3)
    mem = MemoryStore()
    store = DBBackedStore(mem, Database(mysql_db.dsn, TrackAccess.STREAMS))
    first, second, third = list(stream.blobs)
    store.put(first, stream.blobs[first])  # before its sd blob, as `prism send` orders them
    assert store.has(first)  # reflector.go's streams mode said no here (§10.21)
    store.put_sd(stream.sd_hash, stream.sd_blob)
    assert mem.get_bytes(stream.sd_hash) == stream.sd_blob
    assert store.missing_blobs_for_known_stream(stream.sd_hash) == [second, third]
    assert store.has(first) and store.has(stream.sd_hash) and not store.has(second)
    for h in (second, third):
        store.put(h, stream.blobs[h])
    assert store.missing_blobs_for_known_stream(stream.sd_hash) == []
    assert mysql_db.query("SELECT hash FROM stream") == [(stream.sd.stream_hash,)]


def test_invalid_sd_blob_stores_and_records_nothing(mysql_db):
    mem = MemoryStore()
    store = DBBackedStore(mem, Database(mysql_db.dsn))
    for bad in (b"not json", b'{"blobs": [], "stream_hash": ""}'):
        with pytest.raises(InvalidStreamDescriptor):
            store.put_sd(blob_hash(bad), bad)
    assert len(mem) == 0 and stored(mysql_db) == {}


def test_delete_on_miss_forgets_vanished_blobs(mysql_db):
    mem = MemoryStore()
    db = Database(mysql_db.dsn, TrackAccess.BLOBS, soft_delete=True)
    store = DBBackedStore(mem, db, delete_on_miss=True)
    data = b"cached"
    store.put(blob_hash(data), data)
    mem.delete(blob_hash(data))  # e.g. the file was removed behind the index's back
    with pytest.raises(BlobNotFound):
        store.get(blob_hash(data))
    assert stored(mysql_db) == {blob_hash(data): 0}


def test_blocklister_uses_the_blocked_table(mysql_db):
    db = Database(mysql_db.dsn)
    store = DBBackedStore(MemoryStore(), db, blocked_ttl=3600)
    a, b = "a" * 96, "b" * 96
    store.block(a)
    assert store.is_blocked(a) and not store.is_blocked(b)
    assert mysql_db.query("SELECT hash FROM blocked") == [(a,)]
    mysql_db.query("INSERT INTO blocked (hash) VALUES (%s)", (b,))  # another process blocks b
    assert not store.is_blocked(b)  # cached for the ttl
    fresh = DBBackedStore(MemoryStore(), db, blocked_ttl=0)
    assert fresh.is_blocked(a) and fresh.is_blocked(b)


def test_mysql_down_reads_fall_back_and_writes_fail_cleanly(private_mariadb, caplog):
    target = private_mariadb.test_db
    mem = MemoryStore()
    store = DBBackedStore(mem, Database(target.dsn, TrackAccess.STREAMS))
    kept, lost = b"stored while up", b"sent while down"
    store.put(blob_hash(kept), kept)
    private_mariadb.stop()
    with caplog.at_level(logging.WARNING, logger="store"):
        assert store.has(blob_hash(kept)) and store.get_bytes(blob_hash(kept)) == kept  # downloads go on
        assert store.get_bytes(blob_hash(kept)) == kept
    assert sum("answering reads from mem" in r.getMessage() for r in caplog.records) == 1  # logged once
    with pytest.raises(DatabaseUnavailable):
        store.put(blob_hash(lost), lost)
    stream = make_stream(2)
    with pytest.raises(DatabaseUnavailable):
        store.put_sd(stream.sd_hash, stream.sd_blob)
    private_mariadb.start()
    assert not store.has(blob_hash(lost))  # not recorded, so it will be asked for again
    assert stored(target) == {blob_hash(kept): 1}
    store.put(blob_hash(lost), lost)  # same process, same store: works again
    store.put_sd(stream.sd_hash, stream.sd_blob)
    assert store.has(blob_hash(lost)) and store.missing_blobs_for_known_stream(stream.sd_hash) == list(stream.blobs)


def test_s3_unreachable_records_nothing(mysql_db):
    s3 = S3Store("id", "secret", "us-east-1", "blobs", f"http://127.0.0.1:{free_port()}", max_attempts=1,
                 connect_timeout=1)
    store = DBBackedStore(s3, Database(mysql_db.dsn))
    stream = make_stream(1)
    with pytest.raises(OriginError):
        store.put(*next(iter(stream.blobs.items())))
    with pytest.raises(OriginError):
        store.put_sd(stream.sd_hash, stream.sd_blob)
    assert stored(mysql_db) == {} and mysql_db.query("SELECT COUNT(*) FROM stream") == [(0,)]


def test_a_streamed_upload_is_recorded_once_its_bytes_are_stored(mysql_db):
    mem = MemoryStore()
    store = DBBackedStore(mem, Database(mysql_db.dsn, TrackAccess.STREAMS))
    data = b"streamed content blob" * 1000
    h = blob_hash(data)
    with store.upload(h, len(data)) as upload:
        upload.write(data[:5000])
        upload.write(data[5000:])
        assert not mem.has(h) and stored(mysql_db) == {}
        upload.commit()
    assert mem.get_bytes(h) == data and stored(mysql_db) == {h: 1}
    with store.upload(blob_hash(b"never finished"), 14) as upload:
        upload.write(b"never")
    assert stored(mysql_db) == {h: 1} and not mem.has(blob_hash(b"never finished"))
