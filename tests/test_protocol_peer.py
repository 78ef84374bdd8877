"""TCP peer protocol codecs against the LBRY SDK's captured messages (vectors/peer.json)."""
import json

import pytest

from appliance.errors import BlobNotFound, ProtocolError
from appliance.protocol import peer
from appliance.protocol.framing import JsonFramer
from tests.vectors import vectors_dir


@pytest.fixture(scope="module")
def vec():
    return json.loads((vectors_dir() / "peer.json").read_text())["blob_exchange"]


def frame(data: bytes) -> dict:
    framer = JsonFramer()
    framer.feed(data)
    obj = framer.next_json()
    assert obj is not None and framer.buffered() == 0
    return obj


def test_our_request_is_the_sdk_request(vec):
    h = vec["blob"]["blob_hash"]
    assert peer.encode_request(h) == bytes.fromhex(vec["request"]["hex"])
    assert len(peer.encode_request(h)) == 295 < 512
    for turn in vec["download_transcript"]:
        if turn["from"] == "client":
            sent = json.loads(turn["text"])
            assert peer.encode_request(sent["requested_blob"]) == bytes.fromhex(turn["hex"])


def test_sdk_requests_parse_on_the_server_side(vec):
    requests = [vec["request"], vec["missing_blob"]["request"]]
    requests += [t for t in vec["download_transcript"] if t["from"] == "client"]
    for message in requests:
        req = peer.parse_request(frame(bytes.fromhex(message["hex"])))
        h = json.loads(message["text"])["requested_blob"]
        assert req == peer.PeerRequest([h], 0.0, h, True)
        assert peer.check_requested_blob(req.requested_blob) == h
        assert peer.rate_reply(req.blob_data_payment_rate) == peer.RATE_ACCEPTED


def test_request_type_checks():
    for bad in [{"requested_blobs": "x"}, {"requested_blobs": [1]}, {"blob_data_payment_rate": "0"},
                {"blob_data_payment_rate": True}, {"requested_blob": 5}, {"lbrycrd_address": "yes"}]:
        with pytest.raises(ProtocolError, match="invalid json request"):
            peer.parse_request(bad)
    assert peer.parse_request({}) == peer.PeerRequest()
    assert peer.parse_request({"requested_blob": None, "other": 1}) == peer.PeerRequest()
    with pytest.raises(ProtocolError, match="^Invalid blob hash length$"):
        peer.check_requested_blob("a")
    with pytest.raises(ProtocolError, match="invalid blob hash"):
        peer.check_requested_blob("A" * 96)
    assert peer.rate_reply(-0.5) == peer.RATE_TOO_LOW and peer.rate_reply(None) is None


def test_server_response_bytes_are_reflector_go_form():
    # spec §3b examples
    assert peer.encode_response(available_blobs=["a", "b"]) == \
        b'{"lbrycrd_address":"bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct","available_blobs":["a","b"]}'
    h = "ab" * 48
    expected = ('{"lbrycrd_address":"bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct","available_blobs":["H"],'
                '"blob_data_payment_rate":"RATE_ACCEPTED","incoming_blob":{"blob_hash":"H","length":2097152}}')
    assert peer.encode_response(available_blobs=[h], payment_rate=peer.RATE_ACCEPTED,
                                incoming_blob=peer.incoming_found(h, 2097152)) == expected.replace("H", h).encode()
    assert peer.encode_response(available_blobs=[], payment_rate=peer.RATE_ACCEPTED,
                                incoming_blob=peer.INCOMING_NOT_FOUND).endswith(
        b'"incoming_blob":{"error":"blob not found","blob_hash":"","length":0}}')


def test_our_server_responses_pass_the_sdk_client_rules(vec):
    h, n = vec["blob"]["blob_hash"], vec["blob"]["length"]
    found = peer.encode_response(available_blobs=[h], payment_rate=peer.RATE_ACCEPTED,
                                 incoming_blob=peer.incoming_found(h, n))
    resp = peer.parse_response(frame(found))
    assert resp is not None and peer.accept_blob(resp, h, n) == n and peer.accept_blob(resp, h) == n
    missing = peer.encode_response(available_blobs=[], payment_rate=peer.RATE_ACCEPTED,
                                   incoming_blob=peer.INCOMING_NOT_FOUND)
    with pytest.raises(BlobNotFound):
        peer.accept_blob(peer.parse_response(frame(missing)), h, n)


def test_sdk_server_replies_are_read_like_the_sdk_client(vec):
    h, n = vec["blob"]["blob_hash"], vec["blob"]["length"]
    resp = peer.parse_response(frame(bytes.fromhex(vec["response_header"]["hex"])))
    assert peer.accept_blob(resp, h, n) == n
    for turn in vec["download_transcript"]:
        if turn["from"] == "server":
            resp = peer.parse_response(frame(bytes.fromhex(turn["header"]["hex"])))
            assert peer.accept_blob(resp, turn["then"]["blob_hash"]) == turn["then"]["length"]
    missing = vec["missing_blob"]
    with pytest.raises(BlobNotFound):
        peer.accept_blob(peer.parse_response(frame(bytes.fromhex(missing["response"]["hex"]))), missing["blob_hash"])


def test_client_acceptance_outcomes(vec):
    h, n = vec["blob"]["blob_hash"], vec["blob"]["length"]
    outcomes = {}
    for case in vec["client_acceptance"]:
        resp = peer.parse_response(frame(bytes.fromhex(case["server_sends"]["hex"])))
        if resp is None:
            outcomes[case["name"]] = "not a response"
            continue
        try:
            outcomes[case["name"]] = peer.accept_blob(resp, h, n)
        except BlobNotFound:
            outcomes[case["name"]] = "not found"
        except ProtocolError:
            outcomes[case["name"]] = "refused"
    assert outcomes == {
        "sdk_server_header": n, "compact_json_other_key_order": n, "incoming_blob_other_hash": "refused",
        "sdk_not_found": "not found", "incoming_blob_error": "not found", "top_level_error_key": "not a response",
        "wrong_length": "refused",
    }
    for case in vec["client_acceptance"]:  # the SDK only took the blob where we accept it
        took = "downloaded" in case["sdk_client"]
        assert took == isinstance(outcomes[case["name"]], int)


def test_response_checks():
    h = "cd" * 48
    ok = {"available_blobs": [h], "blob_data_payment_rate": "RATE_ACCEPTED"}
    for incoming, expected in [({"blob_hash": h, "length": 0}, None), ({"blob_hash": h, "length": 2097153}, None),
                               ({"blob_hash": h, "length": "5"}, None), ({"blob_hash": h, "length": 5}, 5)]:
        resp = peer.parse_response({**ok, "incoming_blob": incoming})
        if expected is None:
            with pytest.raises(ProtocolError):
                peer.accept_blob(resp, h)
        else:
            assert peer.accept_blob(resp, h) == expected
    with pytest.raises(ProtocolError, match="payment rate"):
        peer.accept_blob(peer.parse_response({**ok, "blob_data_payment_rate": "RATE_TOO_LOW",
                                              "incoming_blob": {"blob_hash": h, "length": 5}}), h)
    with pytest.raises(ProtocolError):
        peer.parse_response({"available_blobs": "x"})


def test_availability_requests_stay_under_512_bytes():
    hashes = [f"{i:096x}" for i in range(23)]
    requests = peer.encode_availability_requests(hashes)
    assert len(requests) > 1 and all(len(r) < 512 for r in requests)
    assert [h for r in requests for h in json.loads(r)["requested_blobs"]] == hashes
    assert all(json.loads(r)["lbrycrd_address"] is True for r in requests)
    assert peer.encode_availability_requests([]) == []
