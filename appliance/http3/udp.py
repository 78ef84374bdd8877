"""A datagram transport that drains the socket on each readiness event and hands over the whole batch.

asyncio's datagram transport reads one datagram per loop iteration, and aioquic answers each one with a
full `transmit()` (walk every stream, build packets, arm timers). A 2 MiB blob is ~1,600 datagrams, so
that per-datagram pass dominated the CPU of both ends. Here every queued datagram is fed to the QUIC
connection first and the protocols transmit once per batch (they defer with `_transmit_soon`).
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

MAX_BATCH = 64
RECV_SIZE = 65535
SOCKET_BUFFER = 4 << 20  # a burst of a few blobs' packets must not overflow the kernel's queue


class BatchedDatagramTransport(asyncio.DatagramTransport):
    """Owns a non-blocking UDP socket; calls `protocol.datagrams_received([(data, addr), ...])`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any):
        super().__init__()
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._closed = False
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:  # capped by the kernel's limits; the default still works
                pass
        protocol.connection_made(self)
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        batch = []
        for _ in range(MAX_BATCH):
            try:
                batch.append(self._sock.recvfrom(RECV_SIZE))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors on a connected socket (port unreachable)
                self._protocol.error_received(exc)
                break
        if batch:
            self._protocol.datagrams_received(batch)

    def sendto(self, data, addr=None) -> None:
        if self._closed:
            return
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer drops the datagram, as the network might; QUIC's recovery resends it
        except OSError as exc:
            self._protocol.error_received(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname" and not self._closed:
            return self._sock.getsockname()
        return default
