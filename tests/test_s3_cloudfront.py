"""CloudFront-style origin endpoints, the primary/fallback pair, and endpoint reads + S3 writes (spec §4.8)."""
import os

import pytest
from prometheus_client import REGISTRY

from appliance.blob import blob_hash
from appliance.errors import BlobNotFound, NotImplementedByStore, OriginError, classify
from appliance.stores.cloudfront import ITTT, CloudFrontRO, CloudFrontRW
from appliance.stores.memory import MemoryStore
from appliance.stores.s3 import S3Store
from tests.servers.http import Route
from tests.servers.ports import free_port

DATA = os.urandom(3000)
HASH = blob_hash(DATA)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_reads_verified_blobs_with_a_user_agent(http_server):
    http_server.routes[f"/blobs/{HASH}"] = Route(200, DATA, content_type="application/octet-stream")
    store = CloudFrontRO(http_server.url("/blobs"))  # the missing trailing slash is added
    before = sample("reflector_s3_in_bytes_total")
    assert store.has(HASH)
    with store.get(HASH) as blob:
        assert blob.data == DATA and blob.trace.stacks[0].origin_name == "cloudfront_ro"
    assert sample("reflector_s3_in_bytes_total") - before == len(DATA)
    method, path, headers = http_server.requests[-1]
    assert (method, path) == ("GET", f"/blobs/{HASH}") and headers["User-Agent"].startswith("reflector-appliance/")
    with pytest.raises(NotImplementedByStore):
        store.put(HASH, DATA)


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_and_missing_are_not_found(http_server, status):
    http_server.routes[f"/{HASH}"] = Route(status, b"<Error/>")
    store = CloudFrontRO(http_server.url("/"))
    assert not store.has(HASH)
    with pytest.raises(BlobNotFound):
        store.get(HASH)


def test_bad_answers_are_origin_errors(http_server):
    store = CloudFrontRO(http_server.url("/"))
    http_server.routes[f"/{HASH}"] = Route(500, b"oops")
    with pytest.raises(OriginError, match="unexpected status 500"):
        store.get(HASH)
    with pytest.raises(OriginError, match="unexpected status 500"):
        store.has(HASH)
    http_server.routes[f"/{HASH}"] = Route(200, DATA[:-1])  # truncated / wrong bytes
    with pytest.raises(OriginError, match="do not match"):
        store.get(HASH)
    http_server.routes[f"/{HASH}"] = Route(200, b"a" * (2 * 1024 * 1024 + 10))  # larger than any blob
    with pytest.raises(OriginError, match="do not match"):
        store.get(HASH)


def test_a_hanging_origin_times_out(http_server):
    http_server.routes[f"/{HASH}"] = Route(200, DATA, hang=10)
    with pytest.raises(OriginError) as info:
        CloudFrontRO(http_server.url("/"), timeout=0.3).get(HASH)
    assert classify(info.value) == "io_timeout"
    with pytest.raises(OriginError):
        CloudFrontRO(f"http://127.0.0.1:{free_port()}/", timeout=0.3).has(HASH)


def test_ittt_falls_back_on_miss_and_on_error(http_server):
    this, that = MemoryStore(), MemoryStore()
    that.put(HASH, DATA)
    store = ITTT(this, that)
    this_hits, that_hits = sample("reflector_ittt_this_hit_total"), sample("reflector_ittt_that_hit_total")
    assert store.has(HASH) and store.get_bytes(HASH) == DATA
    assert sample("reflector_ittt_that_hit_total") == that_hits + 1
    this.put(HASH, DATA)
    with store.get(HASH) as blob:
        assert [h.origin_name for h in blob.trace.stacks][-1] == "ittt"
    assert sample("reflector_ittt_this_hit_total") == this_hits + 1
    broken = ITTT(CloudFrontRO(f"http://127.0.0.1:{free_port()}/", timeout=0.3), that)
    assert broken.has(HASH) and broken.get_bytes(HASH) == DATA
    with pytest.raises(BlobNotFound):
        ITTT(MemoryStore(), MemoryStore()).get(HASH)


def test_read_write_reads_the_endpoint_and_writes_s3(http_server, s3_bucket):
    s3 = S3Store(s3_bucket.aws_id, s3_bucket.aws_secret, s3_bucket.region, s3_bucket.bucket, s3_bucket.endpoint)
    store = CloudFrontRW(ITTT(CloudFrontRO(http_server.url("/a/")), CloudFrontRO(http_server.url("/b/"))), s3)
    store.put(HASH, DATA)
    assert s3_bucket.keys() == {HASH}
    assert not store.has(HASH)  # reads never go to S3 directly: the endpoint does not have it yet
    http_server.routes[f"/b/{HASH}"] = Route(200, DATA)
    with store.get(HASH) as blob:
        assert blob.data == DATA and blob.trace.stacks[-1].origin_name == "cloudfront_rw"
    store.delete(HASH)
    assert s3_bucket.keys() == set()
    with pytest.raises(ValueError):
        CloudFrontRW(None, s3)
