"""TCP peer load generator for scripts/bench: N gevent clients downloading random blobs until a deadline.

Usage: peerload.py PORT HASHES_FILE SECONDS CONNECTIONS   -> prints "<bytes> <blobs>"
"""
from gevent import monkey

monkey.patch_all()

import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from appliance.protocol import peer as codec  # noqa: E402
from appliance.protocol.framing import JsonFramer  # noqa: E402


def client(port: int, hashes: list[str], deadline: float, totals: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(2 * 1024 * 1024)
    view = memoryview(buf)
    framer = JsonFramer()
    while time.monotonic() < deadline:
        h = random.choice(hashes)
        sock.sendall(codec.encode_request(h))
        header = None
        while header is None:
            framer.feed(sock.recv(65536))
            header = framer.next_json()
        length = codec.accept_blob(codec.parse_response(header), h)
        got = len(framer.take_available(length))
        while got < length:
            n = sock.recv_into(view[: length - got])
            if not n:
                raise EOFError("server closed the connection")
            got += n
        totals[0] += length
        totals[1] += 1
    sock.close()


def main() -> None:
    port, path, seconds, conns = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    hashes = open(path).read().split()
    totals = [0, 0]
    deadline = time.monotonic() + seconds
    gevent.joinall([gevent.spawn(client, port, hashes, deadline, totals) for _ in range(conns)], raise_error=True)
    print(totals[0], totals[1])


if __name__ == "__main__":
    main()
