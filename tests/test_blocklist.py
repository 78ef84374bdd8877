"""The blocklist against a real HTTP server, real stores, a real MariaDB and a real S3 server."""
import json
import threading

import pytest

from appliance.blocklist import (
    Blocklist,
    BlocklistError,
    FileListSource,
    UrlListSource,
    parse_hash_list,
    source_from_config,
)
from appliance.config import resolve
from appliance.db import Database, TrackAccess
from appliance.lbry.blocklist import LbryBlocklistSource
from appliance.stores.dbbacked import DBBackedStore
from appliance.stores.disk import DiskStore
from appliance.stores.s3 import S3Store
from tests.servers.http import Route
from tests.servers.ports import wait_until
from tests.servers.streams import make_stream

OTHER = "e" * 96


def put_stream(store, stream) -> None:
    store.put_sd(stream.sd_hash, stream.sd_blob)
    for h, data in stream.blobs.items():
        store.put(h, data)


def test_hash_lists():
    a, b = "a" * 96, "b" * 96
    assert parse_hash_list(f"# blocked\n{a}\n\n{b.upper()}  # why\n", "x") == {a, b}
    assert parse_hash_list(json.dumps([a, b]), "x") == {a, b}
    assert parse_hash_list("", "x") == set()
    with pytest.raises(BlocklistError, match="entry 2 is not an sd hash"):
        parse_hash_list(f"{a}\nnot-a-hash\n", "list.txt")
    with pytest.raises(BlocklistError, match="invalid JSON"):
        parse_hash_list("[1, ", "x")


def test_source_selection(tmp_path):
    assert isinstance(source_from_config(resolve({})), LbryBlocklistSource)  # reflector.go's default source
    assert isinstance(source_from_config(resolve({"blocklist_source": "https://example.invalid/list"})),
                      UrlListSource)
    assert isinstance(source_from_config(resolve({"blocklist_source": str(tmp_path / "x")})), FileListSource)
    with pytest.raises(BlocklistError, match="empty"):
        source_from_config(resolve({"blocklist_source": ""}))
    with pytest.raises(BlocklistError, match="cannot read"):
        FileListSource(str(tmp_path / "missing")).fetch()


def test_without_a_database_blocks_derives_content_and_deletes(tmp_path, http_server):
    storage, cache = DiskStore(str(tmp_path / "storage")), DiskStore(str(tmp_path / "cache"))
    blocked, kept = make_stream(2), make_stream(1)
    for store in (storage, cache):
        put_stream(store, blocked)
    put_stream(storage, kept)
    http_server.routes["/blocked"] = Route(200, f"{blocked.sd_hash}\n{OTHER}\n".encode(), content_type="text/plain")
    state = tmp_path / "state" / "blocked.txt"
    blocklist = Blocklist(UrlListSource(http_server.url("/blocked")), state_file=str(state),
                          stores=[storage, cache], delete=True)
    assert blocklist.refresh()
    assert state.read_text() == "".join(f"{h}\n" for h in sorted([blocked.sd_hash, OTHER]))
    assert [p.name for p in state.parent.iterdir()] == ["blocked.txt"]  # no temp file left behind
    for h in (blocked.sd_hash, *blocked.blobs):
        assert blocklist.is_blocked(h)  # content blobs of the stream too
        assert not storage.has(h) and not cache.has(h)
    assert not blocklist.is_blocked(kept.sd_hash) and storage.has(kept.sd_hash)
    assert all(storage.has(h) for h in kept.blobs)
    # A restart while the source is down still blocks what was kept.
    http_server.routes["/blocked"] = Route(500, b"down")
    restarted = Blocklist(UrlListSource(http_server.url("/blocked")), state_file=str(state))
    assert not restarted.refresh()
    assert restarted.is_blocked(blocked.sd_hash) and restarted.is_blocked(OTHER)


def test_with_mysql_and_s3_blocked_streams_are_gone_everywhere(tmp_path, mysql_db, s3_bucket):
    db = Database(mysql_db.dsn, TrackAccess.STREAMS)
    s3 = S3Store(s3_bucket.aws_id, s3_bucket.aws_secret, s3_bucket.region, s3_bucket.bucket, s3_bucket.endpoint)
    origin, cache = DBBackedStore(s3, db), DiskStore(str(tmp_path / "cache"))
    blocked, kept = make_stream(3), make_stream(1)
    put_stream(origin, blocked)
    put_stream(origin, kept)
    cache.put(next(iter(blocked.blobs)), next(iter(blocked.blobs.values())))  # a cached copy
    listing = tmp_path / "blocked.json"
    listing.write_text(json.dumps([blocked.sd_hash]))

    Blocklist(FileListSource(str(listing)), db=db).refresh()  # deletion off: only blocked
    assert mysql_db.query("SELECT hash FROM blocked") == [(blocked.sd_hash,)]
    assert origin.is_blocked(blocked.sd_hash)  # the DB-backed store's own check sees the table
    worker = Blocklist(None, db=db)  # a process that only applies the list
    worker.load()
    assert all(worker.is_blocked(h) for h in (blocked.sd_hash, *blocked.blobs))
    assert not worker.is_blocked(kept.sd_hash)

    deleting = Blocklist(FileListSource(str(listing)), db=db, stores=[origin, cache], delete=True)
    assert deleting.refresh()
    assert s3_bucket.keys() == {kept.sd_hash, *kept.blobs}
    assert cache.has(next(iter(blocked.blobs))) is False
    rows = {h for (h,) in mysql_db.query("SELECT hash FROM blob_")}
    assert rows == {kept.sd_hash, *kept.blobs}
    assert mysql_db.query("SELECT hash FROM stream") == [(kept.sd.stream_hash,)]
    assert deleting.purge() == 0  # done once per process


def test_failing_sources_keep_the_list(tmp_path, http_server):
    listing = tmp_path / "list.txt"
    listing.write_text("a" * 96 + "\n")
    state = tmp_path / "blocked.txt"
    blocklist = Blocklist(FileListSource(str(listing)), state_file=str(state))
    assert blocklist.refresh() and blocklist.is_blocked("a" * 96)
    listing.write_text("garbage\n")
    assert not blocklist.refresh()
    assert blocklist.is_blocked("a" * 96)
    http_server.routes["/hang"] = Route(200, b"", hang=30)
    hanging = Blocklist(UrlListSource(http_server.url("/hang"), timeout=0.3), state_file=str(state))
    with pytest.raises(BlocklistError, match="timeout"):
        hanging.source.fetch()
    assert not hanging.refresh() and hanging.is_blocked("a" * 96)


def test_run_refreshes_periodically_until_stopped(tmp_path, http_server):
    http_server.routes["/list"] = Route(200, ("b" * 96).encode(), content_type="text/plain")
    blocklist = Blocklist(UrlListSource(http_server.url("/list")), state_file=str(tmp_path / "blocked.txt"),
                          interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=blocklist.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: http_server.count("/list") >= 3, 30, "three refreshes")
        assert blocklist.is_blocked("b" * 96)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
