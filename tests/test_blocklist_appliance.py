"""Blocklist acceptance on the running appliance: `prism reflector` subprocesses over MySQL + S3 (moto) with a
disk cache, and over local storage alone.

A stream uploaded before it is blocked is, once its sd hash appears at the blocklist source, refused on
re-upload and served neither on the TCP peer port nor over HTTP (its sd blob and its content blobs alike),
while its bytes are still stored - so it is the blocklist that hides them. With --blocklist-delete its
blobs are gone from S3, from MySQL and from the disk cache (or from local storage).

MySQL: the purge deletes the blobs' `blob_` rows (and the sd blob's `stream` row, whose `stream_blob` rows
cascade) rather than marking them `is_stored = 0`. That is reflector.go's main-database mode (hard delete,
spec §5.3), so a database shared with reflector.go reads the same; the `blocked` row stays, and it is
what keeps the stream refused from then on. A blocked stream that was never uploaded leaves no row at all.

Both the refreshing process (the cache manager) and every worker are exercised: two workers, and every
check is made over fresh connections, so both workers answer some of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.clients.connection import Connection
from appliance.clients.reflector import ReflectorClient, UploadStats
from appliance.protocol import reflector as codec
from appliance.protocol.framing import JsonFramer
from tests.appliance_process import appliance_fixture, http_status, peer_get, poll  # noqa: F401  (registers `appliance`)
from tests.servers.http import Route
from tests.servers.streams import TestStream, make_stream

INTERVAL = "0.5"  # seconds between refreshes: the tests see a block within about a second
PROBES = 4  # fresh connections per hash and port in a check: with two workers, both answer some of them


def blocklist_flags(source: str) -> tuple[str, ...]:
    """Turn the blocklist on (appliance_process turns it off) with a local source, refreshed quickly."""
    return ("--disable-blocklist=false", "--blocklist-source", source, "--blocklist-interval", INTERVAL)


def write_list(path: Path, hashes: list[str]) -> None:
    """The source file, replaced atomically so the refresher never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# blocked sd hashes\n" + "".join(f"{h}\n" for h in hashes))
    os.replace(tmp, path)


def upload(app, stream: TestStream) -> UploadStats:
    with ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=30) as client:
        return client.send_stream(stream.sd_hash, stream.sd_blob, stream.blobs.__getitem__)


def offer_sd(app, stream: TestStream) -> codec.SdReply:
    """Offer the sd blob and hang up without sending it: whether the appliance would take the stream now."""
    conn = Connection("127.0.0.1", app.ports["receiver"], 10, JsonFramer(64 * 1024, require_brace=False))
    try:
        conn.send(codec.encode_handshake())
        codec.parse_handshake_reply(conn.read_json("handshake reply"))
        conn.send(codec.encode_sd_request(stream.sd_hash, len(stream.sd_blob)))
        return codec.parse_sd_reply(conn.read_json("answer to the sd offer"))
    finally:
        conn.close()




def all_hashes(stream: TestStream) -> list[str]:
    return [stream.sd_hash, *stream.blobs]


def contents(stream: TestStream) -> dict[str, bytes]:
    return {stream.sd_hash: stream.sd_blob, **stream.blobs}


def refused_everywhere(app, stream: TestStream) -> bool:
    """Every blob of the stream is not found on both ports, and its sd blob is not wanted, on every probe."""
    for _ in range(PROBES):
        reply = offer_sd(app, stream)
        if reply.send or reply.needed_blobs:
            return False
        for h in all_hashes(stream):
            if http_status(app, h)[0] != 404 or peer_get(app, h) is not None:
                return False
    return True


def assert_served(app, stream: TestStream) -> None:
    for h, data in contents(stream).items():
        assert http_status(app, h) == (200, data)
        assert peer_get(app, h) == data


def files_under(root: Path) -> set[str]:
    """Blob files in reflector.go's layout (<root>/<hash[:2]>/<hash>)."""
    return {p.name for p in root.glob("??/*") if len(p.name) == 96}


def test_mysql_s3_blocked_stream_refused_hidden_then_purged(appliance, mysql_db, s3_bucket, tmp_path):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({**s3_bucket.config_values(), "db_conn": mysql_db.dsn}))
    cache, listing = tmp_path / "cache", tmp_path / "blocked.txt"
    write_list(listing, [])
    common = ("--conf", str(conf), "--workers", "2", "--disk-cache", f"50MB:{cache}:lru",
              *blocklist_flags(str(listing)))

    def rows(table_sql: str) -> set:
        return set(mysql_db.query(table_sql))

    # --- first run, deletion off: a block hides the stream and refuses it, nothing is deleted ------------
    app = appliance(*common, name="keeping")
    blocked, kept, never_uploaded = make_stream(3, 64 * 1024), make_stream(2, 64 * 1024), make_stream(2)
    for stream in (blocked, kept):
        stats = upload(app, stream)
        assert stats.sd_sent and stats.blobs_sent == len(stream.blobs)
    assert files_under(cache) == {*all_hashes(blocked), *all_hashes(kept)}  # written through on upload
    assert_served(app, blocked)

    write_list(listing, [blocked.sd_hash, never_uploaded.sd_hash])
    poll(lambda: refused_everywhere(app, blocked), 15, "the blocked stream to be refused by every worker")
    assert rows("SELECT hash FROM blocked") == {(blocked.sd_hash,), (never_uploaded.sd_hash,)}
    assert_served(app, kept)
    # Still stored everywhere: the blocklist, not a deletion, is what hides it.
    assert s3_bucket.keys() == {*all_hashes(blocked), *all_hashes(kept)}
    assert files_under(cache) == {*all_hashes(blocked), *all_hashes(kept)}
    assert rows("SELECT hash FROM blob_ WHERE is_stored = 1") == {(h,) for h in [*all_hashes(blocked),
                                                                                 *all_hashes(kept)]}
    again = upload(app, blocked)  # an SDK-style re-upload: asked for nothing
    assert (again.sd_sent, again.blobs_sent) == (False, 0)
    fresh = upload(app, never_uploaded)  # blocked before it was ever uploaded: nothing of it is stored
    assert (fresh.sd_sent, fresh.blobs_sent) == (False, 0)
    assert not set(all_hashes(never_uploaded)) & s3_bucket.keys()
    assert not mysql_db.query("SELECT hash FROM blob_ WHERE hash IN %s", (all_hashes(never_uploaded),))
    assert app.stop() == 0

    # --- second run, --blocklist-delete: the kept block is purged at start, a new one live ---------------
    app = appliance(*common, "--blocklist-delete", "--mem-cache", "100", name="deleting")
    later = make_stream(2, 64 * 1024)
    stats = upload(app, later)
    assert stats.sd_sent and stats.blobs_sent == 2
    for _ in range(2 * PROBES):  # into the memory tier of both workers
        assert_served(app, later)
    write_list(listing, [blocked.sd_hash, never_uploaded.sd_hash, later.sd_hash])

    poll(lambda: s3_bucket.keys() == set(all_hashes(kept)), 15, "the blocked streams to leave S3")
    poll(lambda: files_under(cache) == set(all_hashes(kept)), 15, "the blocked streams to leave the disk cache")
    # ...and its index: the cache manager's count and size cover only what is left.
    app.wait_for(lambda s: s["cache"]["blobs"] == len(all_hashes(kept)), "the cache index to drop purged blobs")
    assert app.status()["cache"]["used_bytes"] == len(kept.sd_blob) + sum(map(len, kept.blobs.values()))
    assert rows("SELECT hash FROM blob_") == {(h,) for h in all_hashes(kept)}  # rows deleted, not is_stored = 0
    assert rows("SELECT hash FROM stream") == {(kept.sd.stream_hash,)}
    assert len(mysql_db.query("SELECT * FROM stream_blob")) == len(kept.blobs)
    assert rows("SELECT hash FROM blocked") == {(h,) for h in (blocked.sd_hash, never_uploaded.sd_hash, later.sd_hash)}
    poll(lambda: refused_everywhere(app, later), 15, "the stream blocked live to be refused by every worker")
    for stream in (blocked, later):  # gone, and still refused: a re-upload stores nothing
        assert refused_everywhere(app, stream)
        again = upload(app, stream)
        assert (again.sd_sent, again.blobs_sent) == (False, 0)
    assert s3_bucket.keys() == set(all_hashes(kept))
    assert rows("SELECT hash FROM blob_") == {(h,) for h in all_hashes(kept)}
    assert_served(app, kept)
    assert app.stop() == 0


def test_local_storage_blocked_stream_kept_in_the_state_file(appliance, http_server, tmp_path):
    storage, state = tmp_path / "blobs", tmp_path / "state"
    http_server.routes["/blocked"] = Route(200, b"", content_type="text/plain")
    common = ("--workers", "2", "--storage-dir", str(storage), "--state-dir", str(state),
              *blocklist_flags(http_server.url("/blocked")))

    app = appliance(*common, name="keeping")
    blocked, kept = make_stream(3), make_stream(2)
    for stream in (blocked, kept):
        assert upload(app, stream).sd_sent
    assert_served(app, blocked)
    http_server.routes["/blocked"] = Route(200, f"{blocked.sd_hash}\n".encode(), content_type="text/plain")
    poll(lambda: refused_everywhere(app, blocked), 15, "the blocked stream to be refused by every worker")
    assert (state / "blocked.txt").read_text().split() == [blocked.sd_hash]
    assert files_under(storage) == {*all_hashes(blocked), *all_hashes(kept)}  # hidden, not deleted
    assert_served(app, kept)
    assert app.stop() == 0

    # A restart with the source down still blocks (the state file), and --blocklist-delete purges it.
    http_server.routes["/blocked"] = Route(503, b"down", content_type="text/plain")
    app = appliance(*common, "--blocklist-delete", name="deleting")
    poll(lambda: files_under(storage) == set(all_hashes(kept)), 15, "the blocked stream to leave local storage")
    assert refused_everywhere(app, blocked)
    again = upload(app, blocked)
    assert (again.sd_sent, again.blobs_sent) == (False, 0)
    assert files_under(storage) == set(all_hashes(kept))
    assert_served(app, kept)
    assert http_server.count("/blocked") >= 2  # both runs asked the local source
    assert app.stop() == 0


def test_a_purge_that_fails_halfway_is_finished_after_a_restart(appliance, tmp_path):
    storage, state, listing = tmp_path / "blobs", tmp_path / "state", tmp_path / "blocked.txt"
    write_list(listing, [])
    common = ("--workers", "1", "--storage-dir", str(storage), "--state-dir", str(state),
              *blocklist_flags(str(listing)), "--blocklist-delete")
    app = appliance(*common, name="first")
    stream = make_stream(3)
    assert upload(app, stream).sd_sent
    stuck = list(stream.blobs)[1]  # a blob that cannot be deleted: a directory took its file's place
    path = storage / stuck[:2] / stuck
    path.unlink()
    (path / "busy").mkdir(parents=True)

    write_list(listing, [stream.sd_hash])
    others = set(stream.blobs) - {stuck}
    poll(lambda: not files_under(storage) & others, 15, "the deletable content blobs to be purged")
    poll(lambda: refused_everywhere(app, stream), 15, "the worker to refuse the blocked stream")
    assert files_under(storage) == {stream.sd_hash, stuck}  # the sd blob stays until its content is gone
    assert app.stop() == 0

    # Whatever stopped the deletion is gone; a restarted appliance still knows the blob belongs to the
    # blocked stream (from the sd blob it kept) and finishes the purge.
    (path / "busy").rmdir()
    path.rmdir()
    path.write_bytes(stream.blobs[stuck])
    app = appliance(*common, name="restarted")
    poll(lambda: not files_under(storage), 15, "the rest of the blocked stream to be purged")
    assert refused_everywhere(app, stream)
    assert app.stop() == 0


def test_disable_blocklist_leaves_everything_served(appliance, tmp_path):
    storage, state, listing = tmp_path / "blobs", tmp_path / "state", tmp_path / "blocked.txt"
    stream = make_stream(2)
    write_list(listing, [stream.sd_hash])
    state.mkdir()
    write_list(state / "blocked.txt", [stream.sd_hash])  # kept from an earlier run: would block at once
    app = appliance("--workers", "2", "--storage-dir", str(storage), "--state-dir", str(state),
                    *blocklist_flags(str(listing)), "--blocklist-delete", "--disable-blocklist")
    stats = upload(app, stream)
    assert stats.sd_sent and stats.blobs_sent == 2
    for _ in range(PROBES):
        assert_served(app, stream)
    assert files_under(storage) == set(all_hashes(stream))
    assert app.stop() == 0
    assert files_under(storage) == set(all_hashes(stream))
