"""`prism peer` over S3 (+ MySQL unless --nodb), as reflector.go runs it: a real subprocess, moto, MariaDB."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from appliance.blob import blob_hash
from appliance.clients.peer import PeerClient
from appliance.db import Database
from appliance.errors import BlobNotFound
from tests.appliance_process import free_ports


def start_peer(tmp_path, values: dict, *flags: str):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps(values))
    port = free_ports(1)[0]
    log = open(tmp_path / "peer.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.prism", "peer", "--conf", str(conf), "--port",
                             str(port), "--listen-address", "127.0.0.1", *flags], stdout=log, stderr=log,
                            cwd=tmp_path)
    deadline = time.monotonic() + 20
    while b"peer server ready" not in (tmp_path / "peer.log").read_bytes():
        assert proc.poll() is None, (tmp_path / "peer.log").read_text()
        assert time.monotonic() < deadline, "prism peer did not start"
        time.sleep(0.05)
    return proc, port


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("use_db", [True, False], ids=["s3+db", "s3-nodb"])
def test_peer_serves_s3_blobs_tracked_in_mysql(tmp_path, s3_bucket, mysql_db, use_db):
    stored, untracked = os.urandom(3000), os.urandom(2000)
    s3 = s3_bucket.client()
    for data in (stored, untracked):
        s3.put_object(Bucket=s3_bucket.bucket, Key=blob_hash(data), Body=data)
    Database.from_dsn(mysql_db.dsn).add_blob(blob_hash(stored), len(stored), True)
    values = {**s3_bucket.config_values(), "db_conn": mysql_db.dsn}
    proc, port = start_peer(tmp_path, values, *([] if use_db else ["--nodb"]))
    try:
        client = PeerClient("127.0.0.1", port, timeout=10)
        assert client.get_blob(blob_hash(stored)) == stored
        if use_db:  # the database decides what exists, as in reflector.go
            with pytest.raises(BlobNotFound):
                client.get_blob(blob_hash(untracked))
        else:
            assert client.get_blob(blob_hash(untracked)) == untracked
        client.close()
    finally:
        stop(proc)


def test_peer_without_db_conn_says_so(tmp_path, s3_bucket):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps(s3_bucket.config_values()))
    out = subprocess.run([sys.executable, "-m", "appliance.cli.prism", "peer", "--conf", str(conf), "--port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "db_conn" in out.stderr and "--nodb" in out.stderr
