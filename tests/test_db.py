"""appliance.db against a real MariaDB: reflector.go's rows, one transaction per sd blob, retries."""
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pymysql
import pytest

from appliance import db as db_mod
from appliance.db import Database, DatabaseError, TrackAccess
from tests.servers.ports import wait_until
from tests.servers.streams import make_stream

H = [f"{i:02x}" * 48 for i in range(1, 40)]


class Clock:
    """A settable application clock (epoch seconds)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self.now), dt.UTC).replace(tzinfo=None)


@pytest.fixture
def clock():
    return Clock()


def blob_rows(test_db):
    return {h: (stored, length, accessed) for h, stored, length, accessed in
            test_db.query("SELECT hash, is_stored, length, last_accessed_at FROM blob_")}


def test_add_blob_upserts_and_is_stored_only_goes_up(mysql_db):
    db = Database(mysql_db.dsn)
    first = db.add_blob(H[0], 100, stored=False)
    assert first > 0
    assert db.add_blob(H[0], 100, stored=True) == first  # the existing row's id, one statement
    assert db.add_blob(H[0], 100, stored=False) == first
    assert blob_rows(mysql_db) == {H[0]: (1, 100, None)}  # NONE mode writes no access time
    with pytest.raises(ValueError, match="positive"):
        db.add_blob(H[1], 0)
    db.close()


def test_sd_blob_rows_are_reflector_gos(mysql_db, clock):
    stream = make_stream(3)
    db = Database(mysql_db.dsn, TrackAccess.STREAMS, clock=clock)
    first_content = stream.db_entries()[0][0]
    db.add_blob(first_content, 64)  # uploaded before its sd blob
    stream_id = db.add_sd_blob(stream.sd_hash, len(stream.sd_blob), stream.sd.stream_hash, stream.db_entries())

    rows = blob_rows(mysql_db)
    assert rows[stream.sd_hash] == (1, len(stream.sd_blob), None)
    for hash_, length, _ in stream.db_entries():
        assert rows[hash_] == ((1 if hash_ == first_content else 0), length, None)
    assert len(rows) == 4  # no terminator row
    sd_id = mysql_db.query("SELECT id FROM blob_ WHERE hash = %s", (stream.sd_hash,))[0][0]
    assert mysql_db.query("SELECT id, hash, sd_blob_id, last_accessed_at FROM stream") == \
        [(stream_id, stream.sd.stream_hash, sd_id, clock.at())]
    members = mysql_db.query("SELECT b.hash, sb.num FROM stream_blob sb JOIN blob_ b ON b.id = sb.blob_id "
                             "WHERE sb.stream_id = %s ORDER BY sb.num", (stream_id,))
    assert members == [(h, n) for h, _, n in stream.db_entries()]
    # Recording it again changes nothing and returns the same stream.
    assert db.add_sd_blob(stream.sd_hash, len(stream.sd_blob), stream.sd.stream_hash,
                          stream.db_entries()) == stream_id
    assert mysql_db.query("SELECT COUNT(*) FROM stream_blob") == [(3,)]
    assert db.missing_blobs_for_known_stream(stream.sd_hash) == [h for h, _, _ in stream.db_entries()][1:]
    assert db.missing_blobs_for_known_stream(H[5]) == []
    db.close()


def test_five_thousand_blob_sd_blob_in_one_transaction_with_batched_statements(mysql_db):
    # reflector.go issue #51: a large sd blob must not cost a round trip per blob. What makes it fast is
    # asserted (a bounded number of statements, whatever the blob count); how fast is scripts/bench's job.
    stream = make_stream(5000, blob_size=16)
    db = Database(mysql_db.dsn, TrackAccess.STREAMS)
    db.ping()  # connection made outside the count
    questions = int(mysql_db.query("SHOW GLOBAL STATUS LIKE 'Questions'")[0][1])
    db.add_sd_blob(stream.sd_hash, len(stream.sd_blob), stream.sd.stream_hash, stream.db_entries())
    statements = int(mysql_db.query("SHOW GLOBAL STATUS LIKE 'Questions'")[0][1]) - questions
    assert statements < 40, f"{statements} statements: rows were not batched"
    assert mysql_db.query("SELECT COUNT(*) FROM stream_blob") == [(5000,)]
    assert mysql_db.query("SELECT COUNT(*) FROM blob_") == [(5001,)]
    db.close()


def test_a_failing_sd_blob_leaves_nothing_behind(mysql_db):
    stream, other = make_stream(2), make_stream(2)
    db = Database(mysql_db.dsn)
    db.add_sd_blob(stream.sd_hash, 10, stream.sd.stream_hash, stream.db_entries())
    before = blob_rows(mysql_db)
    # Another sd blob claiming the same stream hash fails halfway (after its sd row was written).
    with pytest.raises(DatabaseError, match="another sd blob"):
        db.add_sd_blob(other.sd_hash, 10, stream.sd.stream_hash, other.db_entries())
    assert blob_rows(mysql_db) == before
    with pytest.raises(ValueError, match="length"):
        db.add_sd_blob(other.sd_hash, 10, other.sd.stream_hash, [(H[9], 0, 0)])
    assert blob_rows(mysql_db) == before
    db.close()


def test_stored_orphan_blobs_are_present_in_streams_mode(mysql_db):
    db = Database(mysql_db.dsn, TrackAccess.STREAMS)
    db.add_blob(H[0], 10)  # a content blob whose sd blob has not arrived (reflector.go: "absent")
    db.add_blob(H[1], 10, stored=False)
    assert db.has_blobs([H[0], H[1], H[2]]) == {H[0]}
    assert db.has_blob(H[0], touch=True) and not db.has_blob(H[1])
    db.close()


def test_touch_streams_only_when_stale(mysql_db, clock):
    stream = make_stream(2)
    db = Database(mysql_db.dsn, TrackAccess.STREAMS, clock=clock)
    db.add_sd_blob(stream.sd_hash, 10, stream.sd.stream_hash, stream.db_entries())
    content = stream.db_entries()[0][0]
    db.add_blob(content, 64)
    recorded = clock.at()
    clock.now += 5 * 3600
    assert db.has_blob(content, touch=True)
    assert mysql_db.query("SELECT last_accessed_at FROM stream") == [(recorded,)]  # fresher than 6 h
    clock.now += 2 * 3600
    assert db.has_blob(content, touch=True)  # a member blob touches its stream
    assert mysql_db.query("SELECT last_accessed_at FROM stream") == [(clock.at(),)]
    assert blob_rows(mysql_db)[content][2] is None  # STREAMS mode never touches blob_
    db.close()


def test_blobs_mode_touches_blobs_counts_and_lists_lru(mysql_db, clock):
    db = Database(mysql_db.dsn, TrackAccess.BLOBS, soft_delete=True, clock=clock)
    for i in range(3):
        db.add_blob(H[i], 10)
        clock.now += 7 * 3600
    assert blob_rows(mysql_db)[H[0]][2] == clock.at() - dt.timedelta(hours=21)
    assert db.least_recently_accessed_hashes(2) == [H[0], H[1]]
    assert db.has_blob(H[0], touch=True)
    assert blob_rows(mysql_db)[H[0]][2] == clock.at()
    assert db.least_recently_accessed_hashes(1) == [H[1]]
    db.delete(H[1])  # soft delete
    assert blob_rows(mysql_db)[H[1]][0] == 0 and db.count() == 2
    with pytest.raises(DatabaseError, match="disabled"):
        Database(mysql_db.dsn).least_recently_accessed_hashes(1)
    db.close()


def test_hard_delete_removes_stream_and_membership(mysql_db):
    stream = make_stream(2)
    db = Database(mysql_db.dsn)
    db.add_sd_blob(stream.sd_hash, 10, stream.sd.stream_hash, stream.db_entries())
    first = stream.db_entries()[0][0]
    db.delete(first)
    assert first not in blob_rows(mysql_db)
    assert db.missing_blobs_for_known_stream(stream.sd_hash) == [stream.db_entries()[1][0]]
    db.delete(stream.sd_hash)
    assert mysql_db.query("SELECT COUNT(*) FROM stream") == [(0,)]
    assert mysql_db.query("SELECT COUNT(*) FROM stream_blob") == [(0,)]
    assert db.count() == 1  # the second content blob's row stays, as in reflector.go
    db.delete(H[30])  # unknown: no error
    db.close()


def test_blocked_and_stream_blob_hashes(mysql_db):
    stream = make_stream(3)
    db = Database(mysql_db.dsn)
    db.add_sd_blob(stream.sd_hash, 10, stream.sd.stream_hash, stream.db_entries())
    db.block(H[0])
    db.block(H[0])
    db.block_many([H[1], H[2], H[1]])
    assert db.get_blocked() == {H[0], H[1], H[2]}
    assert db.stream_blob_hashes([stream.sd_hash, H[3]]) == {stream.sd_hash: [h for h, _, _ in stream.db_entries()]}
    db.close()


def test_bulk_add_ranges_and_pages(mysql_db, monkeypatch):
    monkeypatch.setattr(db_mod, "BATCH", 3)  # several pages and several insert batches
    db = Database(mysql_db.dsn, TrackAccess.BLOBS, soft_delete=True)
    db.add_blob(H[4], 5, stored=False)
    assert db.add_blobs((h, 1000 + i) for i, h in enumerate(H[:10])) == 10  # H[4] exists: updated, no failure
    assert blob_rows(mysql_db)[H[4]][:2] == (1, 1004)
    assert db.get_hash_range() == (H[0], H[9])
    db.delete(H[5])
    assert list(db.get_stored_hashes_in_range(H[1], H[8])) == [H[1], H[2], H[3], H[4], H[6], H[7], H[8]]
    assert db.has_blobs(H[:10]) == set(H[:10]) - {H[5]}
    db.close()


def test_apply_schema_only_to_an_empty_database(mysql_empty_db, mysql_db):
    Database(mysql_empty_db.dsn).apply_schema()
    assert set(Database(mysql_empty_db.dsn).tables()) == set(db_mod.SCHEMA_TABLES)
    with pytest.raises(DatabaseError, match="not empty") as info:
        Database(mysql_db.dsn).apply_schema()
    assert "\n" not in str(info.value)


def test_lock_wait_timeouts_are_retried(private_mariadb, caplog):
    target = private_mariadb.test_db
    with private_mariadb.admin() as admin, admin.cursor() as cur:
        cur.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    db = Database(target.dsn)
    db.add_blob(H[0], 10, stored=False)
    holder = pymysql.connect(**target.kwargs)
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM blob_ WHERE hash = %s FOR UPDATE", (H[0],))
    result = {}
    writer = threading.Thread(target=lambda: result.setdefault("id", db.add_blob(H[0], 10, stored=True)))
    with caplog.at_level(logging.INFO, logger="db"):
        writer.start()
        wait_until(lambda: any("retrying the transaction" in r.getMessage() for r in caplog.records), 30,
                   "a lock retry")
        holder.commit()  # release: the retried transaction now goes through
        writer.join(30)
    holder.close()
    assert result.get("id") and blob_rows(target)[H[0]][0] == 1
    # Without retries left, the error is reported with MySQL's code.
    holder = pymysql.connect(**target.kwargs)
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM blob_ WHERE hash = %s FOR UPDATE", (H[0],))
    with pytest.raises(DatabaseError) as info:
        Database(target.dsn, lock_retries=1).add_blob(H[0], 10)
    assert info.value.code == 1205
    holder.close()
    db.close()


def test_mysql_restart_and_outage_need_no_process_restart(private_mariadb, caplog):
    target = private_mariadb.test_db
    db = Database(target.dsn)
    db.add_blob(H[0], 10)
    for _ in range(3):  # several pooled connections, all dead after the restart
        threads = [threading.Thread(target=db.has_blob, args=(H[0],)) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    private_mariadb.restart()
    with caplog.at_level(logging.INFO, logger="db"):
        assert db.has_blob(H[0])  # read on a dead pooled connection: retried on a fresh one
    assert any("connection lost" in r.getMessage() for r in caplog.records)
    private_mariadb.kill()  # crash, not a clean shutdown
    with pytest.raises(db_mod.DatabaseUnavailable) as info:
        db.add_blob(H[1], 10)
    assert "\n" not in str(info.value) and "appliance-test" not in str(info.value)
    with pytest.raises(db_mod.DatabaseUnavailable):
        db.has_blob(H[0])
    private_mariadb.start()
    db.add_blob(H[1], 10)  # the next call simply works
    assert db.has_blobs([H[0], H[1]]) == {H[0], H[1]}
    db.close()


def test_a_hung_mysql_times_out(private_mariadb):
    target = private_mariadb.test_db
    db = Database(target.dsn + "?timeout=1s&readTimeout=1s&writeTimeout=1s")
    db.ping()
    private_mariadb.process.send_signal(19)  # SIGSTOP: the server accepts nothing and answers nothing
    try:
        with pytest.raises(db_mod.DatabaseUnavailable):
            db.has_blob(H[0])
    finally:
        private_mariadb.process.send_signal(18)  # SIGCONT
    assert not db.has_blob(H[0])
    db.close()


def connection_id(db: Database) -> int:
    return db._fetch("connection id", "SELECT CONNECTION_ID()")[0][0]


def test_the_pool_never_crosses_a_fork(mysql_db):
    db = Database(mysql_db.dsn, pool_size=1)
    parent = connection_id(db)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own connection, not talk on the parent's socket
        try:
            os.write(write, str(connection_id(db)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = int(os.read(read, 100) or 0)
    os.close(read)
    assert child and child != parent
    assert connection_id(db) == parent  # the parent's pooled connection is intact
    db.close()


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import json, sys, gevent
from appliance.db import Database
db = Database(sys.argv[1], pool_size=3)
state = {"now": 0, "max": 0}
def work(cur):
    state["now"] += 1
    state["max"] = max(state["max"], state["now"])
    try:
        cur.execute("SELECT SLEEP(0.2)")
    finally:
        state["now"] -= 1
gevent.joinall([gevent.spawn(db._run, "sleep", work) for _ in range(9)], raise_error=True)
print(json.dumps(state))
"""


def test_pool_is_cooperative_and_bounded_under_gevent(mysql_db):
    # gevent is patched only in a child process, never in pytest's.
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(GEVENT_SCRIPT), mysql_db.dsn],
                         capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["max"] == 3  # queries overlapped (cooperative) but never beyond the pool size
