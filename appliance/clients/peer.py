"""TCP peer protocol client: download blobs from a reflector or LBRY node (spec §3b, §3e).

    with PeerClient("127.0.0.1", 5567, timeout=30) as client:
        data = client.get_blob(h, expected_length=None)   # verified bytes; BlobNotFound; HashMismatch
        present = client.has_blobs([h1, h2, ...])         # the subset the server has

One connection is opened lazily and reused for every call; requests are the LBRY SDK's (under 512
bytes, so reflector.go servers accept them). A reused connection that the server closed while idle is
re-opened once, transparently. After a protocol error or a hash mismatch the connection is dropped
(the next call opens a fresh one); a not-found answer leaves it usable.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from appliance import metrics
from appliance.blob import blob_hash, check_hash
from appliance.clients.connection import ClosedBeforeReply, Connection, ConnectionClient
from appliance.errors import BlobNotFound, HashMismatch, ProtocolError, UnexpectedEOF
from appliance.protocol import peer as codec
from appliance.protocol.framing import JsonFramer

MAX_RESPONSE_HEADER = 64 * 1024
RECV_CHUNK = 256 * 1024


class PeerClient(ConnectionClient):
    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._exchanges = 0  # completed request/response pairs on the current connection

    def _request_blob(self, hash_: str, expected_length: int | None = None) -> int:
        """Ask for one blob; the length the server announces (BlobNotFound when it has none)."""
        check_hash(hash_)
        header = self._exchange(codec.encode_request(hash_), "response header")
        try:
            resp = codec.parse_response(header)
            if resp is None:
                raise ProtocolError(f"{self._address}: not a peer protocol response: {sorted(header)[:5]}")
            return codec.accept_blob(resp, hash_, expected_length)
        except BlobNotFound:
            raise
        except Exception:
            self.close()
            raise

    def get_blob(self, hash_: str, expected_length: int | None = None) -> bytes:
        """Download one blob and verify its SHA-384."""
        length = self._request_blob(hash_, expected_length)
        try:
            data = self._conn.read_raw(length, f"blob {hash_[:8]}")
        except Exception:
            self.close()
            raise
        metrics.TCP_IN_BYTES.inc(len(data))
        if blob_hash(data) != hash_:
            self.close()
            raise HashMismatch(f"blob {hash_[:8]} from {self._address}: received data does not match its hash")
        return data

    def stream_blob(self, hash_: str, idle_timeout: float) -> tuple[int, Iterator[bytes]]:
        """Ask for one blob: its announced length and its bytes as they arrive, NOT verified (the reader
        hashes them). Each read waits at most `idle_timeout`; a body not read to its end drops the
        connection."""
        length = self._request_blob(hash_)
        return length, self._body(self._conn, length, hash_, idle_timeout)

    def _body(self, conn: Connection, length: int, hash_: str, idle_timeout: float) -> Iterator[bytes]:
        received = 0
        try:
            first = conn.framer.take_available(length)
            if first:
                received += len(first)
                metrics.TCP_IN_BYTES.inc(len(first))
                yield first
            while received < length:
                data = conn.recv_within(min(length - received, RECV_CHUNK), idle_timeout, f"blob {hash_[:8]}")
                if not data:
                    raise UnexpectedEOF(f"unexpected EOF: {self._address} sent {received} of {length} bytes of "
                                        f"blob {hash_[:8]}")
                received += len(data)
                metrics.TCP_IN_BYTES.inc(len(data))
                yield data
        except BaseException:  # an error, or a reader that stopped early: the connection is out of step
            if self._conn is conn:
                self.close()
            raise

    def has_blobs(self, hashes: Iterable[str]) -> set[str]:
        """The hashes among `hashes` that the server says it has."""
        wanted = [check_hash(h) for h in hashes]
        present: set[str] = set()
        for request in codec.encode_availability_requests(wanted):
            header = self._exchange(request, "availability response")
            resp = codec.parse_response(header)
            if resp is None or resp.available_blobs is None:
                self.close()
                raise ProtocolError(f"{self._address}: not an availability response")
            present.update(resp.available_blobs)
        return present & set(wanted)

    @property
    def _address(self) -> str:
        return f"{self.host}:{self.port}"

    def _exchange(self, request: bytes, what: str) -> dict:
        """Send a request and read the JSON header of its answer, reconnecting once if an idle
        connection turns out to be closed."""
        while True:
            reused = self._conn is not None and self._exchanges > 0
            if self._conn is None:
                framer = JsonFramer(max_json=MAX_RESPONSE_HEADER, require_brace=True)
                self._conn = Connection(self.host, self.port, self.timeout, framer, "TCP peer")
                self._exchanges = 0
            try:
                self._conn.send(request)
                header = self._conn.read_json(what)
            except (ClosedBeforeReply, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused:
                    continue  # the fresh connection has no exchanges, so this retries only once
                raise
            except Exception:
                self.close()
                raise
            self._exchanges += 1
            return header
