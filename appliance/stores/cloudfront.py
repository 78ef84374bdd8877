"""HTTP origin endpoints (spec §4.8): CloudFront-style read-only, the primary/fallback pair, and reads
from the endpoint combined with writes to S3."""
from __future__ import annotations

import logging
import time

import requests
from requests.adapters import HTTPAdapter

from appliance import __version__, metrics
from appliance.blob import check_hash
from appliance.errors import BlobNotFound, FirstByteTimeout, NotImplementedByStore, OriginError
from appliance.stores.base import Blob, BlobStore, BlobStream
from appliance.stores.http import body_stream
from appliance.trace import Trace

log = logging.getLogger("store")
USER_AGENT = f"reflector-appliance/{__version__}"
CONNECT_TIMEOUT = 5.0


class CloudFrontRO(BlobStore):
    """Read-only: HEAD / GET <endpoint><hash>; 403 and 404 mean not found; every blob's SHA-384 verified."""

    name = "cloudfront_ro"

    def __init__(self, endpoint: str, timeout: float = 30.0, pool_size: int = 64,
                 first_byte_timeout: float | None = None):
        # reflector.go concatenates as given; a missing trailing slash would make every URL wrong.
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.timeout = timeout  # idle: each read of a body (reflector.go has none)
        self.first_byte_timeout = timeout if first_byte_timeout is None else first_byte_timeout
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def _request(self, method: str, hash_: str) -> requests.Response:
        try:
            return self.session.request(method, self.endpoint + hash_, stream=True,
                                        timeout=(min(CONNECT_TIMEOUT, self.first_byte_timeout),
                                                 self.first_byte_timeout))
        except requests.ConnectTimeout as exc:
            raise OriginError(f"origin {self.endpoint}: i/o timeout connecting ({hash_[:8]})") from exc
        except requests.Timeout as exc:
            raise FirstByteTimeout(f"origin {self.endpoint}: i/o timeout: no answer within "
                                   f"{self.first_byte_timeout:g}s ({hash_[:8]})") from exc
        except requests.RequestException as exc:
            raise OriginError(f"origin {self.endpoint}: {type(exc).__name__}: {str(exc)[:200]}") from exc

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        with self._request("HEAD", hash_) as resp:
            if resp.status_code == 200:
                return True
            if resp.status_code in (403, 404):
                return False
            raise OriginError(f"origin {self.endpoint}: unexpected status {resp.status_code}")

    def get(self, hash_: str) -> Blob:
        return self.stream(hash_).read_verified(hash_, f"origin {self.endpoint}")

    def stream(self, hash_: str) -> BlobStream:
        """The body as it arrives; its length is the announced Content-Length (at most MAX_BLOB_SIZE)."""
        check_hash(hash_)
        started = time.monotonic_ns()
        resp = self._request("GET", hash_)
        try:
            if resp.status_code in (403, 404):
                raise BlobNotFound(trace=Trace.new(self.name, started))
            if resp.status_code != 200:
                raise OriginError(f"origin {self.endpoint}: unexpected status {resp.status_code}")
        except BaseException:
            resp.close()
            raise
        return body_stream(resp, hash_, f"origin {self.endpoint}", self.timeout, Trace.new(self.name, started),
                           metrics.S3_IN_BYTES)

    def put(self, hash_: str, data: bytes) -> None:
        raise NotImplementedByStore()

    def delete(self, hash_: str) -> None:
        raise NotImplementedByStore()

    def shutdown(self) -> None:
        self.session.close()


class ITTT(BlobStore):
    """"If this then that": read from `this`; on a miss or an error, from `that`. Read-only."""

    name = "ittt"

    def __init__(self, this: BlobStore, that: BlobStore):
        self.this, self.that = this, that

    def has(self, hash_: str) -> bool:
        try:
            if self.this.has(hash_):
                return True
        except Exception as exc:  # any failure of the first store: ask the second
            log.debug("ittt: %s has %s failed: %s", self.this.name, hash_[:8], exc)
        return self.that.has(hash_)

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        try:
            blob = self.this.get(hash_)
            metrics.ITTT_THIS_HIT_TOTAL.inc()
        except Exception as exc:
            if not isinstance(exc, BlobNotFound):
                log.debug("ittt: %s get %s failed: %s", self.this.name, hash_[:8], exc)
            blob = self.that.get(hash_)
            metrics.ITTT_THAT_HIT_TOTAL.inc()
        blob.trace.stack(self.name, started)
        return blob

    def stream(self, hash_: str) -> BlobStream:
        started = time.monotonic_ns()
        try:
            stream = self.this.stream(hash_)
            metrics.ITTT_THIS_HIT_TOTAL.inc()
        except Exception as exc:  # before any byte: the second store can still answer
            if not isinstance(exc, BlobNotFound):
                log.debug("ittt: %s stream %s failed: %s", self.this.name, hash_[:8], exc)
            stream = self.that.stream(hash_)
            metrics.ITTT_THAT_HIT_TOTAL.inc()
        stream.trace.stack(self.name, started)
        return stream

    def put(self, hash_: str, data: bytes) -> None:
        raise NotImplementedByStore()

    def delete(self, hash_: str) -> None:
        raise NotImplementedByStore()

    def shutdown(self) -> None:
        self.this.shutdown()
        self.that.shutdown()


class CloudFrontRW(BlobStore):
    """Reads through the endpoint store, writes and deletes through S3."""

    name = "cloudfront_rw"

    def __init__(self, reads: BlobStore, s3: BlobStore):
        if reads is None or s3 is None:
            raise ValueError("CloudFrontRW needs both a read store and an S3 store")
        self.reads, self.s3 = reads, s3

    def has(self, hash_: str) -> bool:
        return self.reads.has(hash_)

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        blob = self.reads.get(hash_)
        blob.trace.stack(self.name, started)
        return blob

    def stream(self, hash_: str) -> BlobStream:
        started = time.monotonic_ns()
        stream = self.reads.stream(hash_)
        stream.trace.stack(self.name, started)
        return stream

    def put(self, hash_: str, data: bytes) -> None:
        self.s3.put(hash_, data)

    def put_sd(self, hash_: str, data: bytes) -> None:
        self.s3.put_sd(hash_, data)

    def delete(self, hash_: str) -> None:
        self.s3.delete(hash_)

    def shutdown(self) -> None:
        self.reads.shutdown()
        self.s3.shutdown()
