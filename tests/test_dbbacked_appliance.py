"""The whole appliance on MySQL + S3: `prism reflector` as a subprocess, uploads over the reflector protocol.

Rows as reflector.go writes them, a re-upload asked for nothing, downloads served from S3, and MySQL
stopped in the middle: no receipt for what was not recorded, downloads go on, uploads work again once
MySQL is back, with the same appliance process.
"""
import json

import pytest

from appliance.clients.reflector import ReflectorClient
from tests.appliance_process import appliance_fixture, http_get  # noqa: F401  (registers `appliance`)
from tests.servers.streams import make_stream


def upload(app, stream):
    with ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=30) as client:
        return client.send_stream(stream.sd_hash, stream.sd_blob, stream.blobs.__getitem__)


def test_uploads_recorded_in_mysql_stored_in_s3_and_surviving_a_mysql_outage(
        appliance, private_mariadb, s3_any, tmp_path):
    db = private_mariadb.test_db
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({**s3_any.config_values(), "db_conn": db.dsn,  # reflector.go's keys
                                "protected_content_url": ""}))  # tests reach nothing beyond 127.0.0.1
    app = appliance("--conf", str(conf), "--workers", "1")
    pid = app.proc.pid

    first = make_stream(4, blob_size=64 * 1024)
    stats = upload(app, first)
    assert stats.sd_sent and stats.blobs_sent == 4
    assert s3_any.keys() == {first.sd_hash, *first.blobs}
    rows = {h: (stored, length) for h, stored, length in db.query("SELECT hash, is_stored, length FROM blob_")}
    assert rows == {first.sd_hash: (1, len(first.sd_blob)), **{h: (1, 64 * 1024) for h in first.blobs}}
    assert db.query("SELECT s.hash, b.hash FROM stream s JOIN blob_ b ON b.id = s.sd_blob_id") == \
        [(first.sd.stream_hash, first.sd_hash)]
    assert db.query("SELECT b.hash, sb.num FROM stream_blob sb JOIN blob_ b ON b.id = sb.blob_id ORDER BY sb.num") \
        == [(h, n) for h, _, n in first.db_entries()]

    again = upload(app, first)  # a re-upload is asked for nothing
    assert not again.sd_sent and again.blobs_sent == 0

    hashes = list(first.blobs)
    for h in hashes[:2]:
        assert http_get(app.ports["http"], h) == first.blobs[h]

    private_mariadb.stop()
    second = make_stream(2)
    with pytest.raises(Exception):  # noqa: B017 - the connection just closes: no receipt, whatever the error
        upload(app, second)
    for h in hashes[2:]:  # never downloaded, so not cached: served from S3 while MySQL is down
        assert http_get(app.ports["http"], h) == first.blobs[h]

    private_mariadb.start()
    assert not db.query("SELECT hash FROM blob_ WHERE hash = %s", (second.sd_hash,))  # nothing half-recorded
    assert db.query("SELECT COUNT(*) FROM stream") == [(1,)]
    stats = upload(app, second)
    assert stats.sd_sent
    assert db.query("SELECT COUNT(*) FROM stream") == [(2,)]
    assert {second.sd_hash, *second.blobs} <= s3_any.keys()
    assert app.proc.pid == pid and app.proc.poll() is None  # the same appliance, never restarted
    assert app.stop() == 0
