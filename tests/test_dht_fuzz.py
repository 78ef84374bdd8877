"""Hostile input: 10,000 random or mangled datagrams and 1,000 oversized ones at a real node over UDP.
No crash, bounded tables and memory, and valid requests still answered."""
import os
import random
import socket
import time
import tracemalloc

from appliance.dht import bencode
from appliance.dht.messages import Request, Response, decode_message, encode_message, request_args
from appliance.dht.node import Node

LOOPBACK = "127.0.0.1"


def ping(sock: socket.socket, port: int, timeout: float = 5.0) -> bool:
    """Send a valid ping and wait (bounded) for its pong among whatever else arrives."""
    rpc_id, deadline = os.urandom(20), time.monotonic() + timeout
    sock.sendto(encode_message(Request(rpc_id, os.urandom(48), b"ping", request_args(b"ping"))), (LOOPBACK, port))
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            return False
        try:
            message = decode_message(data)
        except ValueError:
            continue
        if isinstance(message, Response) and message.rpc_id == rpc_id:
            return message.result == b"pong"
    return False


def valid_requests(rng: random.Random, token: bytes) -> list[bytes]:
    """Well-formed requests with random ids, keys and arguments: they reach every handler path."""
    key, nid = rng.randbytes(48), rng.randbytes(48)
    choices = [
        Request(rng.randbytes(20), nid, b"findNode", request_args(b"findNode", key)),
        Request(rng.randbytes(20), nid, b"findValue", request_args(b"findValue", key, page=rng.randrange(-2, 5))),
        Request(rng.randbytes(20), nid, b"store", request_args(b"store", key, token, rng.randrange(1, 65536), nid, 0)),
        Request(rng.randbytes(20), nid, b"store", [key, {b"lbryid": nid, b"port": 4444, b"token": token}, nid, 0]),
        Request(rng.randbytes(20), nid, b"store", [key, rng.randbytes(48), 0, nid]),
        Request(rng.randbytes(20), nid, rng.choice([b"ping", b"x", b"findValue"]), [rng.randrange(10**6), [], {}]),
        Response(rng.randbytes(20), nid, [[nid, b"127.0.0.1", 1]]),
    ]
    out = []
    for message in choices:
        try:
            out.append(encode_message(message))
        except ValueError:
            out.append(bencode.encode({0: 0, 1: message.rpc_id, 2: nid, 3: b"store", 4: message.args}))
    return out


def mangle(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        action = rng.randrange(4)
        if action == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 1:
            data = data[:rng.randrange(len(data) + 1)]
        elif action == 2:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = rng.choice([b"l", b"d", b"e", b"i", b"0:", b"99999:", b"i-0e", b"le" * 20])
        else:
            data += rng.randbytes(rng.randrange(1, 40))
    return bytes(data[:1400])


def test_random_and_oversized_datagrams_neither_crash_nor_grow_the_node():
    rng = random.Random(7)
    node = Node(bind=(LOOPBACK, 0), rpc_timeout=0.5, max_peers=300, max_peers_per_key=8, max_pending=64)
    node.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((LOOPBACK, 0))
    # replies pile up between our pings: room for them, so a pong is never lost to a full buffer
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    target = (LOOPBACK, node.port)
    token = node.tokens.make(LOOPBACK)
    try:
        assert ping(sender, node.port)

        def blast(count: int, oversized: bool = False) -> None:
            for i in range(count):
                if oversized:
                    data = rng.randbytes(rng.randrange(1401, 9000))
                elif i % 3 == 0:
                    data = rng.randbytes(rng.randrange(0, 1400))
                elif i % 3 == 1:
                    data = mangle(rng, rng.choice(valid_requests(rng, token)))
                else:
                    data = rng.choice(valid_requests(rng, token))
                sender.sendto(data, target)
                sync_every = 20 if oversized else 100  # 20 datagrams of up to 9 kB fit in the node's buffer
                if i % sync_every == sync_every - 1:  # let the node keep up; kernel buffer drops test nothing
                    assert ping(sender, node.port), (i, node.rpc.stats)

        blast(1000)  # warm-up: tables reach their working size
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        blast(9000)
        blast(1000, oversized=True)
        assert ping(sender, node.port)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        stats = node.rpc.stats
        assert stats["oversized"] >= 990 and stats["malformed"] >= 3000, stats
        assert grown < 2_000_000, f"memory grew by {grown} bytes"
        assert len(node.peers) == 300 and node.peers.key_count() <= 300  # full: the bound was exercised
        assert len(node.routing) <= 8 * node.routing.bucket_count
        assert node.rpc.pending_count() <= 64
    finally:
        sender.close()
        node.stop()
