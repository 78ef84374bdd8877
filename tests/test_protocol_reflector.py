"""Reflector upload protocol codecs against the LBRY SDK's captured messages (vectors/peer.json)."""
import json

import pytest

from appliance.errors import ProtocolError, classify
from appliance.protocol import reflector as rp
from appliance.protocol.framing import JsonFramer
from tests.vectors import vectors_dir


@pytest.fixture(scope="module")
def vec():
    return json.loads((vectors_dir() / "peer.json").read_text())["reflector"]


def frame(data: bytes) -> dict:
    framer = JsonFramer(require_brace=False)
    framer.feed(data)
    obj = framer.next_json()
    assert obj is not None and framer.buffered() == 0
    return obj


def test_client_encoders_reproduce_the_sdk_bytes(vec):
    m = vec["messages"]
    assert rp.encode_handshake() == bytes.fromhex(m["handshake_request"]["hex"])
    sd = json.loads(m["sd_blob_request"]["text"])
    assert rp.encode_sd_request(sd["sd_blob_hash"], sd["sd_blob_size"]) == bytes.fromhex(m["sd_blob_request"]["hex"])
    b = json.loads(m["blob_request"]["text"])
    assert rp.encode_blob_request(b["blob_hash"], b["blob_size"]) == bytes.fromhex(m["blob_request"]["hex"])
    for transcript in vec["transcripts"].values():
        for turn in transcript["turns"]:
            if turn["from"] == "client" and turn["kind"] == "json":
                obj = json.loads(turn["text"])
                if "version" in obj:
                    encoded = rp.encode_handshake(obj["version"])
                elif "sd_blob_hash" in obj:
                    encoded = rp.encode_sd_request(obj["sd_blob_hash"], obj["sd_blob_size"])
                else:
                    encoded = rp.encode_blob_request(obj["blob_hash"], obj["blob_size"])
                assert encoded == bytes.fromhex(turn["hex"])


def test_server_parses_every_sdk_client_message(vec):
    m = vec["messages"]
    assert rp.parse_handshake(frame(bytes.fromhex(m["handshake_request"]["hex"]))) == 1
    sd = rp.parse_send_request(frame(bytes.fromhex(m["sd_blob_request"]["hex"])))
    assert sd == rp.SendRequest(json.loads(m["sd_blob_request"]["text"])["sd_blob_hash"], 922, True)
    blob = rp.parse_send_request(frame(bytes.fromhex(m["blob_request"]["hex"])))
    assert blob.is_sd is False and blob.size == 2097152


def test_client_parses_every_sdk_server_reply(vec):
    m = vec["messages"]
    assert rp.parse_handshake_reply(frame(bytes.fromhex(m["handshake_response"]["hex"]))) == 1
    assert rp.parse_sd_reply(frame(bytes.fromhex(m["sd_blob_response"]["hex"]))) == rp.SdReply(True, None)
    assert rp.parse_receipt(frame(bytes.fromhex(m["sd_blob_received_response"]["hex"])), is_sd=True) is True
    assert rp.parse_blob_reply(frame(bytes.fromhex(m["blob_response"]["hex"]))) is True
    assert rp.parse_receipt(frame(bytes.fromhex(m["blob_received_response"]["hex"])), is_sd=False) is True
    again = vec["transcripts"]["upload_again"]["turns"][3]
    assert rp.parse_sd_reply(frame(bytes.fromhex(again["hex"]))) == rp.SdReply(False, [])
    partial = vec["transcripts"]["server_has_sd_blob_only"]["turns"][3]
    reply = rp.parse_sd_reply(frame(bytes.fromhex(partial["hex"])))
    assert reply.send is False and len(reply.needed_blobs) == 3


def test_client_acceptance_replies_parse(vec):
    for case in vec["client_acceptance"]:
        replies = [frame(bytes.fromhex(s["hex"])) for s in case["server_sent"]]
        # every handshake reply is one we accept (we speak 0 and 1; the SDK refuses 0)
        assert rp.parse_handshake_reply(replies[0]) in (0, 1)
        for reply in replies[1:]:
            key = next(iter(reply))
            if key == "send_sd_blob":
                rp.parse_sd_reply(reply)
            elif key == "send_blob":
                rp.parse_blob_reply(reply)
            else:
                assert rp.parse_receipt(reply, is_sd=key == "received_sd_blob") is True


def test_our_server_replies_are_forms_the_sdk_client_takes(vec):
    accepted = {s["text"] for case in vec["client_acceptance"] if "raised" not in case["sdk_client"]
                for s in case["server_sent"]}
    assert rp.encode_handshake_response(1).decode() in accepted
    assert rp.encode_sd_response(True).decode() in accepted
    assert rp.encode_sd_response(False).decode() in accepted  # "has everything"
    assert rp.encode_sd_response(False, []).decode() == '{"send_sd_blob":false}'
    needed = [json.loads(vec["messages"]["blob_request"]["text"])["blob_hash"]]
    assert rp.encode_sd_response(False, needed).decode() in accepted
    assert rp.encode_blob_response(True).decode() in accepted
    assert rp.encode_blob_response(False).decode() in accepted
    assert rp.encode_receipt(True, True).decode() in accepted
    assert rp.encode_receipt(False, True).decode() in accepted
    assert rp.encode_receipt(False, False) == b'{"received_blob":false}'
    assert rp.encode_handshake_response(0) == b'{"version":0}'


def test_handshake_versions():
    assert rp.parse_handshake({"version": 0}) == 0 and rp.parse_handshake({"version": 1}) == 1
    for bad in [{}, {"version": None}, {"other": 1}]:
        with pytest.raises(ProtocolError, match="^handshake is missing protocol version$"):
            rp.parse_handshake(bad)
    for bad in [{"version": 2}, {"version": -1}, {"version": "1"}, {"version": True}, {"version": 1.0}]:
        with pytest.raises(ProtocolError, match="^protocol version not supported$"):
            rp.parse_handshake(bad)
    with pytest.raises(ProtocolError):
        rp.parse_handshake_reply({"version": 3})
    with pytest.raises(ProtocolError):
        rp.parse_handshake_reply({})


def test_send_request_validation_order_and_messages():
    h = "ef" * 48
    assert rp.parse_send_request({"sd_blob_hash": h, "sd_blob_size": 5, "blob_hash": "x", "blob_size": 9}) == \
        rp.SendRequest(h, 5, True)  # sd takes precedence
    assert rp.parse_send_request({"sd_blob_hash": "", "blob_hash": h, "blob_size": 9}) == rp.SendRequest(h, 9, False)
    cases = [
        ({"blob_size": 5}, "^blob hash is empty$"),
        ({"blob_hash": "", "blob_size": 5}, "^blob hash is empty$"),
        ({"blob_size": 2097153}, "^blob hash is empty$"),  # the hash is checked first
        ({"blob_hash": h, "blob_size": 2097153}, "^blob must be at most 2097152 bytes$"),
        ({"blob_hash": h, "blob_size": 0}, "^0-byte blob received$"),
        ({"blob_hash": h}, "^0-byte blob received$"),
        ({"sd_blob_hash": h, "sd_blob_size": 0}, "^0-byte blob received$"),
        ({"blob_hash": h, "blob_size": -1}, "invalid blob size"),
        ({"blob_hash": 5, "blob_size": 1}, "must be a string"),
        ({"blob_hash": h, "blob_size": "1"}, "must be an integer"),
    ]
    for obj, message in cases:
        with pytest.raises(ProtocolError, match=message):
            rp.parse_send_request(obj)
    with pytest.raises(ProtocolError) as err:
        rp.parse_send_request({"blob_hash": h, "blob_size": 0})
    assert classify(err.value) == "zero_byte_blob"


def test_reply_type_checks():
    for parse, obj in [(rp.parse_sd_reply, {}), (rp.parse_sd_reply, {"send_sd_blob": "true"}),
                       (rp.parse_sd_reply, {"send_sd_blob": False, "needed_blobs": "x"}),
                       (rp.parse_blob_reply, {"send_blob": 1}),
                       (lambda o: rp.parse_receipt(o, True), {"received_blob": True})]:
        with pytest.raises(ProtocolError):
            parse(obj)
