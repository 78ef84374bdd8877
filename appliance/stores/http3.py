"""Upstream over HTTP/3: another reflector's or blobcache's `/has/` and `/get/` on its QUIC port (store `http3`).

One QUIC connection is reused for every call and shared by concurrent callers (spec §10 item 17 fixed),
the timeout bounds each call, a dead connection is replaced (upstream restarted), and every blob's
SHA-384 is verified. Certificates are not verified: upstreams use self-signed ones, as in reflector.go.

The store is used from gevent workers and from plain threads alike: the asyncio side runs on a
LoopThread (appliance/http3/loopthread.py), and callers block only themselves (a greenlet parks
cooperatively). The upstream's name is resolved by the caller, so DNS is cooperative under gevent.
"""
from __future__ import annotations

import socket
import threading
import time

from appliance import metrics
from appliance.blob import MAX_BLOB_SIZE, blob_hash, check_hash
from appliance.errors import BlobNotFound, OriginError
from appliance.http3.client import ConnectionLost, H3Client, ResponseError
from appliance.http3.loopthread import LoopThread, original
from appliance.stores.base import Blob, BlobStore
from appliance.trace import Trace

RESOLVE_TTL = 60.0
WAIT_MARGIN = 10.0  # the coroutine enforces the timeout; the caller's wait is only a safety net


class Http3Store(BlobStore):
    """Read-only upstream over HTTP/3; `put`/`delete` are not implemented."""

    name = "http3"

    def __init__(self, upstream: str, timeout: float = 30.0, edge_token: str = ""):
        host, sep, port = upstream.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid upstream {upstream!r}: expected HOST:PORT")
        self.upstream = upstream
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        self.timeout = timeout
        self.edge_token = edge_token
        self._loop = LoopThread(f"http3 {upstream}")
        self._client: H3Client | None = None
        self._client_lock = threading.Lock()
        self._addr: tuple | None = None
        self._resolved_at = 0.0

    # -- BlobStore ------------------------------------------------------------------------------------
    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        resp = self._get(f"/has/{hash_}", 4096, hash_)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._status_error(resp)

    def get(self, hash_: str) -> Blob:
        check_hash(hash_)
        started = time.monotonic_ns()
        path = f"/get/{hash_}?trace=true" + (f"&edge_token={self.edge_token}" if self.edge_token else "")
        resp = self._get(path, MAX_BLOB_SIZE, hash_)
        trace = self._upstream_trace(resp.headers.get(b"via"))
        if resp.status == 404:
            raise BlobNotFound(trace=trace.stack(self.name, started))
        if resp.status != 200:
            raise self._status_error(resp)
        data = resp.body
        metrics.UDP_IN_BYTES.inc(len(data))
        if not data or blob_hash(data) != hash_:
            raise OriginError(f"upstream {self.upstream} sent {len(data)} bytes for {hash_[:8]} that do not match "
                              "its hash")
        return Blob(hash_, data=data, trace=trace.stack(self.name, started))

    def shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                self._loop.run(client.close, wait_timeout=5.0)
            except Exception:  # closing is best effort; the loop goes away next
                pass
        self._loop.stop()

    # -- plumbing -------------------------------------------------------------------------------------
    def _get(self, path: str, max_body: int, hash_: str):
        addr = self._address()
        with self._client_lock:
            if self._client is None:
                server_name = None if _is_ip(self.host) else self.host
                self._client = H3Client(f"{self.host}:{self.port}", server_name,
                                        socket_factory=original("socket", "socket"))
            client = self._client
        try:
            return self._loop.run(lambda: client.get(addr, path, timeout=self.timeout, max_body=max_body),
                                  wait_timeout=self.timeout + WAIT_MARGIN)
        except TimeoutError:
            raise OriginError(f"upstream {self.upstream}: i/o timeout ({hash_[:8]})") from None
        except (ConnectionLost, ResponseError, OSError) as exc:
            raise OriginError(f"upstream {self.upstream}: {exc}") from None

    def _address(self) -> tuple:
        if self._addr is None or time.monotonic() - self._resolved_at > RESOLVE_TTL:
            try:
                info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise OriginError(f"upstream {self.upstream}: cannot resolve {self.host}: {exc}") from None
            self._addr, self._resolved_at = info[0][4], time.monotonic()
        return self._addr

    def _upstream_trace(self, via: bytes | None) -> Trace:
        if not via:
            return Trace()
        try:
            return Trace.from_json(via)
        except ValueError as exc:
            raise OriginError(f"upstream {self.upstream} sent an invalid Via header: {exc}") from None

    def _status_error(self, resp) -> OriginError:
        body = resp.body[:200].decode("utf-8", "replace").strip()
        return OriginError(f"upstream {self.upstream}: non 200 status code returned: {resp.status} ({body})")


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
