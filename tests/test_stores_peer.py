import os
import socket
import threading

import pytest
from server_process import ServerProcess

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound, NotImplementedByStore, OriginError
from appliance.stores.disk import DiskStore
from appliance.stores.peer import PeerStore


class CountingProxy:
    """A TCP forwarder on 127.0.0.1 that counts the connections it accepts and can cut them all."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.accepted = 0
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        for a, b in self.pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.cut()
        self.listener.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    disk = DiskStore(str(tmp_path_factory.mktemp("peer-upstream")))
    with ServerProcess("--store", f"disk:{disk.root}", "--peer-port", "0") as srv:
        yield disk, srv.ports["peer"]


@pytest.fixture
def proxy(upstream):
    p = CountingProxy(upstream[1])
    yield p
    p.close()


def test_gets_reuse_one_connection(upstream, proxy):
    disk, _ = upstream
    blobs = {}
    for _ in range(10):
        data = os.urandom(50_000)
        blobs[blob_hash(data)] = data
        disk.put(blob_hash(data), data)
    store = PeerStore(f"127.0.0.1:{proxy.port}")
    before = metrics.TCP_IN_BYTES._value.get()
    for h, data in blobs.items():
        with store.get(h) as blob:
            assert blob.data == data and [hop.origin_name for hop in blob.trace.stacks] == ["peer"]
        assert store.has(h)
    with pytest.raises(BlobNotFound):
        store.get(blob_hash(b"absent"))
    assert not store.has(blob_hash(b"absent"))
    assert proxy.accepted == 1
    assert metrics.TCP_IN_BYTES._value.get() - before == sum(map(len, blobs.values()))
    store.shutdown()


def test_a_broken_connection_is_replaced(upstream, proxy):
    disk, _ = upstream
    data = os.urandom(1000)
    disk.put(blob_hash(data), data)
    store = PeerStore(f"127.0.0.1:{proxy.port}")
    assert store.get_bytes(blob_hash(data)) == data
    proxy.cut()
    assert store.get_bytes(blob_hash(data)) == data
    assert proxy.accepted == 2


def test_data_that_does_not_match_its_hash_is_refused_and_the_connection_dropped(upstream, proxy):
    disk, _ = upstream
    h = blob_hash(b"genuine")
    os.makedirs(os.path.dirname(disk.path(h)), exist_ok=True)
    with open(disk.path(h), "wb") as f:
        f.write(b"forged!")
    store = PeerStore(f"127.0.0.1:{proxy.port}")
    with pytest.raises(OriginError, match="does not match"):
        store.get(h)
    good = os.urandom(100)
    disk.put(blob_hash(good), good)
    assert store.get_bytes(blob_hash(good)) == good
    assert proxy.accepted == 2


def test_writes_are_not_implemented_and_a_dead_upstream_is_an_origin_error():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    store = PeerStore(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(NotImplementedByStore):
        store.put(blob_hash(b"x"), b"x")
    with pytest.raises(OriginError, match=f"upstream 127.0.0.1:{port}"):
        store.get(blob_hash(b"x"))
    with pytest.raises(ValueError):
        PeerStore("no-port")
