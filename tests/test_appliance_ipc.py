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


class HeldPeer(Peer):
    """A Peer that answers only once `hold` is set; `asked` is set when a request has arrived."""

    def __init__(self, path: str, name: str):
        self.asked, self.hold = threading.Event(), threading.Event()
        super().__init__(path, name)

    def _handle(self, method: str, params):
        self.asked.set()
        assert self.hold.wait(10)
        return super()._handle(method, params)


def test_a_lost_connection_noticed_late_fails_no_request_sent_on_the_next_one(tmp_path):
    """The reader of a lost connection may notice the loss late on a busy machine, after the client has
    reconnected and sent a request on the new connection: only requests sent on the lost one fail."""
    path = str(tmp_path / "peer.sock")
    first = Peer(path, "first")
    client = ipc.IpcClient(path, name="peer", timeout=5, retry_after=60)
    late, dropped, drop = threading.Event(), threading.Event(), client._drop

    def late_drop(sock, generation):  # the first connection's reader is held back until `late` is set
        if threading.current_thread().name == "ipc-peer" and generation == 1:
            assert late.wait(10)
            drop(sock, generation)
            dropped.set()
        else:
            drop(sock, generation)

    client._drop = late_drop
    try:
        assert client.call("name") == "first"
        first.kill()
        with pytest.raises(ipc.IpcUnavailable, match="connection lost"):
            client.call("name")  # the write fails: this caller drops the connection, its reader has not yet
        os.unlink(path)
        second = HeldPeer(path, "second")
        answer: list = []
        caller = threading.Thread(target=lambda: answer.append(client.call("name")))
        caller.start()
        assert second.asked.wait(5)  # the request is on the new connection, waiting for its answer
        late.set()  # now the first connection's reader notices its loss ...
        assert dropped.wait(5)  # ... and has dropped it (before the fix: failing every pending request)
        second.hold.set()
        caller.join(10)
        assert answer == ["second"]
    finally:
        late.set()
        client.close()
