"""Clients over real sockets: the minimal threaded server, scripted servers replaying the SDK's replies,
and the real gevent peer/HTTP servers."""
import json
import os
import socket
import threading
import time

import pytest

from appliance.blob import blob_hash
from appliance.clients import HttpBlobClient, PeerClient, ReflectorClient
from appliance.clients.connection import ConnectFailed
from appliance.errors import BlobNotFound, HashMismatch, ProtocolError, UnexpectedEOF
from appliance.protocol.framing import JsonFramer
from appliance.protocol.peer import encode_availability_requests
from appliance.stream import parse_sd_blob
from tests.minimal_server import MinimalServer
from tests.server_process import ServerProcess
from tests.vectors import vectors_dir

STREAM_A = "fbf470131440"


@pytest.fixture(scope="module")
def stream_a():
    folder = vectors_dir() / "streams" / STREAM_A
    manifest = json.loads((folder / "manifest.json").read_text())
    sd = (folder / manifest["sd_hash"]).read_bytes()
    blobs = {b["blob_hash"]: (folder / b["blob_hash"]).read_bytes() for b in manifest["blobs"][:-1]}
    return manifest["sd_hash"], sd, blobs


@pytest.fixture
def server():
    with MinimalServer() as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- reflector upload client ------------------------------------------------------------------------------

def test_send_stream_sd_first_then_only_what_is_needed(server, stream_a):
    sd_hash, sd, blobs = stream_a
    order = [b.blob_hash for b in parse_sd_blob(sd).content_blobs]
    with ReflectorClient("127.0.0.1", server.ports["receiver"], timeout=10) as client:
        stats = client.send_stream(sd_hash, sd, blobs.__getitem__)
        assert client.server_version == 1
    assert server.uploads == [sd_hash] + order
    assert (stats.sd_sent, stats.blobs_sent, stats.blobs_skipped) == (True, 3, 0)
    assert stats.bytes_sent == len(sd) + sum(map(len, blobs.values()))
    # again: the server has everything and says so; nothing is read or sent
    read = []
    with ReflectorClient("127.0.0.1", server.ports["receiver"], timeout=10) as client:
        stats = client.send_stream(sd_hash, sd, lambda h: read.append(h) or blobs[h])
    assert (stats.sd_sent, stats.blobs_sent, read) == (False, 0, [])
    # the server lost one blob: needed_blobs names it, and only it is sent
    del server.blobs[order[1]]
    with ReflectorClient("127.0.0.1", server.ports["receiver"], timeout=10) as client:
        stats = client.send_stream(sd_hash, sd, lambda h: read.append(h) or blobs[h])
    assert read == [order[1]] and stats.blobs_sent == 1 and server.uploads[-1] == order[1]


def test_send_blob_validates_before_writing(server):
    data = os.urandom(1000)
    with ReflectorClient("127.0.0.1", server.ports["receiver"], timeout=10) as client:
        assert client.send_blob(blob_hash(data), data) is True
        assert client.send_blob(blob_hash(data), data) is False  # already there
        for bad_hash, bad_data, message in [(blob_hash(b""), b"", "0-byte"),
                                            (blob_hash(b"x" * 2097153), b"x" * 2097153, "at most 2097152"),
                                            (blob_hash(b"a"), b"b", "does not match"), ("nothex", b"a", "invalid")]:
            with pytest.raises(ValueError, match=message):
                client.send_blob(bad_hash, bad_data)
        full = os.urandom(2097152)
        assert client.send_blob(blob_hash(full), full) is True  # the connection is still in step
    assert server.blobs[blob_hash(full)] == full


def test_refused_connection_is_one_line():
    with pytest.raises(ConnectFailed, match=r"^cannot connect to 127\.0\.0\.1:\d+: Connection refused$"):
        ReflectorClient("127.0.0.1", free_port(), timeout=5).connect()


class ScriptedServer:
    """Accept connections and answer each client JSON message with the next scripted reply; after a
    `true` send answer, first read the announced raw bytes. Records what the client did."""

    def __init__(self, replies: list[bytes], upload: bool = True, close_after_first: bool = False):
        self.replies = list(replies)
        self.upload = upload
        self.close_after_first = close_after_first
        self.offered: list[str] = []
        self.received: list[str] = []
        self.requests: list[dict] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while self.replies:
                conn, _ = self.listener.accept()
                with conn:
                    self._session(conn)
        except OSError:
            pass

    def _session(self, conn):
        framer = JsonFramer(require_brace=False)
        while self.replies:
            obj = None
            while obj is None:
                obj = framer.next_json()
                if obj is None:
                    data = conn.recv(65536)
                    if not data:
                        return
                    framer.feed(data)
            self.requests.append(obj)
            if "sd_blob_hash" in obj or "blob_hash" in obj:
                self.offered.append(obj.get("sd_blob_hash") or obj["blob_hash"])
            reply = self.replies.pop(0)
            conn.sendall(reply)
            if self.upload and json.loads(reply) in ({"send_sd_blob": True}, {"send_blob": True}):
                size = obj.get("sd_blob_size") or obj["blob_size"]
                raw = framer.take_raw(size)
                while raw is None:
                    framer.feed(conn.recv(65536))
                    raw = framer.take_raw(size)
                self.received.append(blob_hash(raw))
                conn.sendall(self.replies.pop(0))
            if self.close_after_first:
                self.close_after_first = False
                return

    def close(self):
        self.listener.close()


def test_upload_client_acceptance_matches_the_sdk_client(stream_a):
    sd_hash, sd, blobs = stream_a
    cases = json.loads((vectors_dir() / "peer.json").read_text())["reflector"]["client_acceptance"]
    names = {sd_hash: "sd blob", **{b.blob_hash: f"blob {b.blob_num}" for b in parse_sd_blob(sd).content_blobs}}
    checked = 0
    for case in cases:
        replies = [bytes.fromhex(s["hex"]) for s in case["server_sent"]]
        expected = case["sdk_client"]
        srv = ScriptedServer(replies)
        try:
            with ReflectorClient("127.0.0.1", srv.port, timeout=5) as client:
                if "raised" in expected:  # version 0: the SDK refuses it, we speak it (DESIGN §6)
                    client.connect()
                    assert case["name"] == "version_0" and client.server_version == 0
                    continue
                stats = client.send_stream(sd_hash, sd, blobs.__getitem__)
        finally:
            srv.close()
        assert stats.sd_sent == expected["sent_sd_blob"], case["name"]
        assert [names[h] for h in srv.offered[1:]] == expected["then_offered"], case["name"]
        assert [names[h] for h in srv.received] == expected["acknowledged"], case["name"]
        checked += 1
    assert checked == 4


def test_receipt_false_and_silent_server_are_errors(stream_a):
    sd_hash, sd, blobs = stream_a
    srv = ScriptedServer([b'{"version":1}', b'{"send_sd_blob":true}', b'{"received_sd_blob":false}'])
    with pytest.raises(ProtocolError, match="server did not receive sd blob"):
        ReflectorClient("127.0.0.1", srv.port, timeout=5).send_stream(sd_hash, sd, blobs.__getitem__)
    srv.close()
    silent = socket.create_server(("127.0.0.1", 0))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="i/o timeout"):
        ReflectorClient("127.0.0.1", silent.getsockname()[1], timeout=0.5).connect()
    assert time.monotonic() - started < 5
    silent.close()


# -- TCP peer client --------------------------------------------------------------------------------------

def test_peer_client_reuses_one_connection(server, stream_a):
    sd_hash, sd, blobs = stream_a
    server.blobs.update(blobs)
    server.blobs[sd_hash] = sd
    missing = blob_hash(b"nobody has this")
    with PeerClient("127.0.0.1", server.ports["peer"], timeout=10) as client:
        assert client.get_blob(sd_hash) == sd
        for info in parse_sd_blob(sd).content_blobs:
            assert client.get_blob(info.blob_hash, expected_length=info.length) == blobs[info.blob_hash]
        with pytest.raises(BlobNotFound):
            client.get_blob(missing)
        hashes = list(blobs) + [missing] + [blob_hash(bytes([i])) for i in range(20)] + [sd_hash]
        assert client.has_blobs(hashes) == set(blobs) | {sd_hash}
        assert client.get_blob(sd_hash) == sd  # still the same connection after a not-found
    assert server.peer_connections == 1
    batches = len(encode_availability_requests(hashes))
    assert batches > 1 and server.peer_requests == 1 + 3 + 1 + batches + 1  # each request under 512 bytes


def test_peer_client_faults(server):
    good, corrupt, truncated, silent = (os.urandom(5000) for _ in range(4))
    for data, fault in [(good, None), (corrupt, "corrupt"), (truncated, "truncate"), (silent, "silent")]:
        server.blobs[blob_hash(data)] = data
        if fault:
            server.faults[blob_hash(data)] = fault
    with PeerClient("127.0.0.1", server.ports["peer"], timeout=1) as client:
        with pytest.raises(HashMismatch, match="does not match its hash"):
            client.get_blob(blob_hash(corrupt))
        with pytest.raises(UnexpectedEOF, match="sent 2500 of 5000 bytes"):
            client.get_blob(blob_hash(truncated))
        with pytest.raises(ProtocolError, match="announces 5000 bytes, expected 4992"):
            client.get_blob(blob_hash(good), expected_length=4992)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="i/o timeout"):
            client.get_blob(blob_hash(silent))
        assert time.monotonic() - started < 5
        assert client.get_blob(blob_hash(good)) == good  # a fresh connection after each failure
    with pytest.raises(ConnectFailed, match="Connection refused"):
        PeerClient("127.0.0.1", free_port(), timeout=5).get_blob(blob_hash(good))


def test_peer_client_reconnects_once_when_an_idle_connection_was_closed(stream_a):
    sd_hash, sd, _ = stream_a
    header = json.dumps({"available_blobs": [sd_hash], "blob_data_payment_rate": "RATE_ACCEPTED",
                         "incoming_blob": {"blob_hash": sd_hash, "length": len(sd)}}).encode()
    srv = ScriptedServer([header + sd, header + sd], upload=False, close_after_first=True)
    with PeerClient("127.0.0.1", srv.port, timeout=5) as client:
        assert client.get_blob(sd_hash) == sd
        assert client.get_blob(sd_hash) == sd  # first connection closed by the server: retried on a new one
    srv.close()


def test_peer_client_reads_the_sdk_replies_like_the_sdk(stream_a):
    vec = json.loads((vectors_dir() / "peer.json").read_text())["blob_exchange"]
    h, n = vec["blob"]["blob_hash"], vec["blob"]["length"]
    data = (vectors_dir() / vec["blob"]["file"]).read_bytes()
    for case in vec["client_acceptance"]:
        reply = bytes.fromhex(case["server_sends"]["hex"]) + (data if case["then_blob_bytes"] else b"")
        srv = ScriptedServer([reply], upload=False)
        started = time.monotonic()
        try:
            with PeerClient("127.0.0.1", srv.port, timeout=5) as client:
                outcome = client.get_blob(h, expected_length=n)
        except BlobNotFound:
            outcome = "not found"
        except ProtocolError:
            outcome = "refused"
        finally:
            srv.close()
        assert time.monotonic() - started < 3  # never waits for a timeout, unlike the SDK
        if "downloaded" in case["sdk_client"]:
            assert outcome == data, case["name"]
        elif case["name"] in ("sdk_not_found", "incoming_blob_error"):
            assert outcome == "not found", case["name"]
        else:
            assert outcome == "refused", case["name"]


# -- HTTP client ------------------------------------------------------------------------------------------

def test_http_client(server):
    data, corrupt = os.urandom(3000), os.urandom(3000)
    server.blobs[blob_hash(data)] = data
    server.blobs[blob_hash(corrupt)] = corrupt
    server.faults[blob_hash(corrupt)] = "corrupt"
    missing = blob_hash(b"missing")
    with HttpBlobClient(f"127.0.0.1:{server.ports['http']}", timeout=5) as client:
        got, trace = client.get(blob_hash(data))
        assert got == data and [h.origin_name for h in trace.stacks] == ["mem", "http"]
        assert client.has(blob_hash(data)) and not client.has(missing)
        with pytest.raises(BlobNotFound) as err:
            client.get(missing)
        assert [h.origin_name for h in err.value.trace.stacks] == ["mem", "http"]
        with pytest.raises(HashMismatch):
            client.get(blob_hash(corrupt))
        for _ in range(5):
            client.get(blob_hash(data))
    assert server.http_connections == 1  # one kept-alive session
    with pytest.raises(ConnectFailed, match="cannot connect"):
        HttpBlobClient(f"http://127.0.0.1:{free_port()}", timeout=5).get(missing)


# -- against the real gevent servers ----------------------------------------------------------------------

def test_clients_against_the_real_receiver_peer_and_http_servers(tmp_path, stream_a):
    sd_hash, sd, blobs = stream_a
    with ServerProcess("--store", f"disk:{tmp_path}", "--receiver-port", "0", "--peer-port", "0",
                       "--http-port", "0") as srv:
        with ReflectorClient("127.0.0.1", srv.ports["receiver"], timeout=10) as client:
            stats = client.send_stream(sd_hash, sd, blobs.__getitem__)
        assert (stats.sd_sent, stats.blobs_sent) == (True, 3)
        assert (tmp_path / sd_hash[:2] / sd_hash).read_bytes() == sd
        with ReflectorClient("127.0.0.1", srv.ports["receiver"], timeout=10) as client:
            again = client.send_stream(sd_hash, sd, blobs.__getitem__)
        assert (again.sd_sent, again.blobs_sent) == (False, 0)
        with PeerClient("127.0.0.1", srv.ports["peer"], timeout=10) as client:
            desc = parse_sd_blob(client.get_blob(sd_hash))
            for info in desc.content_blobs:
                assert client.get_blob(info.blob_hash, info.length) == blobs[info.blob_hash]
            with pytest.raises(BlobNotFound):
                client.get_blob(blob_hash(b"absent"))
            assert client.has_blobs([sd_hash, blob_hash(b"absent")]) == {sd_hash}
        with HttpBlobClient(f"127.0.0.1:{srv.ports['http']}", timeout=10) as http:
            data, trace = http.get(sd_hash)
            assert data == sd and trace.stacks[-1].origin_name == "http"
            assert http.has(sd_hash) and not http.has(blob_hash(b"absent"))
