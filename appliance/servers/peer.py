"""LBRY TCP peer protocol server (:5567; 3333 for `prism peer`), spec §3b and lbry-sdk-wire.md.

Many requests per connection, one at a time. A request is one JSON object whose first byte is `{`, up
to 64 KiB (reflector.go's 512 is a typo, spec §10 item 1). The answer keeps reflector.go's shape; a
missing blob is answered at once with `incoming_blob.error` so an SDK client gives up immediately.
Protected blobs are refused on `requested_blobs` and on `requested_blob` alike (DESIGN §4).
"""
from __future__ import annotations

import logging
import socket
import time

from appliance import metrics
from appliance.blob import is_valid_hash
from appliance.errors import BlobNotFound
from appliance.protocol import peer as codec
from appliance.protocol.framing import JsonFramer
from appliance.servers.base import GeventServer
from appliance.servers.sendfile import send_blob

log = logging.getLogger("peer")

MAX_REQUEST_BYTES = 64 * 1024
PROTECTED_ERROR = "requested blob is protected"


class _Closed(Exception):
    """The client closed the connection cleanly between requests."""


class PeerServer(GeventServer):
    name = "peer"

    def __init__(self, listener, store, *, idle_timeout: float = 60.0, protected=None, send_timeout: float = 60.0):
        super().__init__(listener)
        self.store = store
        self.protected = protected
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout

    def handle(self, sock, address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framer = JsonFramer(max_json=MAX_REQUEST_BYTES, require_brace=True)
        try:
            while self.serving(sock):
                request = self._read_request(sock, framer)
                with self.begin(sock):
                    self._answer(sock, request)
        except _Closed:
            pass
        except Exception as exc:  # every failure closes the connection without a reply (reflector.go)
            kind = metrics.count_error("download", exc)
            if kind == "other":
                log.warning("peer: connection from %s: %s", address[0], exc)

    def _read_request(self, sock, framer: JsonFramer) -> dict:
        """The next request; the whole of it must arrive within idle_timeout of its first byte."""
        deadline = None
        while True:
            obj = framer.next_json()
            if obj is not None:
                return obj
            if deadline is None and framer.buffered():
                deadline = time.monotonic() + self.idle_timeout
            sock.settimeout(self.idle_timeout if deadline is None else max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                framer.finish()  # raises when a request was cut off
                raise _Closed()
            framer.feed(chunk)

    def _answer(self, sock, obj: dict) -> None:
        request = codec.parse_request(obj)
        wanted = request.requested_blob or None
        blob = None
        incoming = None
        if wanted is not None:
            codec.check_requested_blob(wanted)
            if self._is_protected(wanted):
                metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="peer", reason="protected_blob").inc()
                incoming = {"error": PROTECTED_ERROR, "blob_hash": "", "length": 0}
            else:
                try:
                    blob = self.store.get(wanted)
                except BlobNotFound:
                    metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="peer", reason="blob_not_found").inc()
                    incoming = codec.INCOMING_NOT_FOUND
                else:
                    incoming = codec.incoming_found(wanted, blob.size)
        try:
            available = self._available(request.requested_blobs or [], wanted, blob is not None)
            header = codec.encode_response(available_blobs=available,
                                           payment_rate=codec.rate_reply(request.blob_data_payment_rate),
                                           incoming_blob=incoming)
            sock.settimeout(self.send_timeout)
            if blob is None:
                sock.sendall(header)
                return
            send_blob(sock, header, blob, self.send_timeout)
            metrics.TCP_OUT_BYTES.inc(blob.size)
            metrics.BLOB_DOWNLOAD_TOTAL.inc()
            metrics.PEER_DOWNLOAD_TOTAL.inc()
        finally:
            if blob is not None:
                blob.close()

    def _available(self, hashes: list[str], fetched: str | None, found: bool) -> list[str]:
        """The requested hashes we can serve, in request order.

        The hash also being downloaded is answered from the fetch itself: the store may hold it only
        behind a cache miss that `has` would not see, and the SDK client needs it listed.
        """
        available = []
        for h in hashes:
            if h == fetched:
                if found:
                    available.append(h)
            elif is_valid_hash(h) and not self._is_protected(h) and self.store.has(h):
                available.append(h)
        return available

    def _is_protected(self, hash_: str) -> bool:
        return self.protected is not None and self.protected.is_protected(hash_)
