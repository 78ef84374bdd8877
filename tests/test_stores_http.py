import os
import socket

import pytest
from server_process import ServerProcess

from appliance import metrics
from appliance.blob import blob_hash
from appliance.errors import BlobNotFound, NotImplementedByStore, OriginError
from appliance.stores.disk import DiskStore
from appliance.stores.http import HttpStore


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    disk = DiskStore(str(tmp_path_factory.mktemp("upstream")))
    protected = os.urandom(700)
    disk.put(blob_hash(protected), protected)
    with ServerProcess("--store", f"disk:{disk.root}", "--http-port", "0", "--edge-token", "tok",
                       "--protected", blob_hash(protected)) as srv:
        yield disk, f"127.0.0.1:{srv.ports['http']}", protected


def test_get_and_has_through_a_real_upstream(upstream):
    disk, address, _ = upstream
    data = os.urandom(300_000)
    h = blob_hash(data)
    disk.put(h, data)
    store = HttpStore(address)
    before = metrics.HTTP_IN_BYTES._value.get()
    assert store.has(h) and not store.has(blob_hash(b"absent"))
    with store.get(h) as blob:
        assert blob.data == data
        assert [hop.origin_name for hop in blob.trace.stacks] == ["disk", "http", "http"]
    assert metrics.HTTP_IN_BYTES._value.get() - before == len(data)
    with pytest.raises(BlobNotFound) as err:
        store.get(blob_hash(b"absent"))
    assert [hop.origin_name for hop in err.value.trace.stacks][-1] == "http"


def test_data_that_does_not_match_its_hash_is_refused(upstream):
    disk, address, _ = upstream
    h = blob_hash(b"the real content")
    os.makedirs(os.path.dirname(disk.path(h)), exist_ok=True)
    with open(disk.path(h), "wb") as f:
        f.write(b"something else")
    with pytest.raises(OriginError, match="do not match"):
        HttpStore(address).get(h)


def test_edge_token_is_sent_and_statuses_become_errors(upstream):
    _, address, protected = upstream
    h = blob_hash(protected)
    with pytest.raises(OriginError, match=r"upstream error\. Status code: 403 \(requested blob is protected\)"):
        HttpStore(address).get(h)
    assert HttpStore(address, edge_token="tok").get_bytes(h) == protected


def test_writes_are_not_implemented_and_connection_errors_are_origin_errors(upstream):
    _, address, _ = upstream
    store = HttpStore(address)
    with pytest.raises(NotImplementedByStore):
        store.put(blob_hash(b"x"), b"x")
    with pytest.raises(NotImplementedByStore):
        store.delete(blob_hash(b"x"))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(OriginError, match="upstream 127.0.0.1"):
        HttpStore(f"127.0.0.1:{port}", timeout=2).get(blob_hash(b"x"))
