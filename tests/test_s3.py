"""S3Store against real S3 servers: moto's server mode and s3rver (a second implementation)."""
import logging
import os
import ssl
import subprocess

import pytest
from prometheus_client import REGISTRY

from appliance.blob import blob_hash
from appliance.config import resolve
from appliance.db import Database, TrackAccess
from appliance.errors import BlobNotFound, OriginError, classify
from appliance.stores.dbbacked import DBBackedStore
from appliance.stores.s3 import S3Store, S3Upload
from tests.appliance_process import poll
from tests.servers.ports import free_port


def s3_out_bytes() -> float:
    return REGISTRY.get_sample_value("reflector_s3_out_bytes_total") or 0.0


def store_for(bucket, **kwargs) -> S3Store:
    return S3Store(bucket.aws_id, bucket.aws_secret, bucket.region, bucket.bucket, bucket.endpoint, **kwargs)


def stream(store: S3Store, data: bytes) -> S3Upload:
    with store.stream_upload(blob_hash(data), len(data)) as upload:
        for i in range(0, len(data), 256 * 1024):
            upload.write(data[i:i + 256 * 1024])
        upload.commit()
    return upload


def test_put_has_get_delete(s3_any):
    store = store_for(s3_any)
    data = os.urandom(2 * 1024 * 1024)  # a full-size blob
    hash_ = blob_hash(data)
    assert not store.has(hash_)
    before = s3_out_bytes()
    store.put(hash_, data)
    assert s3_out_bytes() - before == len(data)
    assert s3_any.keys() == {hash_}  # object key = hash, as reflector.go
    assert store.has(hash_)
    with store.get(hash_) as blob:
        assert blob.data == data and blob.trace.stacks[0].origin_name == "s3"
    store.put_sd(hash_, data)  # sd blobs are plain objects in S3
    store.delete(hash_)
    assert not store.has(hash_) and s3_any.keys() == set()
    with pytest.raises(BlobNotFound):
        store.get(hash_)
    store.delete(hash_)  # deleting a missing blob is not an error


def test_objects_are_public_read_as_reflector_go(s3_bucket):
    whole, streamed = b"public blob", os.urandom(300_000)
    store_for(s3_bucket).put(blob_hash(whole), whole)
    assert stream(store_for(s3_bucket), streamed)._error is None
    for data in (whole, streamed):
        grants = s3_bucket.client().get_object_acl(Bucket=s3_bucket.bucket, Key=blob_hash(data))["Grants"]
        assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in grants)


def test_missing_bucket_and_corrupt_objects(s3_any):
    data = b"x" * 100
    hash_ = blob_hash(data)
    gone = S3Store(s3_any.aws_id, s3_any.aws_secret, s3_any.region, "no-such-bucket-here", s3_any.endpoint)
    with pytest.raises(OriginError, match="bucket no-such-bucket-here does not exist"):
        gone.get(hash_)
    # An object whose bytes are not its name is refused, not served.
    s3_any.client().put_object(Bucket=s3_any.bucket, Key=hash_, Body=b"y" * 100)
    with pytest.raises(OriginError, match="does not match"):
        store_for(s3_any).get(hash_)


def test_unreachable_s3_fails_cleanly_and_counts_nothing():
    store = S3Store("id", "secret", "us-east-1", "blobs", f"http://127.0.0.1:{free_port()}", max_attempts=2,
                    connect_timeout=1)
    data = b"z" * 10
    before = s3_out_bytes()
    with pytest.raises(OriginError) as info:
        store.put(blob_hash(data), data)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)
    assert s3_out_bytes() == before
    with pytest.raises(OriginError):
        store.has(blob_hash(data))


def test_timeouts_are_classified_as_io_timeout(http_server):
    from tests.servers.http import Route

    data = b"slow"
    http_server.routes[f"/blobs/{blob_hash(data)}"] = Route(200, data, hang=5)
    store = S3Store("id", "secret", "us-east-1", "blobs", http_server.url(""), read_timeout=0.3, max_attempts=1)
    with pytest.raises(OriginError) as info:
        store.get(blob_hash(data))
    assert classify(info.value) == "io_timeout"


def test_from_config_uses_reflector_go_keys(s3_bucket):
    config = resolve(s3_bucket.config_values())
    store = S3Store.from_config(config)
    data = b"configured"
    store.put(blob_hash(data), data)
    assert store.get_bytes(blob_hash(data)) == data
    with pytest.raises(ValueError, match="bucket"):
        S3Store.from_config(resolve({}))


def test_a_streamed_upload_is_put_as_it_arrives_and_only_completes_at_commit(s3_any, caplog):
    caplog.set_level(logging.INFO, "store")
    store = store_for(s3_any)
    data = os.urandom(2 * 1024 * 1024)
    hash_ = blob_hash(data)
    before = s3_out_bytes()
    with store.stream_upload(hash_, len(data)) as upload:
        for i in range(0, len(data), 256 * 1024):
            upload.write(data[i:i + 256 * 1024])
        assert upload._thread.is_alive()  # the PUT waits for the final byte, held back until commit
        upload.commit()
    assert "putting it whole" not in caplog.text  # it was the streamed PUT that stored it
    assert s3_out_bytes() - before == len(data)
    assert store.get_bytes(hash_) == data and s3_any.keys() == {hash_}


def test_streamed_puts_share_one_kept_alive_connection(s3rver_server, caplog):
    # s3rver keeps connections alive (moto's server closes each one after its answer)
    caplog.set_level(logging.INFO, "store")
    store = store_for(s3rver_server.bucket())
    blobs = [os.urandom(700_000) for _ in range(4)]
    for data in blobs:
        assert stream(store, data)._error is None
    assert "putting it whole" not in caplog.text
    assert store.put_connections().opened == 1  # the later PUTs reused the first one's connection
    for data in blobs:
        assert store.get_bytes(blob_hash(data)) == data


def test_a_kept_connection_that_the_server_closed_is_not_reused(s3rver_server, caplog):
    caplog.set_level(logging.INFO, "store")
    store = store_for(s3rver_server.bucket())
    assert stream(store, os.urandom(100_000))._error is None

    def closed_by_s3rver() -> bool:  # it closes idle connections after 5 s; ours then waits in CLOSE-WAIT
        out = subprocess.run(["ss", "-tnH", "state", "close-wait", f"( dport = :{s3rver_server.port} )"],
                             capture_output=True, text=True, check=True).stdout
        return bool(out.strip())

    poll(closed_by_s3rver, 30, "s3rver to close the idle connection")
    data = os.urandom(100_000)
    assert stream(store, data)._error is None
    assert "putting it whole" not in caplog.text and store.put_connections().opened == 2
    assert store.get_bytes(blob_hash(data)) == data


def test_streamed_puts_over_https_check_the_certificate_against_botocore_s_ca_bundle(s3rver_server, tmp_path,
                                                                                    monkeypatch):
    from appliance.http3.tls import load_or_create
    from tests.servers.tlsproxy import TlsProxy

    load_or_create(str(tmp_path))  # a self-signed certificate for 127.0.0.1
    pem = tmp_path / "combined.pem"
    pem.write_bytes((tmp_path / "cert.pem").read_bytes() + (tmp_path / "key.pem").read_bytes())
    bucket = s3rver_server.bucket()
    proxy = TlsProxy(tmp_path, s3rver_server.port, pem)
    try:
        https = S3Store(bucket.aws_id, bucket.aws_secret, bucket.region, bucket.bucket,
                        f"https://127.0.0.1:{proxy.port}", max_attempts=1)
        data = os.urandom(500_000)
        upload = https.stream_upload(blob_hash(data), len(data))
        upload.write(data)
        with pytest.raises(OriginError):  # not trusted: neither the streamed PUT nor boto3's
            upload.commit()
        assert isinstance(upload._error, ssl.SSLCertVerificationError)

        monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "cert.pem"))
        https = S3Store(bucket.aws_id, bucket.aws_secret, bucket.region, bucket.bucket,
                        f"https://127.0.0.1:{proxy.port}", max_attempts=1)
        for _ in range(2):
            data = os.urandom(500_000)
            assert stream(https, data)._error is None
            assert https.get_bytes(blob_hash(data)) == data
        assert https.put_connections().opened == 1
    finally:
        proxy.close()


def test_a_streamed_put_that_s3_refuses_says_why_and_the_whole_put_reports_it(s3_any):
    gone = S3Store(s3_any.aws_id, s3_any.aws_secret, s3_any.region, "no-such-bucket-here", s3_any.endpoint,
                   max_attempts=1)
    data = os.urandom(100_000)
    upload = gone.stream_upload(blob_hash(data), len(data))
    upload.write(data)
    with pytest.raises(OriginError, match="bucket no-such-bucket-here does not exist"):
        upload.commit()
    assert isinstance(upload._error, OriginError) and "404 NoSuchBucket" in str(upload._error)


def test_an_aborted_streamed_upload_is_never_listed_and_a_reupload_replaces_it(s3_any, mysql_db):
    store = DBBackedStore(store_for(s3_any), Database(mysql_db.dsn, TrackAccess.STREAMS))
    data = os.urandom(1024 * 1024)
    hash_ = blob_hash(data)
    with store.upload(hash_, len(data)) as upload:
        assert isinstance(upload.inner, S3Upload)  # behind the database, uploads stream
        upload.write(data[: len(data) // 2])  # the client goes away: the context aborts the PUT
    upload.inner._thread.join(30)
    assert not upload.inner._thread.is_alive()
    assert not store.has(hash_)  # s3rver may keep the half object; the database does not list it
    with store.upload(hash_, len(data)) as upload:
        upload.write(data)
        upload.commit()
    assert store.has(hash_) and store.get_bytes(hash_) == data


def test_a_failed_stream_is_put_again_whole(s3_any, caplog):
    caplog.set_level(logging.INFO, "store")
    store = store_for(s3_any)
    data = os.urandom(300_000)
    upload = store.stream_upload(blob_hash(data), len(data))
    upload.write(data[:1000])
    upload.body.fail()  # the streamed PUT breaks mid-body (as a dropped connection would)
    upload._thread.join(30)
    upload.body = type(upload.body)(len(data))
    upload.body.feed(data)
    upload.commit()
    assert "putting it whole" in caplog.text
    assert store.get_bytes(blob_hash(data)) == data


def test_behind_a_proxy_uploads_are_put_whole_through_boto3(s3_bucket, monkeypatch):
    # botocore sends through the proxy the environment names; the streamed PUT's own connections would not
    store = store_for(s3_bucket)
    data = os.urandom(1000)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert not isinstance(store.stream_upload(blob_hash(data), len(data)), S3Upload)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the proxy is not for this endpoint
    upload = store.stream_upload(blob_hash(data), len(data))
    assert isinstance(upload, S3Upload)
    upload.write(data)
    upload.commit()
    assert store.get_bytes(blob_hash(data)) == data


def test_without_a_database_uploads_are_put_whole(s3_any):
    store = store_for(s3_any)
    data = os.urandom(1000)
    with store.upload(blob_hash(data), len(data)) as upload:
        assert not isinstance(upload, S3Upload)
        upload.write(data)
        upload.commit()
    assert store.get_bytes(blob_hash(data)) == data


def test_a_streamed_put_given_no_bytes_gives_up_and_commit_puts_the_blob_whole(s3_any, caplog):
    caplog.set_level(logging.INFO, "store")
    store = store_for(s3_any)
    store.read_timeout = 0.3  # how long the streamed PUT waits for the next bytes
    data = os.urandom(300_000)
    upload = store.stream_upload(blob_hash(data), len(data))  # the PUT starts at once, and waits
    upload._thread.join(30)
    assert not upload._thread.is_alive()  # it gave up: no PUT is left waiting for an upload that stalled
    upload.write(data)
    upload.commit()
    assert "putting it whole" in caplog.text
    assert store.get_bytes(blob_hash(data)) == data
