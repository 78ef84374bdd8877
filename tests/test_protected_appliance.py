"""Protected content acceptance on the running appliance: `prism reflector` subprocesses and a local HTTP
server answering the protected list in the format of spec §6.2.

A protected sd hash is served over HTTP only with the edge token (--upstream-edge-token as ?edge_token=),
never over the TCP peer protocol; the content blobs of its stream are not protected (only sd hashes are
listed). The list server down - refusing connections or hanging - fails open by default and closed with
--protected-fail-closed. The list is fetched once for all workers and downloads, however many and
however concurrent, and kept for 2 minutes.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.clients.connection import Connection
from appliance.clients.peer import PeerClient
from appliance.clients.reflector import ReflectorClient
from appliance.protocol import peer as peer_codec
from appliance.protocol.framing import JsonFramer
from tests.appliance_process import appliance_fixture, free_ports, http_status, peer_get  # noqa: F401  (registers `appliance`)
from tests.servers.http import Route
from tests.servers.streams import TestStream, make_stream

TOKEN = "edge-token-for-tests"
PATH = "/file/list_protected"


def listing(*sd_hashes: str) -> bytes:
    """The list as api.odysee.com answers it (spec §6.2)."""
    return json.dumps({"success": True, "error": "",
                       "data": [{"sd_hash": h, "claim_id": "c" * 40} for h in sd_hashes]}).encode()


def start(appliance, url: str, stream: TestStream, *flags: str):
    """An appliance on local storage protecting what `url` lists, with `stream` uploaded to it."""
    app = appliance("--protected-content-url", url, "--upstream-edge-token", TOKEN, *flags)
    with ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=30) as client:
        assert client.send_stream(stream.sd_hash, stream.sd_blob, stream.blobs.__getitem__).sd_sent
    return app




def peer_answer(app, hash_: str) -> dict:
    """The JSON answer to an SDK-style request for one blob."""
    conn = Connection("127.0.0.1", app.ports["tcp_peer"], 30, JsonFramer(64 * 1024, require_brace=True))
    try:
        conn.send(peer_codec.encode_request(hash_))
        return conn.read_json("answer")
    finally:
        conn.close()


def assert_open(app, stream: TestStream) -> None:
    """Everything is served to everyone, on both ports."""
    for h, data in {stream.sd_hash: stream.sd_blob, **stream.blobs}.items():
        assert http_status(app, h) == (200, data)
        assert peer_get(app, h) == data


def test_protected_sd_blob_needs_the_edge_token_and_is_refused_on_tcp(appliance, http_server):
    stream = make_stream(2)
    sd = stream.sd_hash
    # A slow list server: the first downloads all arrive while it is being fetched.
    http_server.routes[PATH] = Route(200, listing(sd, make_stream(1).sd_hash), hang=0.5)
    app = start(appliance, http_server.url(PATH), stream, "--workers", "2")

    # Many concurrent first downloads on both workers wait for one fetch of the list.
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: http_status(app, sd), range(16)))
    assert answers == [(403, b"requested blob is protected")] * 16

    assert http_status(app, sd, "wrong-token")[0] == 403
    assert http_status(app, sd, "")[0] == 403
    assert http_status(app, sd, TOKEN) == (200, stream.sd_blob)
    for h, data in stream.blobs.items():  # only sd hashes are listed: content blobs are not protected
        assert http_status(app, h) == (200, data)
        assert peer_get(app, h) == data

    assert peer_get(app, sd) is None  # TCP has no edge token: refused, not sent
    answer = peer_answer(app, sd)
    assert answer["incoming_blob"] == {"error": "requested blob is protected", "blob_hash": "", "length": 0}
    assert answer.get("available_blobs") == []
    with PeerClient("127.0.0.1", app.ports["tcp_peer"], timeout=30) as client:
        assert client.has_blobs([sd, *stream.blobs]) == set(stream.blobs)

    with ThreadPoolExecutor(8) as pool:  # more downloads, both ports, both workers
        list(pool.map(lambda h: (http_status(app, h), peer_get(app, h)), [sd, *stream.blobs] * 8))
    assert http_server.count(PATH) == 1  # one fetch for every worker and download (kept 2 minutes)
    assert app.stop() == 0


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
@pytest.mark.parametrize("down", ["refusing", "hanging"])
def test_list_server_down(appliance, http_server, down, fail_closed):
    if down == "refusing":
        url = f"http://127.0.0.1:{free_ports(1)[0]}{PATH}"  # nothing listens there
    else:
        http_server.routes[PATH] = Route(200, listing(), hang=60)  # answers only when the server closes
        url = http_server.url(PATH)
    stream = make_stream(2)
    app = start(appliance, url, stream, "--workers", "1", "--protected-content-timeout", "1",
                f"--protected-fail-closed={str(fail_closed).lower()}")
    if not fail_closed:  # reflector.go's default: nothing counts as protected without a list
        assert_open(app, stream)
    else:  # every blob counts as protected until a list arrives: the edge token is needed, TCP is refused
        for h, data in {stream.sd_hash: stream.sd_blob, **stream.blobs}.items():
            assert http_status(app, h) == (403, b"requested blob is protected")
            assert http_status(app, h, TOKEN) == (200, data)
            assert peer_get(app, h) is None
    if down == "hanging":
        assert http_server.count(PATH) == 1  # retried after a while, not on every download
    assert app.stop() == 0
