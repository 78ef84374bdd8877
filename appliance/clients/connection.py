"""One client TCP connection: per-operation deadlines and a JsonFramer over a persistent buffer."""
from __future__ import annotations

import socket
import time
from typing import Self

from appliance.errors import ProtocolError, UnexpectedEOF
from appliance.protocol.framing import FramingError, JsonFramer

RECV_SIZE = 256 * 1024
CONNECT_TIMEOUT = 5.0
QUOTED_BYTES = 40  # how much of a foreign server's answer an error message quotes


def quote(data: bytes) -> str:
    """The first bytes a server sent, printable on one line (`'HTTP/1.1 400 Bad Request\\r\\n...'`)."""
    text = repr(data[:QUOTED_BYTES].decode("latin-1"))
    return text + ("..." if len(data) > QUOTED_BYTES else "")


class ForeignServer(ProtocolError):
    """The server answered, but not in the protocol this client speaks (e.g. an HTTP server)."""

    def __init__(self, address: str, protocol: str, first: bytes):
        self.is_http = first.startswith(b"HTTP/")
        problem = f"answered in HTTP, not the {protocol} protocol" if self.is_http else \
            f"does not speak the {protocol} protocol"
        super().__init__(f"{address} {problem}: it sent {quote(first)}")


class SilentServer(TimeoutError):
    """The server accepted the connection and sent nothing at all within the timeout."""


class ConnectFailed(ConnectionError):
    """The server could not be reached (refused, unreachable, timed out)."""


class ClosedBeforeReply(UnexpectedEOF):
    """The server closed the connection before sending any byte of its reply."""


class Connection:
    """A connected socket; each send, JSON read or raw read must finish within `timeout` seconds.

    `protocol` names what the client speaks ("TCP peer", "reflector upload") in the errors raised when
    the server answers in something else (ForeignServer) or never answers at all (SilentServer)."""

    def __init__(self, host: str, port: int, timeout: float, framer: JsonFramer, protocol: str = "LBRY TCP"):
        self.address = f"{host}:{port}"
        self.timeout = timeout
        self.framer = framer
        self.protocol = protocol
        self.heard = False  # any byte received on this connection
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
                hint = "" if self.heard else f" (not a {self.protocol} server?)"
                raise ClosedBeforeReply(f"unexpected EOF: {self.address} closed the connection before its {what}"
                                        + hint)
            received = True
            try:
                self.framer.feed(data)
            except FramingError:
                head = self.framer.peek(QUOTED_BYTES + 1)
                if not head.lstrip().startswith(b"{"):
                    raise ForeignServer(self.address, self.protocol, head) from None
                raise

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
            data = self.sock.recv(size)
        except TimeoutError:
            if not self.heard:
                raise SilentServer(f"i/o timeout: {self.address} sent no {what} within {self.timeout:g}s (not a "
                                   f"{self.protocol} server?)") from None
            raise TimeoutError(f"i/o timeout: no {what} from {self.address} within {self.timeout:g}s") from None
        self.heard = self.heard or bool(data)
        return data

    def close(self) -> None:
        self.sock.close()


class ConnectionClient:
    """A client that holds at most one Connection (`_conn`), closed by `close` or on leaving a `with` block."""

    _conn: Connection | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
