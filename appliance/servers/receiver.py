"""Reflector upload receiver (:5566), spec §3a and lbry-sdk-wire.md "Reflector upload".

Per connection: handshake (version 0 or 1, echoed), then any number of send requests, each an sd blob or
a content blob. A blob is checked (size, hash format, SHA-384; an sd blob must be a valid stream
descriptor), stored through `store`, and only then acknowledged. Any error closes the connection with
nothing stored and no error message (LBRY clients do not parse one); it is counted with reflector.go's
error_type and logged only when unclassified.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import time

from appliance import metrics
from appliance.blob import blob_hash, check_hash
from appliance.errors import BlobNotFound, HashMismatch, UnexpectedEOF
from appliance.protocol import reflector as codec
from appliance.protocol.framing import JsonFramer
from appliance.servers.base import GeventServer
from appliance.stores.base import NeededBlobsChecker
from appliance.stream import InvalidStreamDescriptor, parse_sd_blob

log = logging.getLogger("reflector")

MAX_MESSAGE_BYTES = 64 * 1024
_RECV_CHUNK = 256 * 1024  # one upload's receive buffer


class _Closed(Exception):
    """The client ended the session cleanly between messages."""


def content_blob_hashes(sd_data: bytes) -> list[str]:
    """The content blob hashes of a valid stream descriptor; InvalidStreamDescriptor otherwise."""
    return [b.blob_hash for b in parse_sd_blob(sd_data).content_blobs]


class ReceiverServer(GeventServer):
    """`store` takes the writes (put/put_sd); `underlying` answers has() and, if it can, needed_blobs."""

    name = "receiver"
    # Every worker accepts uploads from one shared queue (SHARED_SERVICES in appliance/servers/listening.py). One
    # per wakeup, then a pause of 1 ms per connection it holds, at most 4 ms: the worker with the fewest takes
    # the next (and 500 idle connections still leave a worker accepting 250 a second).
    accept_batch = 1
    accept_stagger = 0.001
    accept_stagger_max = 0.004

    def __init__(self, listener, store, underlying, *, timeout: float = 180.0, idle_timeout: float = 60.0,
                 blocked=None, disable_uploads: bool = False):
        super().__init__(listener)
        self.store = store
        self.underlying = underlying
        self.timeout = timeout
        self.idle_timeout = min(idle_timeout, timeout)
        self._idle_closed = metrics.CONNECTIONS_CLOSED_TOTAL.labels(server=self.name, reason="idle")
        self.blocked = blocked
        self.disable_uploads = disable_uploads

    def handle(self, sock, address) -> None:
        if self.disable_uploads:
            return  # uploads are off: the connection is closed before anything is read
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framer = JsonFramer(max_json=MAX_MESSAGE_BYTES, require_brace=False)
        try:
            version = codec.parse_handshake(self._read_json(sock, framer))
            self._send(sock, codec.encode_handshake_response(version))
            while self.serving(sock):
                request = self._read_json(sock, framer)
                with self.begin(sock):
                    self._receive(sock, framer, request)
        except _Closed:
            pass
        except Exception as exc:
            kind = metrics.count_error("upload", exc)
            if kind == "other":
                log.warning("reflector: upload from %s aborted: %s", address[0], exc)

    # -- one send request ---------------------------------------------------------------------------------
    def _receive(self, sock, framer: JsonFramer, obj: dict) -> None:
        request = codec.parse_send_request(obj)
        check_hash(request.hash)
        h = request.hash
        blocked = request.is_sd and self.blocked is not None and self.blocked(h)
        wants = not blocked and not self.underlying.has(h)
        if request.is_sd and not wants:
            if blocked:
                needed: list[str] | None = []  # refused: nothing of a blocked stream is asked for
            else:
                needed = self._needed_blobs(h)
            if needed is not None:
                self._send(sock, codec.encode_sd_response(False, needed))
                return
            wants = True  # the stored sd blob could not be read: ask for it again
        self._send(sock, codec.encode_sd_response(wants) if request.is_sd else codec.encode_blob_response(wants))
        if not wants:
            return
        if request.is_sd:
            self._receive_sd(sock, framer, h, request.size)
        else:
            self._receive_content(sock, framer, h, request.size)
        metrics.REFLECTOR_IN_BYTES.inc(request.size)
        metrics.BLOB_UPLOAD_TOTAL.inc()
        self._send(sock, codec.encode_receipt(request.is_sd, True))  # only now: the blob is durable

    def _receive_sd(self, sock, framer: JsonFramer, h: str, size: int) -> None:
        """An sd blob is read whole (it is parsed as a stream descriptor before it is stored)."""
        data = self._read_blob(sock, framer, size)
        if blob_hash(data) != h:
            self._refuse(sock, True)
            raise HashMismatch()
        try:
            content_blob_hashes(data)
        except InvalidStreamDescriptor:
            self._refuse(sock, True)
            raise
        self.store.put_sd(h, data)
        metrics.SDBLOB_UPLOAD_TOTAL.inc()

    def _receive_content(self, sock, framer: JsonFramer, h: str, size: int) -> None:
        """A content blob streams into the store as it arrives, hashed as it passes; the store makes it
        visible (and durable) in `commit`, only once the SHA-384 matches."""
        sha = hashlib.sha384()
        with self.store.upload(h, size) as upload:
            for chunk in self._blob_chunks(sock, framer, size):
                sha.update(chunk)
                upload.write(chunk)
            if sha.hexdigest() != h:
                self._refuse(sock, False)
                raise HashMismatch()
            upload.commit()

    def _needed_blobs(self, sd_hash: str) -> list[str] | None:
        """Content blobs of a known stream that are not stored; None if the stored sd blob is unusable."""
        if isinstance(self.underlying, NeededBlobsChecker):
            return self.underlying.missing_blobs_for_known_stream(sd_hash)
        try:
            hashes = content_blob_hashes(self.underlying.get_bytes(sd_hash))
        except (BlobNotFound, InvalidStreamDescriptor) as exc:
            log.info("reflector: stored sd blob %s unusable (%s): asking for it again", sd_hash[:8], exc)
            return None
        return [h for h in dict.fromkeys(hashes) if not self.underlying.has(h)]

    # -- socket helpers -----------------------------------------------------------------------------------
    def _read_json(self, sock, framer: JsonFramer) -> dict:
        """The next message: its first byte within `idle_timeout` (after connecting, between messages), then
        the whole of it within `timeout` (reflector.go's per-read deadline)."""
        deadline = None
        while True:
            obj = framer.next_json()
            if obj is not None:
                return obj
            if deadline is None and framer.buffered():
                deadline = time.monotonic() + self.timeout
            if deadline is None:
                sock.settimeout(self.idle_timeout)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    self._idle_closed.inc()
                    raise
            else:
                sock.settimeout(_remaining(deadline))
                chunk = sock.recv(65536)
            if not chunk:
                framer.finish()  # raises when the stream ended inside a message
                raise _Closed()
            framer.feed(chunk)

    def _read_blob(self, sock, framer: JsonFramer, size: int) -> bytes:
        """Exactly `size` raw bytes, all within one `timeout`."""
        return b"".join(bytes(chunk) for chunk in self._blob_chunks(sock, framer, size))

    def _blob_chunks(self, sock, framer: JsonFramer, size: int):
        """Exactly `size` raw bytes as they arrive, all within one `timeout`, in chunks of up to _RECV_CHUNK.

        Each chunk is a view of one reused buffer, valid until the next is asked for: memory per upload
        stays one buffer whatever the blob size.
        """
        got = framer.take_available(size)
        if got:
            yield got
        left = size - len(got)
        buffer = memoryview(bytearray(min(left, _RECV_CHUNK)))
        deadline = time.monotonic() + self.timeout
        while left > 0:
            want = min(left, len(buffer))
            filled = 0
            while filled < want:  # whole buffers: fewer, larger writes and hash updates
                sock.settimeout(_remaining(deadline))
                n = sock.recv_into(buffer[filled:want])
                if n == 0:
                    raise UnexpectedEOF()
                filled += n
            left -= filled
            yield buffer[:filled]

    def _send(self, sock, message: bytes) -> None:
        sock.settimeout(self.timeout)
        sock.sendall(message)

    def _refuse(self, sock, is_sd: bool) -> None:
        """The `false` receipt reflector.go sends before it drops a bad upload."""
        try:
            self._send(sock, codec.encode_receipt(is_sd, False))
        except OSError:
            pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("i/o timeout")
    return left
