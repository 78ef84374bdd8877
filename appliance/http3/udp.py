"""A UDP transport for QUIC: batched receive, and sends of many datagrams at once with UDP GSO.

Receive: each readiness event drains the socket (up to MAX_BATCH reads). A protocol with
`buffers_received(buffers, addr)` (our client) gets UDP GRO reads (Linux): each read is a buffer of datagrams
of one size back to back with that size from the kernel's control message, handed over uncut for qh3's
`receive_gro_buffer`. A sender's GSO flight then costs one read instead of up to 64, and on loopback the
kernel no longer cuts it into datagrams at all. A protocol with `datagrams_received(datas, addr)` gets each
run of datagrams from one address in one call; others (qh3's QuicServer, which routes by connection id)
get `datagram_received` per datagram. The server receives mostly ACKs, one datagram at a time: no GRO there.

Send: qh3's protocol hands a whole flight to `sendto_many`. Runs of equal-sized datagrams go out as one
`sendmsg` with a UDP_SEGMENT control message (Linux GSO): the kernel cuts the buffer into datagrams of
that size, so the wire carries ordinary datagrams of at most MAX_DATAGRAM_SIZE bytes (quic.py) while the
process pays one system call per GSO_SEGMENTS datagrams. Where the kernel refuses GSO, datagrams go one by one.
"""
from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

MAX_BATCH = 64
RECV_SIZE = 65535
SOCKET_BUFFER = 4 << 20  # a burst of a few blobs' packets must not overflow the kernel's queue
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_GRO_SIZE = struct.Struct("@i")
GSO_SEGMENTS = 64  # the kernel's limit per sendmsg (UDP_MAX_SEGMENTS)
GSO_BYTES = 65000  # a GSO buffer is one IP datagram before segmentation
_GSO_REFUSED = {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE}
_SEGMENT = struct.Struct("@H")


class QuicDatagramTransport(asyncio.DatagramTransport):
    """Owns a non-blocking UDP socket (bound, or connected to one peer) and drives a datagram protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any, *, gso: bool = True):
        super().__init__()
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._closed = False
        self._batched = hasattr(protocol, "datagrams_received")
        self._buffers = getattr(protocol, "buffers_received", None)
        self.gso = gso and sock.family in (socket.AF_INET, socket.AF_INET6)
        try:
            self._peer = sock.getpeername()
        except OSError:
            self._peer = None
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:  # capped by the kernel's limits; the default still works
                pass
        self.gro = self._buffers is not None and self.gso and _enable_gro(sock)
        protocol.connection_made(self)
        loop.add_reader(sock.fileno(), self._read_gro if self.gro else self._read_ready)

    # -- receive --------------------------------------------------------------------------------------
    def _read_ready(self) -> None:
        batch: list[tuple[bytes, Any]] = []
        for _ in range(MAX_BATCH):
            try:
                batch.append(self._sock.recvfrom(RECV_SIZE))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors on a connected socket (port unreachable)
                self._protocol.error_received(exc)
                break
        self._deliver(batch)

    def _read_gro(self) -> None:
        """Reads of coalesced datagrams: each is (buffer, segment size), handed over uncut."""
        batch: list[tuple[bytes, int]] = []
        addr = None
        for _ in range(MAX_BATCH):
            try:
                data, ancdata, _flags, source = self._sock.recvmsg(RECV_SIZE, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors on a connected socket (port unreachable)
                self._protocol.error_received(exc)
                break
            size = len(data)
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= _GRO_SIZE.size:
                    size = _GRO_SIZE.unpack_from(value)[0] or size
            if batch and source != addr:
                self._buffers(batch, addr)
                batch = []
            addr = source
            batch.append((data, size))
        if batch and not self._closed:
            self._buffers(batch, addr)

    def _deliver(self, items: list[tuple[bytes, Any]]) -> None:
        if not items or self._closed:
            return
        if not self._batched:
            for data, addr in items:
                if self._closed:
                    return
                self._protocol.datagram_received(data, addr)
            return
        start = 0
        for i in range(1, len(items) + 1):  # runs of datagrams from one address
            if i == len(items) or items[i][1] != items[start][1]:
                if self._closed:
                    return
                self._protocol.datagrams_received([data for data, _ in items[start:i]], items[start][1])
                start = i

    # -- send -----------------------------------------------------------------------------------------
    def sendto(self, data, addr=None) -> None:
        if self._closed:
            return
        try:
            if self._peer is not None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer drops the datagram, as the network might; QUIC's recovery resends it
        except OSError as exc:
            self._protocol.error_received(exc)

    def sendto_many(self, datagrams: list[bytes], addr=None) -> None:
        """Send datagrams in order; equal-sized runs go out as GSO buffers."""
        if not self.gso:
            for data in datagrams:
                self.sendto(data, addr)
            return
        sizes = list(map(len, datagrams))
        i, n = 0, len(datagrams)
        while i < n and not self._closed:
            size = sizes[i]
            limit = min(GSO_SEGMENTS, max(1, GSO_BYTES // size))
            # All segments but the last must have the segment size; the last may be shorter.
            window = sizes[i:i + limit]
            same = window.count(size)
            if same == len(window) or (same == len(window) - 1 and window[-1] < size):
                j = i + len(window)  # the usual flight: full-sized packets, maybe a short one at the end
            else:
                j = i + 1
                while j < n and j - i < limit and sizes[j - 1] == size and sizes[j] <= size:
                    j += 1
            if j - i == 1:
                self.sendto(datagrams[i], addr)
            else:
                self._send_gso(datagrams[i:j], size, addr)
            i = j

    def _send_gso(self, group: list[bytes], size: int, addr) -> None:
        control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))]
        try:
            if self._peer is not None:
                self._sock.sendmsg(group, control)
            else:
                self._sock.sendmsg(group, control, 0, addr)
        except (BlockingIOError, InterruptedError):
            pass  # dropped like a single datagram on a full buffer; QUIC's recovery resends
        except OSError as exc:
            if exc.errno not in _GSO_REFUSED:
                self._protocol.error_received(exc)
                return
            self.gso = False  # this kernel or device cannot segment: one datagram at a time from now on
            for data in group:
                self.sendto(data, addr)

    # -- lifecycle ------------------------------------------------------------------------------------
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
        if name == "peername":
            return self._peer
        return default


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:  # an older kernel: one datagram per read
        return False
    return True
