"""appliance.ipc between real UNIX sockets and threads: dead peers fail fast, restarted peers are reached at once."""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from appliance import ipc


class Peer:
    """A threaded msgpack-rpc server on `path` that answers `name` with its name."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=ipc.serve_connection, args=(conn, self._handle, lambda m, p: None,
                                                                lambda fn, *a: fn(*a)), daemon=True).start()

    def _handle(self, method: str, params):
        if method == "name":
            return self.name
        raise ValueError(f"unknown method {method!r}")

    def kill(self) -> None:
        """Like kill -9: connections reset, the socket file stays behind (stale)."""
        for sock in (self.listener, *self.conns):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on them; close() alone would not
            sock.close()


def test_a_dead_peer_fails_fast_and_a_restarted_one_is_reached_at_once(tmp_path):
    path = str(tmp_path / "peer.sock")
    first = Peer(path, "first")
    client = ipc.IpcClient(path, name="peer", timeout=5, retry_after=60)
    try:
        assert client.call("name") == "first"
        first.kill()
        started = time.monotonic()
        for _ in range(2):  # the reset connection (if the client had not noticed yet), then the refused connect
            with pytest.raises(ipc.IpcUnavailable) as failure:
                client.call("name")
            if "Connection refused" in str(failure.value):
                break
        assert "Connection refused" in str(failure.value)
        with pytest.raises(ipc.IpcUnavailable, match="recent connection failure"):
            client.call("name")  # within retry_after: no connect attempt at all
        assert time.monotonic() - started < 1
        # A restarted peer replaces the stale socket file; the client does not wait out retry_after.
        os.unlink(path)
        Peer(path, "second")
        assert client.call("name") == "second"
        with pytest.raises(ipc.IpcError, match="unknown method"):
            client.call("nothing")
    finally:
        client.close()
