import io
import json
import os
import subprocess
import sys
import threading

import pytest
from server_process import ServerProcess, closed_by_peer, metric, recv_exactly, recv_json

from appliance.blob import MAX_BLOB_SIZE, blob_hash
from appliance.protocol import peer as peer_codec
from appliance.protocol import reflector as codec
from appliance.stream import decrypt_stream, parse_sd_blob
from tests.vectors import vectors_dir

VECTORS = vectors_dir()
PEER = json.loads((VECTORS / "peer.json").read_text())
TRANSCRIPTS = PEER["reflector"]["transcripts"]
STREAM_A = VECTORS / "streams" / "fbf470131440"
SD_HASH = "fbf47013144055b637fa1a2b22aafca0cd38e9b3f465c39b37fb73df4a1779c93c96dff2da9a4ee21da176464257d9f9"
SD = (STREAM_A / SD_HASH).read_bytes()
CONTENT = [b.blob_hash for b in parse_sd_blob(SD).content_blobs]


def _server(*extra):
    return ServerProcess("--store", "memory", "--receiver-port", "0", "--peer-port", "0", "--print-metrics", *extra)


def play(sock, turns):
    """Send the client's turns of an SDK transcript; return the server's replies as parsed JSON."""
    replies = []
    for turn in turns:
        if turn["from"] == "client":
            sock.sendall(turn["text"].encode() if turn["kind"] == "json" else (VECTORS / turn["file"]).read_bytes())
        else:
            reply, rest = recv_json(sock)
            assert rest == b"", "a reply must be exactly one JSON object"
            replies.append(reply)
    return replies


def expected(turns):
    return [json.loads(t["text"]) for t in turns if t["from"] == "server"]


def handshake(sock, version=1):
    sock.sendall(codec.encode_handshake(version))
    assert recv_json(sock)[0] == {"version": version}


def offer(sock, h, data, sd=False):
    """Offer one blob like the SDK client; returns the server's answer and, if sent, its receipt."""
    sock.sendall(codec.encode_sd_request(h, len(data)) if sd else codec.encode_blob_request(h, len(data)))
    answer, _ = recv_json(sock)
    if not answer.get("send_sd_blob" if sd else "send_blob"):
        return answer, None
    sock.sendall(data)
    return answer, recv_json(sock)[0]


def download(srv, hashes):
    """Every blob over the TCP peer port, on one connection, as the SDK downloader does."""
    out = {}
    with srv.connect("peer") as sock:
        for h in hashes:
            sock.sendall(peer_codec.encode_request(h))
            header, rest = recv_json(sock)
            length = peer_codec.accept_blob(peer_codec.parse_response(header), h)
            out[h] = rest + recv_exactly(sock, length - len(rest))
    return out


def available(srv, hashes):
    with srv.connect("peer") as sock:
        sock.sendall(json.dumps({"requested_blobs": hashes}).encode())
        return recv_json(sock)[0]["available_blobs"]


def test_sdk_uploads_then_reuploads_then_downloads_and_decrypts():
    with _server() as srv:
        with srv.connect("receiver") as sock:
            turns = TRANSCRIPTS["upload_new_stream"]["turns"]
            assert play(sock, turns) == expected(turns)
        with srv.connect("receiver") as sock:
            turns = TRANSCRIPTS["upload_again"]["turns"]
            replies = play(sock, turns)
            # The SDK server says {"send_sd_blob": false, "needed_blobs": []}; reflector.go leaves the empty
            # list out. The SDK client reads both as "the server has everything".
            assert replies[:-1] == expected(turns)[:-1]
            assert replies[-1]["send_sd_blob"] is False and not replies[-1].get("needed_blobs")
        blobs = download(srv, [SD_HASH, *CONTENT])
        plain = io.BytesIO()
        decrypt_stream(parse_sd_blob(blobs[SD_HASH]), lambda info: blobs[info.blob_hash], plain)
        assert plain.getvalue() == (STREAM_A / "plain.bin").read_bytes()
        out, _ = srv.stop(2)  # SIGINT
    assert metric(out, "reflector_sdblob_upload_total") == 1 and metric(out, "reflector_blob_upload_total") == 4
    assert metric(out, "reflector_reflector_in_bytes") == len(SD) + 2 * 2097152 + 524304


def test_server_holding_only_the_sd_blob_asks_for_the_content_blobs():
    with _server() as srv:
        with srv.connect("receiver") as sock:
            handshake(sock)
            assert offer(sock, SD_HASH, SD, sd=True) == ({"send_sd_blob": True}, {"received_sd_blob": True})
        with srv.connect("receiver") as sock:
            turns = TRANSCRIPTS["server_has_sd_blob_only"]["turns"]
            assert play(sock, turns) == expected(turns)
        assert available(srv, CONTENT) == CONTENT


def test_interrupted_upload_leaves_nothing_and_resumes_with_what_is_missing():
    blobs = {h: (STREAM_A / h).read_bytes() for h in CONTENT}
    with _server() as srv:
        with srv.connect("receiver") as sock:
            handshake(sock)
            offer(sock, SD_HASH, SD, sd=True)
            assert offer(sock, CONTENT[0], blobs[CONTENT[0]])[1] == {"received_blob": True}
            sock.sendall(codec.encode_blob_request(CONTENT[1], len(blobs[CONTENT[1]])))
            assert recv_json(sock)[0] == {"send_blob": True}
            sock.sendall(blobs[CONTENT[1]][: len(blobs[CONTENT[1]]) // 2])  # ...and the client goes away
        with srv.connect("receiver") as sock:
            handshake(sock)
            # the half blob was never stored: the answer lists exactly what is missing
            answer, _ = offer(sock, SD_HASH, SD, sd=True)
            assert answer == {"send_sd_blob": False, "needed_blobs": CONTENT[1:]}
            for h in answer["needed_blobs"]:
                assert offer(sock, h, blobs[h])[1] == {"received_blob": True}
        assert available(srv, [SD_HASH, *CONTENT]) == [SD_HASH, *CONTENT]
        out, _ = srv.stop()
    assert metric(out, 'reflector_error_total{direction="upload",error_type="unexpected_eof"}') == 1


@pytest.mark.parametrize("version", [0, 1])
def test_handshake_versions_0_and_1_are_echoed(version):
    with _server() as srv, srv.connect("receiver") as sock:
        handshake(sock, version)


@pytest.mark.parametrize("message", [b'{"version": 2}', b'{"nothing": 1}', b'{"version": "1"}', b"[1, 2]",
                                     b"garbage"])
def test_bad_handshakes_are_closed_without_a_reply(message):
    with _server() as srv, srv.connect("receiver") as sock:
        sock.sendall(message)
        sock.settimeout(10)
        assert sock.recv(100) == b""


def _bad_offer(srv, request: dict, payload: bytes = b"") -> tuple[bytes, bool]:
    """Send one request (and payload); return what the server sent and whether it then closed."""
    with srv.connect("receiver") as sock:
        handshake(sock)
        sock.sendall(json.dumps(request).encode())
        got = b""
        if payload:
            answer, _ = recv_json(sock)
            assert answer == {"send_blob": True} or answer == {"send_sd_blob": True}
            sock.sendall(payload)
        sock.settimeout(10)
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        return got, True


def test_invalid_offers_close_the_connection_and_store_nothing():
    data = os.urandom(1000)
    h = blob_hash(data)
    not_a_stream = b'{"not": "a stream descriptor"}'
    with _server() as srv:
        cases = [
            ({"blob_hash": h, "blob_size": 0}, b"", b""),
            ({"blob_hash": h, "blob_size": 2 * 1024 ** 3}, b"", b""),  # 2 GB declared
            ({"blob_hash": h, "blob_size": MAX_BLOB_SIZE + 1}, b"", b""),
            ({"blob_hash": "", "blob_size": 10}, b"", b""),
            ({"blob_hash": h.upper(), "blob_size": 1000}, b"", b""),
            ({"blob_hash": "../../etc/passwd", "blob_size": 1000}, b"", b""),
            ({"blob_hash": h, "blob_size": 1000}, os.urandom(1000), b'{"received_blob":false}'),  # hash mismatch
            ({"sd_blob_hash": blob_hash(not_a_stream), "sd_blob_size": len(not_a_stream)}, not_a_stream,
             b'{"received_sd_blob":false}'),
        ]
        for request, payload, reply in cases:
            got, closed = _bad_offer(srv, request, payload)
            assert closed and got == reply, request
        assert available(srv, [h, blob_hash(not_a_stream)]) == []
        out, _ = srv.stop()
    for kind, count in (("zero_byte_blob", 1), ("blob_too_big", 2), ("invalid_blob_hash", 2),
                        ("hash_mismatch", 1)):
        assert metric(out, f'reflector_error_total{{direction="upload",error_type="{kind}"}}') == count, kind


def test_a_stalled_upload_times_out_and_stores_nothing():
    data = os.urandom(5000)
    h = blob_hash(data)
    with _server("--upload-timeout", "1") as srv:
        with srv.connect("receiver") as idle:
            handshake(idle)
            assert closed_by_peer(idle, timeout=10)  # nothing sent after the handshake
        with srv.connect("receiver") as sock:
            handshake(sock)
            sock.sendall(codec.encode_blob_request(h, len(data)))
            assert recv_json(sock)[0] == {"send_blob": True}
            sock.sendall(data[:100])
            assert closed_by_peer(sock, timeout=10)
        assert available(srv, [h]) == []
        out, _ = srv.stop()
    assert metric(out, 'reflector_error_total{direction="upload",error_type="io_timeout"}') == 2


def test_concurrent_uploads_of_the_same_blob_are_safe():
    data = os.urandom(MAX_BLOB_SIZE)
    h = blob_hash(data)
    with _server() as srv:
        socks = [srv.connect("receiver") for _ in range(4)]
        for sock in socks:
            handshake(sock)
            sock.sendall(codec.encode_blob_request(h, len(data)))
        for sock in socks:
            assert recv_json(sock)[0] == {"send_blob": True}  # nobody has it yet: all four send
        results = []

        def send(sock):
            sock.sendall(data)
            results.append(recv_json(sock)[0])

        threads = [threading.Thread(target=send, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [{"received_blob": True}] * 4
        assert download(srv, [h])[h] == data
        for sock in socks:
            sock.close()


def test_disabled_uploads_close_every_connection():
    with _server("--disable-uploads") as srv, srv.connect("receiver") as sock:
        sock.sendall(codec.encode_handshake(1))
        assert closed_by_peer(sock)


def test_a_blocked_stream_is_refused():
    with _server("--blocked", SD_HASH) as srv:
        with srv.connect("receiver") as sock:
            handshake(sock)
            assert offer(sock, SD_HASH, SD, sd=True) == ({"send_sd_blob": False}, None)
        assert available(srv, [SD_HASH]) == []


NEEDED_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, socket, sys
from appliance.blob import blob_hash
from appliance.protocol import reflector as codec
from appliance.servers.receiver import ReceiverServer
from appliance.servers.standalone import listen
from appliance.stores.base import NeededBlobsChecker
from appliance.stores.memory import MemoryStore

MISSING = [blob_hash(bytes([i])) for i in range(4)]

class Indexed(MemoryStore, NeededBlobsChecker):
    # a store with a stream index (as the DB-backed store has): it lists a known stream's missing blobs
    def missing_blobs_for_known_stream(self, sd_hash):
        return MISSING

store = Indexed()
sd = b"x" * 96
store.put(blob_hash(sd), sd)  # not even a stream descriptor: the index answers, not the sd blob
listener = listen("127.0.0.1", 0)
server = ReceiverServer(listener, store, store)
server.start()
sock = socket.create_connection(listener.getsockname())
sock.sendall(codec.encode_handshake(1))
sock.recv(100)
sock.sendall(codec.encode_sd_request(blob_hash(sd), 96))
print(json.dumps([json.loads(sock.recv(1000)), MISSING]))
"""


def test_needed_blobs_come_from_a_store_that_indexes_streams():
    out = subprocess.run([sys.executable, "-c", NEEDED_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    answer, missing = json.loads(out.stdout)
    assert answer == {"send_sd_blob": False, "needed_blobs": missing}
