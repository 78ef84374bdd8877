"""Upstream over the LBRY TCP peer protocol (store `peer`, spec §3e), with a small pool of connections.

reflector.go opened a new connection per call (§10 item 17); here idle connections are kept and reused,
a connection that failed is discarded, and every blob fetched is SHA-384 verified by the client.
"""
from __future__ import annotations

import threading
import time

from appliance.blob import check_hash
from appliance.clients.peer import PeerClient
from appliance.errors import BlobNotFound, OriginError
from appliance.stores.base import Blob, BlobStore
from appliance.trace import Trace


class PeerStore(BlobStore):
    """Read-only upstream: `get`/`has` over pooled PeerClient connections; writes are not implemented."""

    name = "peer"

    def __init__(self, upstream: str, timeout: float = 30.0, max_idle: int = 8):
        host, sep, port = upstream.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid upstream {upstream!r}: expected HOST:PORT")
        self.upstream = upstream
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[PeerClient] = []
        self._lock = threading.Lock()

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        return hash_ in self._call(lambda client: client.has_blobs([hash_]))

    def get(self, hash_: str) -> Blob:
        check_hash(hash_)
        started = time.monotonic_ns()
        try:
            data = self._call(lambda client: client.get_blob(hash_))
        except BlobNotFound:
            raise BlobNotFound(trace=Trace.new(self.name, started)) from None
        return Blob(hash_, data=data, trace=Trace.new(self.name, started))

    def _call(self, fn):
        """Run `fn(client)` on a pooled connection; a connection that failed is not reused."""
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = PeerClient(self.host, self.port, self.timeout)
        try:
            result = fn(client)
        except BlobNotFound:
            self._release(client)  # a not-found answer leaves the connection in step
            raise
        except Exception as exc:
            client.close()
            raise OriginError(f"upstream {self.upstream}: {exc}") from exc
        self._release(client)
        return result

    def _release(self, client: PeerClient) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(client)
                return
        client.close()

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()
