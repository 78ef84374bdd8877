"""One client TCP connection: per-operation deadlines and a JsonFramer over a persistent buffer."""
from __future__ import annotations

import socket
import time

from appliance.errors import UnexpectedEOF
from appliance.protocol.framing import JsonFramer

RECV_SIZE = 256 * 1024



CONNECT_TIMEOUT = 5.0

class ConnectFailed(ConnectionError):
    """The server could not be reached (refused, unreachable, timed out)."""


class ClosedBeforeReply(UnexpectedEOF):
    """The server closed the connection before sending any byte of its reply."""


class Connection:
    """A connected socket; each send, JSON read or raw read must finish within `timeout` seconds."""

    def __init__(self, host: str, port: int, timeout: float, framer: JsonFramer):
        self.address = f"{host}:{port}"
        self.timeout = timeout
        self.framer = framer
        try:
            # Connecting gets a shorter deadline: a peer that accepts nothing is not worth a full timeout.
            self.sock = socket.create_connection((host, port), timeout=min(CONNECT_TIMEOUT, timeout))
        except TimeoutError:
            raise ConnectFailed(f"cannot connect to {self.address}: i/o timeout after "
                                f"{min(CONNECT_TIMEOUT, timeout):g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes, what: str = "request") -> None:
        self.sock.settimeout(self.timeout)  # sendall's timeout bounds the whole call
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise TimeoutError(f"i/o timeout: sending {what} to {self.address} took over {self.timeout:g}s") from None

    def read_json(self, what: str) -> dict:
        """The next JSON object from the server."""
        deadline = time.monotonic() + self.timeout
        received = False
        while True:
            obj = self.framer.next_json()
            if obj is not None:
                return obj
            data = self._recv(deadline, what)
            if not data:
                self.framer.finish()  # raises if a message was cut off
                if received:
                    raise UnexpectedEOF(f"unexpected EOF: {self.address} closed the connection inside its {what}")
                raise ClosedBeforeReply(f"unexpected EOF: {self.address} closed the connection before its {what}")
            received = True
            self.framer.feed(data)

    def read_raw(self, n: int, what: str) -> bytes:
        """Exactly n raw bytes (first from the framer's buffer, then from the socket)."""
        deadline = time.monotonic() + self.timeout
        out = bytearray(self.framer.take_available(n))
        while len(out) < n:
            data = self._recv(deadline, what, min(RECV_SIZE, n - len(out)))
            if not data:
                raise UnexpectedEOF(f"unexpected EOF: {self.address} sent {len(out)} of {n} bytes of {what}")
            out += data
        return bytes(out)

    def recv_within(self, size: int, timeout: float, what: str) -> bytes:
        """Up to `size` bytes, waiting at most `timeout` for the first of them (b"" at EOF)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise TimeoutError(f"i/o timeout: {what} from {self.address} stalled for {timeout:g}s") from None

    def _recv(self, deadline: float, what: str, size: int = RECV_SIZE) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"i/o timeout: no {what} from {self.address} within {self.timeout:g}s")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise TimeoutError(f"i/o timeout: no {what} from {self.address} within {self.timeout:g}s") from None

    def close(self) -> None:
        self.sock.close()
