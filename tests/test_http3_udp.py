"""The QUIC UDP transport (appliance/http3/udp.py) on real loopback sockets: GSO sends, GRO reads."""
from __future__ import annotations

import asyncio
import os
import socket

from appliance.http3.quic import MAX_DATAGRAM_SIZE
from appliance.http3.udp import QuicDatagramTransport


class Recorder(asyncio.DatagramProtocol):
    """A protocol that takes GRO reads as they are: (buffer, segment size) per read."""

    def __init__(self):
        self.reads: list[tuple[bytes, int]] = []
        self.received = asyncio.Event()

    def buffers_received(self, buffers, addr) -> None:
        self.reads.extend(buffers)
        self.received.set()


class PerDatagram(asyncio.DatagramProtocol):
    def __init__(self):
        self.datagrams: list[bytes] = []
        self.received = asyncio.Event()

    def datagram_received(self, data, addr) -> None:
        self.datagrams.append(data)
        self.received.set()


def _pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    return a, b


async def _until(event: asyncio.Event, done, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            event.clear()
            await event.wait()


def test_a_gso_flight_arrives_whole_and_in_order_through_gro_reads():
    datagrams = [os.urandom(MAX_DATAGRAM_SIZE) for _ in range(40)] + [os.urandom(300)]

    async def main() -> tuple[list[tuple[bytes, int]], bool]:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        receiver = Recorder()
        rx = QuicDatagramTransport(loop, b, receiver)
        tx = QuicDatagramTransport(loop, a, PerDatagram())
        try:
            tx.sendto_many(datagrams)
            await _until(receiver.received, lambda: sum(len(data) for data, _ in receiver.reads)
                         >= sum(map(len, datagrams)))
            return receiver.reads, rx.gro and tx.gso
        finally:
            tx.close()
            rx.close()

    reads, coalesced = asyncio.run(main())
    assert b"".join(data for data, _ in reads) == b"".join(datagrams)
    pieces = [data[i:i + size] for data, size in reads for i in range(0, len(data), size)]
    assert pieces == datagrams  # the segment sizes cut the reads back into the datagrams sent
    assert all(size <= MAX_DATAGRAM_SIZE for _, size in reads)
    if coalesced:  # Linux with UDP GSO and GRO: far fewer reads than datagrams
        assert len(reads) < len(datagrams) // 4


def test_a_protocol_without_buffers_gets_single_datagrams():
    datagrams = [os.urandom(MAX_DATAGRAM_SIZE) for _ in range(10)]

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        receiver = PerDatagram()
        rx = QuicDatagramTransport(loop, b, receiver)
        tx = QuicDatagramTransport(loop, a, PerDatagram())
        try:
            assert not rx.gro
            tx.sendto_many(datagrams)
            await _until(receiver.received, lambda: len(receiver.datagrams) >= len(datagrams))
            return receiver.datagrams
        finally:
            tx.close()
            rx.close()

    assert asyncio.run(main()) == datagrams
