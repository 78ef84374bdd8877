"""Upstream over HTTP: another reflector's or blobcache's `/blob` endpoint (spec §3e, store `http`)."""
from __future__ import annotations

import time

import requests
from requests.adapters import HTTPAdapter

from appliance import metrics
from appliance.blob import MAX_BLOB_SIZE, blob_hash, check_hash
from appliance.errors import BlobNotFound, OriginError
from appliance.stores.base import Blob, BlobStore
from appliance.trace import Trace

CONNECT_TIMEOUT = 5.0


class HttpStore(BlobStore):
    """Read-only: `HEAD`/`GET {upstream}/blob?hash=`; every fetched blob's SHA-384 is verified.

    One pooled requests.Session keeps connections to the upstream alive across calls.
    """

    name = "http"

    def __init__(self, upstream: str, edge_token: str = "", timeout: float = 30.0, pool_size: int = 100):
        self.upstream = upstream
        self.base = upstream if "://" in upstream else f"http://{upstream}"
        self.edge_token = edge_token
        self.timeout = timeout
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept-Encoding"] = "identity"

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        resp = self._request("HEAD", hash_, {"hash": hash_})
        if resp.status_code == 204:
            return True
        if resp.status_code == 404:
            return False
        raise self._status_error(resp)

    def get(self, hash_: str) -> Blob:
        check_hash(hash_)
        started = time.monotonic_ns()
        params = {"hash": hash_}
        if self.edge_token:
            params["edge_token"] = self.edge_token
        resp = self._request("GET", hash_, params)
        trace = self._upstream_trace(resp)
        if resp.status_code == 404:
            raise BlobNotFound(trace=trace.stack(self.name, started))
        if resp.status_code != 200:
            raise self._status_error(resp)
        data = resp.content
        metrics.HTTP_IN_BYTES.inc(len(data))
        if not 0 < len(data) <= MAX_BLOB_SIZE or blob_hash(data) != hash_:
            raise OriginError(f"upstream {self.upstream} sent {len(data)} bytes for {hash_[:8]} that do not match "
                              "its hash")
        return Blob(hash_, data=data, trace=trace.stack(self.name, started))

    def _request(self, method: str, hash_: str, params: dict) -> requests.Response:
        try:
            # A short connect timeout: an upstream that accepts nothing must not hold a miss for 30 s.
            return self.session.request(method, f"{self.base}/blob", params=params,
                                        timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
        except requests.Timeout as exc:
            raise OriginError(f"upstream {self.upstream}: i/o timeout ({hash_[:8]})") from exc
        except requests.RequestException as exc:
            raise OriginError(f"upstream {self.upstream}: {_reason(exc)}") from exc

    def _upstream_trace(self, resp: requests.Response) -> Trace:
        via = resp.headers.get("Via")
        if not via:
            return Trace()
        try:
            return Trace.from_json(via)
        except ValueError as exc:
            raise OriginError(f"upstream {self.upstream} sent an invalid Via header: {exc}") from None

    @staticmethod
    def _status_error(resp: requests.Response) -> OriginError:
        body = resp.text[:200].strip() if resp.content else ""
        return OriginError(f"upstream error. Status code: {resp.status_code} ({body})")

    def shutdown(self) -> None:
        self.session.close()


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, one line."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
