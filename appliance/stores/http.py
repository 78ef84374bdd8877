"""Upstream over HTTP: another reflector's or blobcache's `/blob` endpoint (spec §3e, store `http`)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from appliance import metrics
from appliance.blob import MAX_BLOB_SIZE, check_hash
from appliance.clients import rawhttp
from appliance.errors import BlobNotFound, FirstByteTimeout, IdleTimeout, OriginError
from appliance.stores.base import Blob, BlobStore, BlobStream
from appliance.trace import Trace

CONNECT_TIMEOUT = 5.0
CHUNK = 128 * 1024


class HttpStore(BlobStore):
    """Read-only: `HEAD`/`GET {upstream}/blob?hash=`; every fetched blob's SHA-384 is verified by `get`.

    One pooled requests.Session keeps connections to the upstream alive across calls. The answer's header
    must come within `first_byte_timeout`; after it, every read within `timeout` (the idle timeout).
    """

    name = "http"

    def __init__(self, upstream: str, edge_token: str = "", timeout: float = 30.0, pool_size: int = 100,
                 first_byte_timeout: float | None = None):
        self.upstream = upstream
        self.base = upstream if "://" in upstream else f"http://{upstream}"
        self.edge_token = edge_token
        self.timeout = timeout
        self.first_byte_timeout = timeout if first_byte_timeout is None else first_byte_timeout
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept-Encoding"] = "identity"
        url = urlsplit(self.base)
        self.path = url.path.rstrip("/")
        self.raw = rawhttp.RawHttpPool(url.hostname, url.port or 80, pool_size) if url.scheme == "http" else None

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        resp = self._request("HEAD", hash_, {"hash": hash_})
        if resp.status_code == 204:
            return True
        if resp.status_code == 404:
            return False
        raise self._status_error(resp)

    def get(self, hash_: str) -> Blob:
        return self.stream(hash_).read_verified(hash_, f"upstream {self.upstream}")

    def stream(self, hash_: str) -> BlobStream:
        check_hash(hash_)
        if self.raw is not None:
            return self._raw_stream(hash_)
        started = time.monotonic_ns()
        resp = self._request("GET", hash_, self._params(hash_), stream=True)
        try:
            trace = self._upstream_trace(resp.headers.get("Via"))
            if resp.status_code == 404:
                raise BlobNotFound(trace=trace.stack(self.name, started))
            if resp.status_code != 200:
                raise self._status_error(resp)
        except BaseException:
            resp.close()
            raise
        return body_stream(resp, hash_, f"upstream {self.upstream}", self.timeout, trace.stack(self.name, started),
                           metrics.HTTP_IN_BYTES)

    def _raw_stream(self, hash_: str) -> BlobStream:
        """stream() over the lean client (http:// upstreams: the miss path's hot loop)."""
        started = time.monotonic_ns()
        try:
            answer = self.raw.get(f"{self.path}/blob?{urlencode(self._params(hash_))}", self.first_byte_timeout,
                                  self.timeout)
        except rawhttp.FirstByteTimeoutError as exc:
            raise FirstByteTimeout(f"upstream {self.upstream}: i/o timeout: no answer within "
                                   f"{self.first_byte_timeout:g}s ({hash_[:8]})") from exc
        except TimeoutError as exc:
            raise OriginError(f"upstream {self.upstream}: i/o timeout connecting ({hash_[:8]})") from exc
        except (OSError, rawhttp.RawHttpError) as exc:
            raise OriginError(f"upstream {self.upstream}: {exc}") from exc
        try:
            trace = self._upstream_trace(answer.headers.get("via"))
            if answer.status == 404:
                answer.read_small()
                raise BlobNotFound(trace=trace.stack(self.name, started))
            if answer.status != 200:
                text = answer.read_small(200).decode("utf-8", "replace").strip()
                raise OriginError(f"upstream error. Status code: {answer.status} ({text})")
            if not 0 < answer.length <= MAX_BLOB_SIZE:
                raise OriginError(f"upstream {self.upstream} announced {answer.headers.get('content-length')!r} "
                                  f"bytes for {hash_[:8]}, which do not match any blob size (1 to {MAX_BLOB_SIZE})")
        except BaseException:
            answer.close()
            raise
        return BlobStream(answer.length, self._raw_chunks(answer, hash_), trace.stack(self.name, started),
                          answer.close)

    def _raw_chunks(self, answer: rawhttp.Answer, hash_: str) -> Iterator[bytes]:
        try:
            for chunk in answer.body():
                metrics.HTTP_IN_BYTES.inc(len(chunk))
                yield chunk
        except rawhttp.StalledBody as exc:
            raise IdleTimeout(f"upstream {self.upstream}: i/o timeout reading {hash_[:8]}: {exc}") from exc
        except OSError as exc:
            raise OriginError(f"upstream {self.upstream}: reading {hash_[:8]}: {exc}") from exc

    def _params(self, hash_: str) -> dict:
        params = {"hash": hash_}
        if self.edge_token:
            params["edge_token"] = self.edge_token
        return params

    def _request(self, method: str, hash_: str, params: dict, stream: bool = False) -> requests.Response:
        try:
            # A short connect timeout: an upstream that accepts nothing must not hold a miss for long.
            return self.session.request(method, f"{self.base}/blob", params=params, stream=stream,
                                        timeout=(min(CONNECT_TIMEOUT, self.first_byte_timeout),
                                                 self.first_byte_timeout))
        except requests.ConnectTimeout as exc:
            raise OriginError(f"upstream {self.upstream}: i/o timeout connecting ({hash_[:8]})") from exc
        except requests.Timeout as exc:
            raise FirstByteTimeout(f"upstream {self.upstream}: i/o timeout: no answer within "
                                   f"{self.first_byte_timeout:g}s ({hash_[:8]})") from exc
        except requests.RequestException as exc:
            raise OriginError(f"upstream {self.upstream}: {_reason(exc)}") from exc

    def _upstream_trace(self, via: str | None) -> Trace:
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
        if self.raw is not None:
            self.raw.close()


def body_stream(resp: requests.Response, hash_: str, source: str, idle_timeout: float, trace: Trace,
                counter) -> BlobStream:
    """The body of a 200 answer (requested with stream=True) as it arrives: its size is the announced
    Content-Length, each read waits at most `idle_timeout`, `counter` counts the bytes. Closes `resp` when
    the answer is no blob."""
    try:
        try:
            size = int(resp.headers.get("Content-Length", ""))
        except ValueError:
            size = -1
        if not 0 < size <= MAX_BLOB_SIZE:
            raise OriginError(f"{source} announced {resp.headers.get('Content-Length')!r} bytes for {hash_[:8]}, "
                              f"which do not match any blob size (1 to {MAX_BLOB_SIZE})")
        sock = getattr(resp.raw.connection, "sock", None)
        if sock is not None:
            sock.settimeout(idle_timeout)  # from here on, the idle timeout bounds each read
    except BaseException:
        resp.close()
        raise
    return BlobStream(size, _chunks(resp, size, hash_, source, idle_timeout, counter), trace, resp.close)


def _chunks(resp: requests.Response, size: int, hash_: str, source: str, idle_timeout: float,
            counter) -> Iterator[bytes]:
    raw = resp.raw
    received = 0
    while received < size:
        try:
            chunk = raw.read(min(CHUNK, size - received))
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise IdleTimeout(f"{source}: i/o timeout: nothing for {idle_timeout:g}s after {received} of {size} "
                              f"bytes of {hash_[:8]}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise OriginError(f"{source}: reading {hash_[:8]}: {_reason(exc)}") from exc
        if not chunk:
            raise OriginError(f"{source}: unexpected EOF after {received} of {size} bytes of {hash_[:8]}")
        received += len(chunk)
        counter.inc(len(chunk))
        yield chunk
    raw.release_conn()  # read to the end: the connection goes back to the pool


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, one line."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
