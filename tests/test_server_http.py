import http.client
import json
import os
import socket
import subprocess
import sys

import pytest
from server_process import ServerProcess, closed_by_peer, recv_exactly

from appliance.blob import blob_hash
from appliance.stores.disk import DiskStore
from appliance.trace import Trace

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    store = DiskStore(str(root))
    data = {}
    for size in (1, 1000, 2 * 1024 * 1024):
        payload = os.urandom(size)
        data[blob_hash(payload)] = payload
        store.put(blob_hash(payload), payload)
    protected = os.urandom(500)
    store.put(blob_hash(protected), protected)
    return store, data, blob_hash(protected)


@pytest.fixture(scope="module")
def server(blobs):
    store, _, protected = blobs
    with ServerProcess("--store", f"disk:{store.root}", "--http-port", "0", "--edge-token", TOKEN,
                       "--protected", protected, "--header-timeout", "1") as srv:
        yield srv


def _conn(server):
    return http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=10)


def test_get_serves_every_blob_on_one_keep_alive_connection(server, blobs):
    _, data, _ = blobs
    conn = _conn(server)
    first_socket = None
    for h, payload in data.items():
        conn.request("GET", f"/blob?hash={h}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and body == payload
        assert resp.getheader("Content-Type") == "application/octet-stream"
        assert resp.getheader("Content-Disposition") == f"filename={h}"
        assert [hop.origin_name for hop in Trace.from_json(resp.getheader("Via")).stacks] == ["disk", "http"]
        first_socket = first_socket or conn.sock
        assert conn.sock is first_socket  # still the same connection
    conn.close()


def test_head_answers_204_or_404(server, blobs):
    _, data, _ = blobs
    conn = _conn(server)
    conn.request("HEAD", f"/blob?hash={next(iter(data))}")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.read() == b""
    conn.request("HEAD", f"/blob?hash={blob_hash(b'absent')}")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read() == b""
    conn.close()


@pytest.mark.parametrize("query", ["hash=abc", "hash=" + "A" * 96, "", "hash=../../etc/passwd", "hash=%00"])
def test_malformed_hash_is_400(server, query):
    conn = _conn(server)
    conn.request("GET", f"/blob?{query}")
    resp = conn.getresponse()
    assert resp.status == 400 and b"invalid blob hash" in resp.read()
    conn.close()


def test_protected_blob_needs_the_edge_token(server, blobs):
    _, _, protected = blobs
    conn = _conn(server)
    for query in (f"hash={protected}", f"hash={protected}&edge_token=wrong"):
        conn.request("GET", f"/blob?{query}")
        resp = conn.getresponse()
        assert resp.status == 403 and resp.read() == b"requested blob is protected"
    conn.request("GET", f"/blob?hash={protected}&edge_token={TOKEN}")
    resp = conn.getresponse()
    assert resp.status == 200 and blob_hash(resp.read()) == protected
    conn.close()


def test_missing_blob_is_404_and_remembered(server, blobs):
    store, _, _ = blobs
    payload = os.urandom(100)
    h = blob_hash(payload)
    conn = _conn(server)
    conn.request("GET", f"/blob?hash={h}")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read() == b""
    assert "http" in resp.getheader("Via")
    store.put(h, payload)  # appears on disk now...
    conn.request("HEAD", f"/blob?hash={h}")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 204  # HEAD asks the store
    conn.request("GET", f"/blob?hash={h}")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 404  # ...but GET answers from the 5-minute misses cache
    conn.close()


def test_origin_failure_is_a_generic_500():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there: the upstream store fails to connect
    with ServerProcess("--store", f"http:127.0.0.1:{port}", "--http-port", "0") as srv:
        conn = _conn(srv)
        conn.request("GET", f"/blob?hash={blob_hash(b'x')}")
        resp = conn.getresponse()
        body = resp.read()
        assert (resp.status, body) == (500, b"internal server error")  # the upstream's address is for the log
        conn.request("HEAD", f"/blob?hash={blob_hash(b'x')}")
        assert conn.getresponse().status == 500
        conn.close()


def test_unknown_paths_and_methods(server):
    conn = _conn(server)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read() == b"404 page not found"
    conn.request("DELETE", f"/blob?hash={blob_hash(b'x')}")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
    resp.read()
    conn.close()


def test_http_1_0_closes_unless_keep_alive_is_asked(server, blobs):
    _, data, _ = blobs
    h = min(data, key=lambda k: len(data[k]))
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(f"HEAD /blob?hash={h} HTTP/1.0\r\n\r\n".encode())
        assert recv_until_close(sock).startswith(b"HTTP/1.1 204")
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        request = f"HEAD /blob?hash={h} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".encode()
        sock.sendall(request)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 204") and b"Connection: keep-alive" in first
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 204")


def test_pipelined_requests_are_answered_in_order(server, blobs):
    _, data, _ = blobs
    small = sorted((h for h in data if len(data[h]) < 2000), key=lambda k: len(data[k]))
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"".join(f"GET /blob?hash={h} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for h in small))
        for h in small:
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 200")
            assert f"filename={h}".encode() in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert recv_exactly(sock, length) == data[h]


def test_oversized_and_slow_headers_are_refused(server):
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"GET /blob?hash=x HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20000 + b"\r\n\r\n")
        assert recv_until_close(sock).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"GET /blob?hash=x HTTP/1.1\r\nHost:")  # ...and never finishes (slowloris)
        assert recv_until_close(sock).startswith(b"HTTP/1.1 408")  # after the 1 s header timeout
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01garbage that is not http\r\n\r\n")
        assert recv_until_close(sock).startswith(b"HTTP/1.1 400")
        assert closed_by_peer(sock)


def recv_until_close(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_downloads_are_counted(tmp_path):
    store = DiskStore(str(tmp_path))
    data = os.urandom(9000)
    h = blob_hash(data)
    store.put(h, data)
    with ServerProcess("--store", f"disk:{tmp_path}", "--http-port", "0", "--print-metrics") as srv:
        conn = _conn(srv)
        for _ in range(3):
            conn.request("GET", f"/blob?hash={h}")
            assert conn.getresponse().read() == data
        conn.close()
        out, _ = srv.stop()
    series = dict(line.rsplit(" ", 1) for line in out.splitlines() if line and not line.startswith("#"))
    assert float(series["reflector_http_out_bytes"]) == 3 * len(data)
    assert float(series["reflector_http_blob_download_total"]) == 3
    assert float(series["reflector_blob_download_total"]) == 3
    assert float(series["reflector_http_blob_request_queue_size"]) == 0


QUEUE_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, socket, time
import gevent
from appliance import metrics
from appliance.blob import blob_hash
from appliance.servers.http import HttpServer
from appliance.servers.standalone import listen
from appliance.stores.memory import MemoryStore

class Slow(MemoryStore):
    running = peak = 0
    def get(self, hash_):
        Slow.running += 1
        Slow.peak = max(Slow.peak, Slow.running)
        time.sleep(0.05)
        Slow.running -= 1
        return super().get(hash_)

store = Slow()
store.put(blob_hash(b"x"), b"x")
listener = listen("127.0.0.1", 0)
server = HttpServer(listener, store, queue_size=2)
server.start()
queued = []

def get():
    sock = socket.create_connection(listener.getsockname())
    sock.sendall(f"GET /blob?hash={blob_hash(b'x')} HTTP/1.1\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"x"):
        data += sock.recv(4096)
    queued.append(metrics.HTTP_QUEUE_SIZE._value.get())
    return data.startswith(b"HTTP/1.1 200")

jobs = [gevent.spawn(get) for _ in range(10)]
gevent.joinall(jobs, raise_error=True)
print(json.dumps({"ok": all(j.value for j in jobs), "peak": Slow.peak, "max_queued": max(queued)}))
"""


def test_queue_size_bounds_concurrent_gets():
    out = subprocess.run([sys.executable, "-c", QUEUE_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["peak"] == 2  # ten clients at once, never more than two in the store
    assert result["max_queued"] > 2  # the others were waiting their turn
