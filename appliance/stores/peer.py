"""Upstream over the LBRY TCP peer protocol (store `peer`, spec §3e), with a small pool of connections.

reflector.go opened a new connection per call (§10 item 17); here idle connections are kept and reused,
a connection that failed is discarded, and every blob fetched by `get` is SHA-384 verified (`stream`
leaves that to its reader, which hashes the bytes as it relays them).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

from appliance.blob import check_hash
from appliance.clients.peer import PeerClient
from appliance.errors import BlobNotFound, FirstByteTimeout, IdleTimeout, OriginError
from appliance.stores.base import Blob, BlobStore, BlobStream
from appliance.trace import Trace


class PeerStore(BlobStore):
    """Read-only upstream: `get`/`stream`/`has` over pooled PeerClient connections; writes not implemented.

    The answer's header must come within `first_byte_timeout`; after it, each read within `timeout`.
    """

    name = "peer"

    def __init__(self, upstream: str, timeout: float = 30.0, max_idle: int = 8,
                 first_byte_timeout: float | None = None):
        host, sep, port = upstream.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid upstream {upstream!r}: expected HOST:PORT")
        self.upstream = upstream
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        self.timeout = timeout
        self.first_byte_timeout = timeout if first_byte_timeout is None else first_byte_timeout
        self.max_idle = max_idle
        self._idle: list[PeerClient] = []
        self._lock = threading.Lock()

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        client = self._acquire()
        try:
            present = client.has_blobs([hash_])
        except Exception as exc:
            client.close()
            raise OriginError(f"upstream {self.upstream}: {exc}") from exc
        self._release(client)
        return hash_ in present

    def get(self, hash_: str) -> Blob:
        with self._open(hash_, verify=True) as stream:
            data = b"".join(stream)
        return Blob(hash_, data=data, trace=stream.trace)

    def stream(self, hash_: str) -> BlobStream:
        return self._open(hash_, verify=False)

    def _open(self, hash_: str, verify: bool) -> BlobStream:
        """The blob as a stream; with `verify` its last chunk comes only after the SHA-384 matched (a
        connection that sent wrong bytes is not reused)."""
        check_hash(hash_)
        started = time.monotonic_ns()
        client = self._acquire()
        try:
            size, body = client.stream_blob(hash_, self.timeout)
        except BlobNotFound:
            self._release(client)  # a not-found answer leaves the connection in step
            raise BlobNotFound(trace=Trace.new(self.name, started)) from None
        except TimeoutError as exc:
            client.close()
            raise FirstByteTimeout(f"upstream {self.upstream}: {exc}") from exc
        except Exception as exc:
            client.close()
            raise OriginError(f"upstream {self.upstream}: {exc}") from exc
        finished = []

        def chunks() -> Iterator[bytes]:
            sha = hashlib.sha384() if verify else None
            try:
                for chunk in body:
                    if sha is not None:
                        sha.update(chunk)
                    yield chunk
            except TimeoutError as exc:
                raise IdleTimeout(f"upstream {self.upstream}: {exc}") from exc
            except Exception as exc:
                raise OriginError(f"upstream {self.upstream}: {exc}") from exc
            if sha is not None and sha.hexdigest() != hash_:
                client.close()
                raise OriginError(f"upstream {self.upstream}: blob {hash_[:8]}: received data does not match "
                                  "its hash")
            finished.append(True)
            self._release(client)

        def close() -> None:
            if not finished:
                body.close()
                client.close()

        return BlobStream(size, chunks(), Trace.new(self.name, started), close)

    def _acquire(self) -> PeerClient:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        return client if client is not None else PeerClient(self.host, self.port, self.first_byte_timeout)

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
