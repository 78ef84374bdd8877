"""vectors/dht.json: the LBRY SDK's own datagrams decode, re-encode byte for byte, and our node answers
the SDK's requests the way the SDK's node did."""
import json

import pytest

from appliance.dht import bencode
from appliance.dht.handler import RequestHandler
from appliance.dht.messages import (
    ErrorReply,
    MessageError,
    Request,
    Response,
    compact_peer,
    decode_message,
    encode_message,
    parse_compact_peer,
    parse_contacts,
    parse_find_value,
)
from appliance.dht.peerstore import PeerStore
from appliance.dht.routing import RoutingTable
from appliance.dht.tokens import TokenManager, make_token
from tests.vectors import vectors_dir

VECTORS = json.loads((vectors_dir() / "dht.json").read_text())
DATAGRAMS = VECTORS["datagrams"]
BY_NAME = {d["name"]: d for d in DATAGRAMS}
NODES = VECTORS["nodes"]
STATE = VECTORS["server_state"]


def value(v, key=False):
    """The vectors' JSON notation -> Python: "b'..'" / "0x.." -> bytes, decimal-string keys -> int."""
    if isinstance(v, str):
        if key and v.isdigit():
            return int(v)
        if v.startswith("0x"):
            return bytes.fromhex(v[2:])
        assert v.startswith("b'") and v.endswith("'"), v
        return v[2:-1].encode()
    if isinstance(v, list):
        return [value(x) for x in v]
    if isinstance(v, dict):
        return {value(k, key=True): value(x) for k, x in v.items()}
    return v


def ordered(v):
    """Dicts as lists of pairs, so comparisons also check the key order."""
    if isinstance(v, dict):
        return [(k, ordered(x)) for k, x in v.items()]
    if isinstance(v, list):
        return [ordered(x) for x in v]
    return v


@pytest.mark.parametrize("dg", DATAGRAMS, ids=lambda d: d["name"])
def test_datagram_decodes_to_documented_structure_and_reencodes_exactly(dg):
    raw = bytes.fromhex(dg["hex"])
    assert len(raw) == dg["length"]
    expected = value(dg["decoded"])
    assert ordered(bencode.decode(raw)) == ordered(expected)
    assert bencode.encode(expected) == raw
    message = decode_message(raw)
    kind = {"request": Request, "response": Response, "error": ErrorReply}[dg["kind"]]
    assert isinstance(message, kind)
    assert encode_message(message) == raw  # our message layer writes the SDK's bytes too


def server_handler():
    server = NODES["server"]
    routing = RoutingTable(bytes.fromhex(server["node_id"]))
    for name in STATE["routing_table"]:
        contact = NODES[name]
        assert routing.add(bytes.fromhex(contact["node_id"]), contact["ip"], contact["udp_port"])
    tokens = TokenManager(secret=bytes.fromhex(STATE["token_secret_hex"]))
    return RequestHandler(bytes.fromhex(server["node_id"]), routing, PeerStore(), tokens)


def test_node_in_the_vector_state_answers_like_the_sdk_node():
    handler = server_handler()
    answered = 0
    for i, dg in enumerate(DATAGRAMS):
        if dg["kind"] != "request":
            continue
        expected = DATAGRAMS[i + 1]
        assert expected["to"] == dg["from"]
        if dg["name"] == "store_request_after_rotation":
            handler.tokens.rotate(bytes.fromhex(STATE["token_secret_after_rotation_hex"]))
        sender = NODES[dg["from"]]
        reply = handler.handle(decode_message(bytes.fromhex(dg["hex"])), (sender["ip"], sender["udp_port"]))
        data = encode_message(reply)
        if dg["name"] == "store_request_foreign_token":
            # A stock SDK node says OK because it never rotates its secret, so it never checks tokens.
            # We check them: the token was issued to another IP, so this store is refused, and the
            # refusal is the SDK's own "Invalid token" error, which SDK clients know to retry on.
            invalid = value(BY_NAME["error_response_invalid_token"]["decoded"])
            invalid[1] = value(expected["decoded"])[1]
            assert bencode.decode(data) == invalid
        else:
            assert data.hex() == expected["hex"], dg["name"]
        answered += 1
    assert answered == 11
    key = bytes.fromhex(STATE["blob_key"])
    assert [p.ip for p in handler.peers.get(key)] == ["1.2.3.7", "1.2.3.8"]  # the refused store left nothing


def test_previous_secret_still_valid_after_rotation():
    handler = server_handler()
    store = decode_message(bytes.fromhex(BY_NAME["store_request"]["hex"]))
    handler.tokens.rotate(bytes.fromhex(STATE["token_secret_after_rotation_hex"]))
    assert handler.handle(store, ("1.2.3.7", 4444)).result == b"OK"
    handler.tokens.rotate()
    reply = handler.handle(store, ("1.2.3.7", 4444))
    assert isinstance(reply, ErrorReply) and reply.message == b"Invalid token"


def contacts_of(interpretation):
    return [(bytes.fromhex(c["node_id"]), c["ip"], c["udp_port"]) for c in interpretation["contacts"]]


@pytest.mark.parametrize("name", [d["name"] for d in DATAGRAMS if "interpretation" in d])
def test_client_reads_what_the_sdk_client_reads(name):
    dg = BY_NAME[name]
    meaning = dg["interpretation"]
    result = decode_message(bytes.fromhex(dg["hex"])).result
    if name == "findNode_response":
        assert [tuple(c) for c in parse_contacts(result)] == contacts_of(meaning)
        return
    reply = parse_find_value(result, bytes.fromhex(STATE["blob_key"]))
    assert reply.token.hex() == meaning["token"]
    assert [tuple(c) for c in reply.contacts] == contacts_of(meaning)
    assert reply.pages == meaning["pages"]
    assert [(p.ip, p.tcp_port, p.node_id.hex()) for p in reply.peers] == \
        [(p["ip"], p["tcp_port"], p["node_id"]) for p in meaning["peers"]]


def test_token_and_compact_peer_examples():
    example = VECTORS["token"]["example"]
    assert make_token(bytes.fromhex(example["secret_hex"]), example["ip"]).hex() == example["token_hex"]
    peer = VECTORS["compact_peer"]["example"]
    raw = compact_peer(peer["ip"], peer["tcp_port"], bytes.fromhex(peer["node_id"]))
    assert raw.hex() == peer["hex"]
    assert parse_compact_peer(raw) == (peer["ip"], peer["tcp_port"], bytes.fromhex(peer["node_id"]))


@pytest.mark.parametrize("case", VECTORS["sdk_decoder_quirk"]["cases"], ids=lambda c: c["bencoded"])
def test_sdk_decoder_quirk_cases_decode_correctly_and_are_never_sent(case):
    decoded = bencode.decode(case["bencoded"].encode())
    assert decoded == value(case["correct_decoding"])
    assert not bencode.dicts_last(decoded)
    with pytest.raises(ValueError, match="last item"):
        encode_message(Response(b"r" * 20, b"n" * 48, decoded))


def test_bad_key_length_answer_matches_sdk_wording():
    handler = server_handler()
    dg = BY_NAME["findValue_request_bad_key"]
    reply = handler.handle(decode_message(bytes.fromhex(dg["hex"])), ("1.2.3.9", 4444))
    assert encode_message(reply).hex() == BY_NAME["error_response"]["hex"]
    with pytest.raises(MessageError):
        parse_find_value({b"contacts": []}, b"k" * 48)  # no token: unusable for a store
