"""S3 (boto3): object key = blob hash (spec §4.7).

The client is created on first use in each process (never inherited through a fork) and shared by the
threads or greenlets of that process; boto3 clients are thread-safe once created. botocore retries
throttling, 5xx answers and connection failures with exponential backoff ("standard" mode), and every
request has connect and read timeouts. Fetched blobs are checked against their SHA-384.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from appliance import metrics
from appliance.blob import MAX_BLOB_SIZE, blob_hash, check_hash
from appliance.errors import BlobNotFound, IdleTimeout, OriginError
from appliance.stores.base import Blob, BlobStore, BlobStream, Upload
from appliance.stores.offhub import cooperate
from appliance.stores.s3put import PutConnections
from appliance.trace import Trace

log = logging.getLogger("store")

NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
CHUNK = 128 * 1024
PRESIGN_SECONDS = 900  # a streamed PUT's URL is used at once; this only bounds a clock skew


class S3Store(BlobStore):
    """has / get / put / put_sd / delete on one bucket."""

    name = "s3"

    def __init__(self, aws_id: str, aws_secret: str, region: str, bucket: str, endpoint: str = "", *,
                 acl: str = "public-read", connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 max_attempts: int = 5):
        if not bucket:
            raise ValueError("S3 needs a bucket name (bucket_name)")
        self.aws_id, self.aws_secret = aws_id, aws_secret
        self.region = region or "us-east-1"
        self.bucket = bucket
        self.endpoint = endpoint
        self.read_timeout = read_timeout
        self.acl = acl  # reflector.go uploads public-read: blobs are public anyway (CloudFront reads them)
        self._config = Config(
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            # A custom endpoint (MinIO, Ceph, moto...) is addressed by path; AWS by virtual host.
            s3={"addressing_style": "path" if endpoint else "virtual"},
            # Only the checksums S3 requires: third-party S3 servers reject the newer optional ones,
            # and blobs are verified by their SHA-384 anyway.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            # SigV4 for presigned URLs too (botocore presigns with SigV2 for a custom endpoint otherwise)
            signature_version="s3v4", max_pool_connections=64)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._client = None
        self._client_pid = 0
        self._puts: PutConnections | None = None

    @classmethod
    def from_config(cls, config) -> S3Store:
        """The store for reflector.go's config keys aws_id, aws_secret, bucket_region, bucket_name, s3_endpoint."""
        return cls(config.aws_id, config.aws_secret, config.bucket_region, config.bucket_name, config.s3_endpoint)

    def client(self):
        if self._client_pid != os.getpid():
            with self._lock:
                if self._client_pid != os.getpid():
                    # boto3 sessions are not thread-safe: one private session per client, made under the lock.
                    session = boto3.session.Session(aws_access_key_id=self.aws_id or None,
                                                    aws_secret_access_key=self.aws_secret or None,
                                                    region_name=self.region)
                    self._client = session.client("s3", endpoint_url=self.endpoint or None, config=self._config)
                    self._puts = PutConnections(self._connect_timeout, self.read_timeout)
                    self._client_pid = os.getpid()
        return self._client

    def put_connections(self) -> PutConnections:
        """This process's connections for streamed PUTs."""
        self.client()
        return self._puts

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        try:
            self.client().head_object(Bucket=self.bucket, Key=hash_)
            return True
        except ClientError as exc:
            if _code(exc) in NOT_FOUND_CODES:
                return False
            raise self._error("head", hash_, exc) from None
        except BotoCoreError as exc:
            raise self._error("head", hash_, exc) from None

    def get(self, hash_: str) -> Blob:
        check_hash(hash_)
        started = time.monotonic_ns()
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=hash_)
            with response["Body"] as body:
                data = body.read(MAX_BLOB_SIZE + 1)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND_CODES:
                raise BlobNotFound(trace=Trace.new(self.name, started)) from None
            raise self._error("get", hash_, exc) from None
        except BotoCoreError as exc:
            raise self._error("get", hash_, exc) from None
        if not 0 < len(data) <= MAX_BLOB_SIZE or blob_hash(data) != hash_:
            raise OriginError(f"s3 bucket {self.bucket}: object {hash_[:8]} ({len(data)} bytes) does not match "
                              "its hash")
        return Blob(hash_, data=data, trace=Trace.new(self.name, started))

    def stream(self, hash_: str) -> BlobStream:
        check_hash(hash_)
        started = time.monotonic_ns()
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=hash_)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND_CODES:
                raise BlobNotFound(trace=Trace.new(self.name, started)) from None
            raise self._error("get", hash_, exc) from None
        except BotoCoreError as exc:
            raise self._error("get", hash_, exc) from None
        body = response["Body"]
        size = int(response.get("ContentLength") or 0)
        if not 0 < size <= MAX_BLOB_SIZE:
            body.close()
            raise OriginError(f"s3 bucket {self.bucket}: object {hash_[:8]} has {size} bytes: not a blob")
        return BlobStream(size, self._chunks(body, hash_), Trace.new(self.name, started), body.close)

    def _chunks(self, body, hash_: str) -> Iterator[bytes]:
        """The body's bytes (botocore checks their count against ContentLength)."""
        try:
            yield from body.iter_chunks(CHUNK)
        except ReadTimeoutError as exc:
            raise IdleTimeout(f"s3 get {hash_[:8]}: i/o timeout ({exc})") from None
        except (BotoCoreError, OSError) as exc:
            raise self._error("get", hash_, exc) from None

    def put(self, hash_: str, data: bytes) -> None:
        check_hash(hash_)
        extra = {"ACL": self.acl} if self.acl else {}
        try:
            self.client().put_object(Bucket=self.bucket, Key=hash_, Body=bytes(data), **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("put", hash_, exc) from None
        metrics.S3_OUT_BYTES.inc(len(data))  # counted when stored (reflector.go also counted failures)

    def stream_upload(self, hash_: str, size: int) -> Upload:
        """A PUT that sends the blob as it arrives (overlapping the receive; see S3Upload), for a caller that
        lists stored blobs elsewhere (DBBackedStore).

        Not the plain `upload` (which puts the blob whole at commit): S3 stores nothing of a body cut short,
        but some S3-compatible servers (s3rver) keep what arrived of an aborted PUT. Behind the database that
        object is never listed, and the next upload of the blob replaces it.
        """
        check_hash(hash_)
        if self._behind_proxy():
            return self.upload(hash_, size)  # put whole by boto3, which goes through the proxy; s3put does not
        return S3Upload(self, hash_, size)

    def _behind_proxy(self) -> bool:
        """Whether the environment sends this store's requests through a proxy (HTTP(S)_PROXY, NO_PROXY)."""
        endpoint = urlsplit(self.endpoint or f"https://{self.bucket}.s3.{self.region}.amazonaws.com")
        return endpoint.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(endpoint.hostname)

    def delete(self, hash_: str) -> None:
        check_hash(hash_)
        try:
            self.client().delete_object(Bucket=self.bucket, Key=hash_)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", hash_, exc) from None

    def check_bucket(self) -> None:
        """OriginError unless the bucket exists and answers (a bulk job checks this once, up front)."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise OriginError(f"bucket {self.bucket} does not exist") from None
            raise self._error("head bucket", "", exc) from None
        except BotoCoreError as exc:
            raise self._error("head bucket", "", exc) from None

    def _error(self, op: str, hash_: str, exc: Exception) -> OriginError:
        """One line for the operator; timeouts say `i/o timeout` so they classify as reflector.go's io_timeout."""
        subject = f"s3 {op} {hash_[:8]}" if hash_ else f"s3 {op} {self.bucket}"
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return OriginError(f"bucket {self.bucket} does not exist")
            message = exc.response.get("Error", {}).get("Message") or ""
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return OriginError(f"{subject}: {code or status} {message}".rstrip())
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            return OriginError(f"{subject}: i/o timeout ({exc})")
        return OriginError(f"{subject}: {exc}")


class _Body:
    """The body of a streamed PUT: an iterable that yields views of the bytes written so far, waiting for more.

    The blob's buffer is allocated whole up front (a blob is at most 2 MiB) and never resized, so each
    hand-over is a memoryview of what arrived since the last one: no copy, and one hand-over per received
    chunk rather than one per 16 KiB `read` (appliance.stores.s3put sends each chunk it yields). The final byte
    is held back until `release` (the caller has verified the SHA-384 by then), so S3 cannot complete the
    object before that; `fail` makes the iteration raise, which aborts the PUT, and S3 keeps nothing of a
    body shorter than its Content-Length. The whole buffer stays for a whole-blob retry.
    """

    def __init__(self, size: int, idle_timeout: float = 60.0):
        self.size = size
        self.idle_timeout = idle_timeout  # no new bytes for this long: the PUT gives up (commit puts whole)
        self.data = bytearray(size)
        self.filled = 0
        self._limit = 0
        self._failed = False
        self._cond = threading.Condition()

    def feed(self, chunk) -> None:
        end = self.filled + len(chunk)
        self.data[self.filled:end] = chunk  # the same length: never a resize while a view is out
        with self._cond:
            self.filled = end
            self._limit = min(end, self.size - 1)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._limit = self.filled
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def __iter__(self) -> Iterator[memoryview]:
        view = memoryview(self.data)
        pos = 0
        while pos < self.size:
            with self._cond:
                deadline = time.monotonic() + self.idle_timeout
                while not self._failed and pos >= self._limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise OSError(f"no bytes to send for {self.idle_timeout:g}s")
                    self._cond.wait(left)
                if self._failed:
                    raise OSError("upload aborted")
                end = self._limit
            yield view[pos:end]
            pos = end


class S3Upload(Upload):
    """S3Store.stream_upload: the PUT starts at once (its URL is presigned and its connection taken while the first
    bytes are on their way; appliance.stores.s3put) and runs in a thread, or a greenlet in a gevent worker,
    sending each chunk as it is written; `commit` sends the held-back final byte and waits for S3's answer. If
    the stream fails, the blob is put again whole, with retries, before `commit` returns."""

    def __init__(self, store: S3Store, hash_: str, size: int):
        if not 0 < size <= MAX_BLOB_SIZE:
            raise ValueError(f"blob {hash_[:8]}: {size} bytes is not a blob size")
        self.store, self.hash, self.size = store, hash_, size
        self.body = _Body(size, store.read_timeout)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._put, name=f"s3-put-{hash_[:8]}", daemon=True)
        self._thread.start()

    def _put(self) -> None:
        # The body is sent as it arrives, so it is not signed (a presigned PUT is UNSIGNED-PAYLOAD; blobs are
        # checked by their SHA-384) and cannot be rewound for a retry: a failed stream is put again whole.
        store = self.store
        acl = {"ACL": store.acl} if store.acl else {}
        try:
            url = store.client().generate_presigned_url(
                "put_object", Params={"Bucket": store.bucket, "Key": self.hash, **acl}, ExpiresIn=PRESIGN_SECONDS)
            store.put_connections().put(url, self.body, self.size, {"x-amz-acl": store.acl} if store.acl else {})
        except Exception as exc:  # reported by commit, which then puts the blob whole
            self._error = exc

    def write(self, chunk) -> None:
        if self.body.filled + len(chunk) > self.size:
            raise ValueError(f"blob {self.hash[:8]}: more than the {self.size} bytes announced")
        self.body.feed(chunk)
        # In a gevent worker the PUT is a greenlet: let it send this chunk now, while the next one arrives,
        # rather than only once the receiving greenlet waits for the network (at the end of the blob).
        cooperate()

    def commit(self) -> None:
        if self.body.filled != self.size:
            raise ValueError(f"blob {self.hash[:8]}: {self.body.filled} of {self.size} bytes written")
        self.body.release()
        self._thread.join()
        if self._error is not None:
            log.info("s3: streamed put of %s failed (%s); putting it whole", self.hash[:8], self._error)
            self.store.put(self.hash, bytes(self.body.data))
            return
        metrics.S3_OUT_BYTES.inc(self.size)

    def abort(self) -> None:
        self.body.fail()  # the PUT stops short of its Content-Length: S3 stores nothing


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
