import json
import os
import time

import pytest
from server_process import ServerProcess, closed_by_peer, recv_exactly, recv_json

from appliance.blob import blob_hash
from appliance.errors import BlobNotFound
from appliance.protocol import peer as codec
from appliance.stores.disk import DiskStore
from tests.vectors import vectors_dir

VECTORS = vectors_dir()
PEER = json.loads((VECTORS / "peer.json").read_text())
ADDRESS = '"lbrycrd_address":"bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct"'


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    disk = DiskStore(str(tmp_path_factory.mktemp("peer")))
    for path in (VECTORS / "streams" / "712f046eb344").iterdir():
        if len(path.name) == 96:
            disk.put(path.name, path.read_bytes())
    for data in (b"abcdefg", b"hijklmn", b"opqrstu"):
        disk.put(blob_hash(data), data)
    return disk


@pytest.fixture(scope="module")
def server(store):
    protected = blob_hash(b"opqrstu")
    with ServerProcess("--store", f"disk:{store.root}", "--peer-port", "0", "--protected", protected,
                       "--idle-timeout", "2") as srv:
        yield srv


def _sdk_accepts(header: dict, h: str, expected_length: int | None = None) -> int:
    """The LBRY SDK client's rules for a download answer (lbry-sdk-wire.md)."""
    resp = codec.parse_response(header)
    assert resp is not None, f"the SDK client would never recognise {header}"
    return codec.accept_blob(resp, h, expected_length)


def test_sdk_download_transcript_on_one_connection(server):
    turns = PEER["blob_exchange"]["download_transcript"]
    with server.connect("peer") as sock:
        for request, answer in zip(turns[0::2], turns[1::2], strict=True):
            sock.sendall(request["text"].encode())
            header, rest = recv_json(sock)
            blob = answer["then"]
            length = _sdk_accepts(header, blob["blob_hash"])
            assert length == blob["length"]
            payload = rest + recv_exactly(sock, length - len(rest))
            assert payload == (VECTORS / blob["file"]).read_bytes()
            assert blob_hash(payload) == blob["blob_hash"]


def test_missing_blob_is_answered_at_once(server):
    case = PEER["blob_exchange"]["missing_blob"]
    with server.connect("peer", timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(case["request"]["text"].encode())
        header, rest = recv_json(sock)
        assert time.monotonic() - started < 2 and rest == b""
        with pytest.raises(BlobNotFound):
            _sdk_accepts(header, case["blob_hash"])
        assert header["available_blobs"] == [] and header["incoming_blob"]["error"] == "blob not found"
        # the connection stays usable for the next request
        sock.sendall(PEER["blob_exchange"]["request"]["text"].encode())
        header, _ = recv_json(sock)
        assert _sdk_accepts(header, PEER["blob_exchange"]["blob"]["blob_hash"]) == 1008


def test_availability_answers_keep_request_order_and_exact_bytes(server):
    a, b = blob_hash(b"abcdefg"), blob_hash(b"hijklmn")
    x, y = blob_hash(b"x"), blob_hash(b"y")
    cases = [([a, b], [a, b]), ([x, a, y], [a]), ([], [])]
    with server.connect("peer") as sock:
        for asked, expected in cases:
            sock.sendall(json.dumps({"lbrycrd_address": True, "requested_blobs": asked}).encode())
            expected_bytes = ("{" + ADDRESS + ',"available_blobs":' + json.dumps(expected, separators=(",", ":"))
                              + "}").encode()
            assert recv_exactly(sock, len(expected_bytes)) == expected_bytes


def test_protected_blobs_are_neither_listed_nor_sent(server):
    h = blob_hash(b"opqrstu")
    with server.connect("peer") as sock:
        sock.sendall(codec.encode_request(h))
        header, rest = recv_json(sock)
        assert header["available_blobs"] == [] and rest == b""
        assert header["incoming_blob"]["error"] == "requested blob is protected"


def test_requests_bigger_than_reflector_go_limit_are_served(server):
    a = blob_hash(b"abcdefg")
    asked = [blob_hash(bytes([i])) for i in range(40)] + [a]  # ~4 KB, over reflector.go's 512 bytes
    with server.connect("peer") as sock:
        sock.sendall(json.dumps({"requested_blobs": asked, "blob_data_payment_rate": -1}).encode())
        header, _ = recv_json(sock)
        assert header["available_blobs"] == [a] and header["blob_data_payment_rate"] == "RATE_TOO_LOW"


@pytest.mark.parametrize("payload", [
    b"hello dear server, I would like blobs. Please",
    b"\n" + json.dumps({"requested_blobs": []}).encode(),  # anything before "{" is invalid data
    json.dumps({"requested_blob": "abc"}).encode(),  # wrong hash length
    json.dumps({"requested_blob": "Z" * 96}).encode(),  # not hex
    json.dumps({"requested_blobs": "not a list"}).encode(),
    b"{" + b"x" * 70000,  # over 64 KiB
])
def test_bad_requests_close_the_connection_without_a_reply(server, payload):
    with server.connect("peer") as sock:
        sock.sendall(payload)
        sock.settimeout(5)
        try:
            assert sock.recv(65536) == b""
        except ConnectionResetError:  # closed with our unread bytes still queued: a reset, still no reply
            pass


def test_idle_connections_are_closed(server):
    with server.connect("peer") as sock:
        started = time.monotonic()
        assert closed_by_peer(sock, timeout=10)
        assert 1.5 < time.monotonic() - started < 8  # --idle-timeout 2


def test_a_blob_bigger_than_the_socket_buffer_is_sent_whole(tmp_path):
    disk = DiskStore(str(tmp_path))
    data = os.urandom(2 * 1024 * 1024)
    h = blob_hash(data)
    disk.put(h, data)
    with ServerProcess("--store", f"disk:{tmp_path}", "--peer-port", "0") as srv, srv.connect("peer") as sock:
        for _ in range(3):
            sock.sendall(codec.encode_request(h))
            header, rest = recv_json(sock)
            length = _sdk_accepts(header, h, len(data))
            assert rest + recv_exactly(sock, length - len(rest)) == data


def test_downloads_are_counted(tmp_path):
    disk = DiskStore(str(tmp_path))
    data = os.urandom(7000)
    h = blob_hash(data)
    disk.put(h, data)
    with ServerProcess("--store", f"disk:{tmp_path}", "--peer-port", "0", "--print-metrics") as srv:
        with srv.connect("peer") as sock:
            for wanted in (h, h, blob_hash(b"absent")):
                sock.sendall(codec.encode_request(wanted))
                header, rest = recv_json(sock)
                length = header["incoming_blob"]["length"]
                recv_exactly(sock, length - len(rest))
        with srv.connect("peer") as sock:
            sock.sendall(b"garbage")
            sock.recv(10)
        out, _ = srv.stop()
    series = dict(line.rsplit(" ", 1) for line in out.splitlines() if line and not line.startswith("#"))
    assert float(series["reflector_tcp_out_bytes"]) == 2 * len(data)
    assert float(series["reflector_blob_download_total"]) == 2
    assert float(series["reflector_peer_download_total"]) == 2
    assert float(series['reflector_error_total{direction="download",error_type="invalid_peer_data"}']) == 1
