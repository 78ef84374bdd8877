"""A light HTTP GET load for scripts/bench: keep-alive connections in one event loop, bodies discarded by the
kernel (recv with MSG_TRUNC copies nothing to user space), so the client needs little CPU next to the server.

On a 2-core machine wrk copying 3 GB/s into user space takes most of a core, and then no server can show
what a second worker adds; this client leaves the cores to the server under test.

Usage: getload.py PORT PATHS_FILE SECONDS CONNECTIONS   -> prints "REQUESTS_PER_SECOND ERRORS"
"""
from __future__ import annotations

import random
import selectors
import socket
import sys
import time

DISCARD = bytearray(4 * 1024 * 1024)  # never written: MSG_TRUNC only counts what it drops


class Conn:
    __slots__ = ("sock", "head", "left")

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.head, self.left = b"", -1  # left: body bytes still to come; -1 while reading the header

    def request(self, path: str) -> None:
        self.head, self.left = b"", -1
        self.sock.send(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())

    def on_readable(self) -> bool | None:
        """True: a 200 response is complete; False: an error response; None: more to come."""
        if self.left < 0:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return None
            header = self.head[:end].lower()
            ok = header.startswith(b"http/1.1 200")
            length = int(header.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in \
                header else 0
            self.left = length - (len(self.head) - end - 4)
            if not ok:
                return False if self.left <= 0 else None
        else:
            n = self.sock.recv_into(DISCARD, min(self.left, len(DISCARD)), socket.MSG_TRUNC)
            if n == 0:
                raise ConnectionError("server closed the connection mid-body")
            self.left -= n
        return True if self.left <= 0 else None


def main() -> None:
    port, paths_file, seconds, connections = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    paths = open(paths_file).read().split()
    rng = random.Random()
    selector = selectors.DefaultSelector()
    conns = [Conn(port) for _ in range(connections)]
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.request(rng.choice(paths))
    done = errors = 0
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(0.5):
            conn = key.data
            outcome = conn.on_readable()
            if outcome is None:
                continue
            if outcome:
                done += 1
            else:
                errors += 1
            conn.request(rng.choice(paths))
    elapsed = time.monotonic() - started
    print(f"{done / elapsed:.1f} {errors}")


if __name__ == "__main__":
    main()
