"""msgpack request/response over UNIX stream sockets: one codec for the gevent, thread and asyncio sides.

Messages follow msgpack-rpc:
    request       [0, msgid, method, params]
    response      [1, msgid, error, result]      (error is None or a string)
    notification  [2, method, params]            (fire-and-forget, no response)

`Decoder` is pure (bytes in, messages out). `IpcClient` is a blocking client that is safe to share
between threads or greenlets (under gevent's monkey-patching its socket and lock become cooperative);
`serve_connection` runs one server-side connection with any handler. A request to a peer that is not
there fails fast with IpcUnavailable, so callers can fall back (e.g. keep serving cache hits).
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

log = logging.getLogger("ipc")

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_MESSAGE = 16 * 1024 * 1024  # a blob is at most 2 MiB; status payloads are small


class IpcError(Exception):
    """The peer answered with an error."""


class IpcUnavailable(IpcError):
    """No peer on the socket, or the connection broke: fail fast, the caller decides what to do."""


class IpcProtocolError(IpcError):
    """Bytes on the socket that are not a message of this protocol."""


def encode_request(msgid: int, method: str, params: Any) -> bytes:
    return msgpack.packb([REQUEST, msgid, method, params], use_bin_type=True)


def encode_response(msgid: int, error: str | None, result: Any) -> bytes:
    return msgpack.packb([RESPONSE, msgid, error, result], use_bin_type=True)


def encode_notification(method: str, params: Any) -> bytes:
    return msgpack.packb([NOTIFICATION, method, params], use_bin_type=True)


class Decoder:
    """Feed bytes, iterate complete messages; raises IpcProtocolError on malformed input."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_message * 2, strict_map_key=False)

    def feed(self, data: bytes) -> Iterator[list]:
        try:
            self._unpacker.feed(data)
            for message in self._unpacker:
                yield _check(message)
        except (msgpack.UnpackException, ValueError) as exc:
            raise IpcProtocolError(f"malformed IPC message: {exc}") from None


def _check(message: Any) -> list:
    if not isinstance(message, list) or not message or message[0] not in (REQUEST, RESPONSE, NOTIFICATION):
        raise IpcProtocolError(f"not an IPC message: {str(message)[:80]}")
    expected = 3 if message[0] == NOTIFICATION else 4
    if len(message) != expected:
        raise IpcProtocolError(f"IPC message of type {message[0]} with {len(message)} fields")
    return message


class _Pending:
    __slots__ = ("event", "error", "result", "generation")

    def __init__(self):
        self.event = threading.Event()
        self.error: str | None = None
        self.result: Any = None
        self.generation = 0  # the connection it was sent on (0: not sent yet)


class IpcClient:
    """A blocking msgpack-rpc client with request ids; many callers may share one connection."""

    def __init__(self, path: str, *, name: str = "ipc", timeout: float = 5.0, retry_after: float = 0.5):
        self.path = path
        self.name = name
        self.timeout = timeout
        self.retry_after = retry_after  # after a failed connect, fail fast for this long...
        self._failed_socket: tuple[int, int, int] | None = None  # ...unless the socket file is a new one by now
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # guards connect and sendall
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._last_failure = 0.0
        self._generation = 0

    # -- connection ---------------------------------------------------------------------------------
    def _connect_locked(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if time.monotonic() - self._last_failure < self.retry_after and self._socket_id() == self._failed_socket:
            raise IpcUnavailable(f"{self.name} unavailable (recent connection failure)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            self._last_failure = time.monotonic()
            self._failed_socket = self._socket_id()
            raise IpcUnavailable(f"{self.name} unavailable at {self.path}: {exc.strerror or exc}") from None
        sock.settimeout(None)  # the reader blocks; callers time out on their own events
        self._sock = sock
        self._generation += 1
        threading.Thread(target=self._read_loop, args=(sock, self._generation), name=f"ipc-{self.name}",
                         daemon=True).start()
        return sock

    def _socket_id(self) -> tuple[int, int, int] | None:
        """Identity of the socket file: a restarted peer binds a new one, which is worth trying at once."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_ctime_ns  # ctime too: a new file often gets the freed inode number

    def _read_loop(self, sock: socket.socket, generation: int) -> None:
        decoder = Decoder()
        try:
            while True:
                data = sock.recv(256 * 1024)
                if not data:
                    break
                for message in decoder.feed(data):
                    if message[0] == RESPONSE:
                        pending = self._pending.pop(message[1], None)
                        if pending is not None:
                            pending.error, pending.result = message[2], message[3]
                            pending.event.set()
        except (OSError, IpcProtocolError) as exc:
            log.debug("%s: connection lost: %s", self.name, exc)
        finally:
            self._drop(sock, generation)

    def _drop(self, sock: socket.socket, generation: int) -> None:
        """Forget a lost connection and fail the requests sent on it, and only those: its reader may notice
        the loss late, after a new connection carries new requests."""
        with self._lock:
            if self._generation == generation and self._sock is sock:
                self._sock = None
            failed = [(msgid, p) for msgid, p in list(self._pending.items()) if p.generation == generation]
            for msgid, _ in failed:
                self._pending.pop(msgid, None)  # (a caller that timed out may have taken it already)
        try:
            sock.close()
        except OSError:
            pass
        for _, pending in failed:
            pending.error = "\0unavailable"
            pending.event.set()

    def _send(self, payload: bytes, pending: _Pending | None = None) -> None:
        with self._lock:
            sock = self._connect_locked()
            generation = self._generation
            if pending is not None:
                pending.generation = generation
            try:
                sock.sendall(payload)
                return
            except OSError as exc:
                error = exc
        self._drop(sock, generation)
        raise IpcUnavailable(f"{self.name} connection lost: {error.strerror or error}")

    # -- calls --------------------------------------------------------------------------------------
    def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Send a request and wait for its response; raises IpcUnavailable / IpcError / TimeoutError."""
        msgid = next(self._ids)
        pending = _Pending()
        self._pending[msgid] = pending
        try:
            self._send(encode_request(msgid, method, params), pending)
        except IpcUnavailable:
            self._pending.pop(msgid, None)
            raise
        if not pending.event.wait(self.timeout if timeout is None else timeout):
            self._pending.pop(msgid, None)
            raise TimeoutError(f"{self.name}: no answer to {method} within {timeout or self.timeout:g}s")
        if pending.error == "\0unavailable":
            raise IpcUnavailable(f"{self.name} went away during {method}")
        if pending.error is not None:
            raise IpcError(pending.error)
        return pending.result

    def notify(self, method: str, params: Any = None) -> None:
        """Fire-and-forget; raises IpcUnavailable when the peer is not there."""
        self._send(encode_notification(method, params))

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


Handler = Callable[[str, Any], Any]


def serve_connection(sock: socket.socket, handler: Handler, notify_handler: Callable[[str, Any], None],
                     spawn: Callable[..., Any], on_close: Callable[[], None] | None = None) -> None:
    """Read messages from one connection until it closes.

    Each request runs in `spawn(fn)` (a greenlet or a thread), so a slow request (a fetch waiting for
    another worker) does not hold up the others; responses are written under a lock. Notifications run
    inline, in order. The handler's exceptions become error responses.
    """
    write_lock = threading.Lock()

    def respond(msgid: int, method: str, params: Any) -> None:
        try:
            payload = encode_response(msgid, None, handler(method, params))
        except Exception as exc:  # the caller gets the message; the server keeps going
            if not isinstance(exc, IpcError | LookupError | ValueError):
                log.exception("IPC handler %s failed", method)
            payload = encode_response(msgid, str(exc) or exc.__class__.__name__, None)
        with write_lock:
            try:
                sock.sendall(payload)
            except OSError:
                pass  # the client went away; its reader sees that

    decoder = Decoder()
    try:
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                break
            for message in decoder.feed(data):
                if message[0] == REQUEST:
                    spawn(respond, message[1], message[2], message[3])
                elif message[0] == NOTIFICATION:
                    try:
                        notify_handler(message[1], message[2])
                    except Exception:
                        log.exception("IPC notification %s failed", message[1])
    except IpcProtocolError as exc:
        log.warning("closing IPC connection: %s", exc)
    except OSError:
        pass
    finally:
        if on_close is not None:
            on_close()
        try:
            sock.close()
        except OSError:
            pass
