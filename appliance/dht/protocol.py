"""The UDP side of a DHT node: one socket, a receive thread, and outstanding RPCs matched by rpc id.

Written with stdlib sockets and threading only, so it runs in plain threads (CLI, tests) and under
gevent's monkey-patching (the appliance's DHT process) alike. Hostile input is cheap to survive:
datagrams over 1400 bytes or not parsing as a DHT message are counted and dropped, the table of
outstanding RPCs is bounded, and a reply is accepted only from the IP address the request went to.
Requests beyond a source IP's rate are dropped unanswered (`limiter`), and an answer is never more
than `max_amplification` times the size of its request unless it carries a findValue's token and
peers: contacts are shed to make it fit.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.dht.messages import (
    MAX_DATAGRAM,
    DatagramTooLarge,
    ErrorReply,
    Message,
    Request,
    Response,
    decode_message,
    encode_message,
    encode_within,
)
from appliance.dht.ratelimit import SourceLimiter

log = logging.getLogger("dht")

RPC_TIMEOUT = 5.0
MAX_PENDING = 2048
RECEIVE_BUFFER = 1 << 20
_POLL = 0.2  # the receive loop wakes at least this often to expire RPCs and notice stop()


class RpcError(Exception):
    """An RPC that did not get a result."""


class RpcTimeout(RpcError):
    pass


class RemoteError(RpcError):
    """The remote node answered with an error datagram."""

    def __init__(self, exc_type: bytes, message: bytes):
        super().__init__(message.decode(errors="replace"))
        self.exc_type = exc_type
        self.message = message


@dataclass(eq=False)
class PendingCall:
    """One outstanding request. wait() blocks until a reply, an error or the deadline."""

    rpc_id: bytes
    address: tuple[str, int]
    method: bytes
    deadline: float
    owner: RpcSocket
    callback: Callable[[PendingCall], None] | None = None
    event: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Exception | None = None
    responder: bytes | None = None

    def wait(self) -> Any:
        """The result; raises RpcTimeout, RemoteError or RpcError."""
        remaining = self.deadline - self.owner.clock()
        if not self.event.wait(max(remaining, 0) + 0.05):
            self.owner.expire(self)
        if self.error is not None:
            raise self.error
        return self.result

    @property
    def done(self) -> bool:
        return self.event.is_set()


class RpcSocket:
    """handle_request(request, address) returns the reply to send or None. on_reply(message, address) is
    told of every reply that matched one of our requests; on_timeout(call) of every request that expired.
    limiter: the per-source request limit (None: none); max_amplification: the largest answer, as a
    multiple of its request's size (None: only the 1400-byte datagram limit)."""

    def __init__(self, node_id: bytes, bind: tuple[str, int],
                 handle_request: Callable[[Request, tuple[str, int]], Message | None], *,
                 on_reply: Callable[[Response | ErrorReply, tuple[str, int]], None] | None = None,
                 on_timeout: Callable[[PendingCall], None] | None = None,
                 rpc_timeout: float = RPC_TIMEOUT, max_pending: int = MAX_PENDING,
                 limiter: SourceLimiter | None = None, max_amplification: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.node_id = node_id
        self.bind = bind
        self.handle_request = handle_request
        self.on_reply = on_reply
        self.on_timeout = on_timeout
        self.rpc_timeout = rpc_timeout
        self.max_pending = max_pending
        self.clock = clock
        self.limiter = limiter
        self.max_amplification = max_amplification
        # rate_limited: requests dropped for their source's rate; trimmed: answers shed of contacts to stay
        # within max_amplification
        self.stats = {"received": 0, "sent": 0, "oversized": 0, "malformed": 0, "unmatched": 0, "timeouts": 0,
                      "errors": 0, "rate_limited": 0, "trimmed": 0}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[bytes, PendingCall] = {}
        self._next_sweep = 0.0

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the UDP socket (OSError if the port is taken) and start the receive thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for a burst while the receive thread is busy (the kernel caps it at net.core.rmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.bind(self.bind)
        except OSError:
            sock.close()
            raise
        sock.settimeout(_POLL)
        self._sock = sock
        self._thread = threading.Thread(target=self._receive_loop, name=f"dht-recv-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving, fail every outstanding call, close the socket."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._wake()
            self._thread.join(timeout=5)
        with self._lock:
            calls = list(self._pending.values())
        for call in calls:
            self._complete(call, error=RpcError("node stopped"))
        if self._sock is not None:
            self._sock.close()

    def _wake(self) -> None:
        """An empty datagram to ourselves ends the receive thread's recvfrom without waiting for its poll."""
        host = self.bind[0] if self.bind[0] not in ("", "0.0.0.0") else "127.0.0.1"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"", (host, self.port))
        except OSError:
            pass

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock else self.bind[1]

    @property
    def running(self) -> bool:
        return self._sock is not None and not self._stopping.is_set()

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- sending ---------------------------------------------------------------------------------------

    def send(self, message: Message, address: tuple[str, int]) -> bool:
        """Encode and send one datagram; False if it could not be sent (logged at debug level)."""
        if self._sock is None or self._stopping.is_set():
            return False
        try:
            data = encode_message(message)
            self._sock.sendto(data, address)
        except (OSError, ValueError) as exc:
            log.debug("cannot send to %s:%s: %s", address[0], address[1], exc)
            return False
        self.stats["sent"] += 1
        return True

    def start_call(self, address: tuple[str, int], method: bytes, args: list, *,
                   callback: Callable[[PendingCall], None] | None = None,
                   timeout: float | None = None) -> PendingCall:
        """Send a request without waiting; the call completes (and `callback` runs, in the receive thread
        or the caller's) on the reply, on an error, or after the timeout."""
        call = PendingCall(os.urandom(20), address, method, self.clock() + (timeout or self.rpc_timeout), self,
                           callback)
        with self._lock:
            full = len(self._pending) >= self.max_pending
            if not full:
                self._pending[call.rpc_id] = call
        if full:
            self._finish(call, error=RpcError("too many outstanding requests"))
            return call
        if not self.send(Request(call.rpc_id, self.node_id, method, args), address):
            self._complete(call, error=RpcError(f"cannot send to {address[0]}:{address[1]}"))
        return call

    def call(self, address: tuple[str, int], method: bytes, args: list, timeout: float | None = None) -> Any:
        """Send a request and wait for its result (RpcTimeout, RemoteError, RpcError on failure)."""
        return self.start_call(address, method, args, timeout=timeout).wait()

    def expire(self, call: PendingCall) -> None:
        """Give up on a call (its deadline passed)."""
        if self._complete(call, error=RpcTimeout(f"{call.method.decode()} to {call.address[0]}:{call.address[1]} "
                                                 "timed out")):
            self.stats["timeouts"] += 1
            if self.on_timeout is not None:
                self._safely(self.on_timeout, call)

    # --- receiving -------------------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        sock = self._sock
        while not self._stopping.is_set():
            try:
                # One byte over the limit is enough to tell an oversized datagram (the rest is cut off).
                data, address = sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                self._sweep()
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.debug("receive error: %s", exc)
                continue
            if self._stopping.is_set():
                break
            self.stats["received"] += 1
            if len(data) > MAX_DATAGRAM:
                self.stats["oversized"] += 1
            else:
                self._safely(self._dispatch, data, address)
            if self.clock() >= self._next_sweep:
                self._sweep()

    def _dispatch(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            message = decode_message(data)
        except ValueError:
            self.stats["malformed"] += 1
            return
        if isinstance(message, Request):
            if self.limiter is not None and not self.limiter.allow(address[0]):
                self.stats["rate_limited"] += 1
                return
            reply = self.handle_request(message, address)
            if reply is not None:
                self._answer(reply, address, len(data))
            return
        with self._lock:
            call = self._pending.get(message.rpc_id)
        # The SDK matches replies on the IP the request went to; the port may differ behind some NATs.
        if call is None or call.address[0] != address[0]:
            self.stats["unmatched"] += 1
            return
        call.responder = message.node_id
        if self.on_reply is not None:
            self._safely(self.on_reply, message, address)
        if isinstance(message, Response):
            self._complete(call, result=message.result)
        else:
            self.stats["errors"] += 1
            self._complete(call, error=RemoteError(message.exc_type, message.message))

    def _answer(self, reply: Message, address: tuple[str, int], request_size: int) -> None:
        """Send an answer, within the amplification ceiling when one is set."""
        if self._sock is None or self._stopping.is_set():
            return
        limit = MAX_DATAGRAM if self.max_amplification is None else int(request_size * self.max_amplification)
        try:
            data, shed = encode_within(reply, min(limit, MAX_DATAGRAM))
        except (DatagramTooLarge, ValueError) as exc:
            log.debug("cannot answer %s:%s: %s", address[0], address[1], exc)
            return
        if shed:
            self.stats["trimmed"] += 1  # counted before it leaves: whoever receives it sees the count
        try:
            self._sock.sendto(data, address)
        except OSError as exc:
            log.debug("cannot answer %s:%s: %s", address[0], address[1], exc)
            return
        self.stats["sent"] += 1

    def _sweep(self) -> None:
        now = self.clock()
        self._next_sweep = now + _POLL
        with self._lock:
            expired = [c for c in self._pending.values() if c.deadline <= now]
        for call in expired:
            self.expire(call)

    def _complete(self, call: PendingCall, result: Any = None, error: Exception | None = None) -> bool:
        """Finish a call once; False if it was already finished."""
        with self._lock:
            if self._pending.pop(call.rpc_id, None) is None:
                return False
        self._finish(call, result, error)
        return True

    def _finish(self, call: PendingCall, result: Any = None, error: Exception | None = None) -> None:
        call.result, call.error = result, error
        call.event.set()
        if call.callback is not None:
            self._safely(call.callback, call)

    @staticmethod
    def _safely(func: Callable, *args: Any) -> None:
        try:
            func(*args)
        except Exception:  # a bug in one handler must not stop the node
            log.exception("error in DHT handler %s", getattr(func, "__qualname__", func))
