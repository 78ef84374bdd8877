"""Strict bencode and the DHT message layer: both key forms in, the SDK form out, both store forms."""
import pytest

from appliance.dht import bencode
from appliance.dht.handler import RequestHandler
from appliance.dht.messages import (
    MAX_DATAGRAM,
    DatagramTooLarge,
    ErrorReply,
    MessageError,
    Request,
    Response,
    decode_message,
    encode_message,
    parse_store_args,
    request_args,
)
from appliance.dht.peerstore import PeerStore
from appliance.dht.routing import RoutingTable
from appliance.dht.tokens import TokenManager

RPC, NID, KEY = b"r" * 20, b"n" * 48, b"k" * 48


@pytest.mark.parametrize("raw", [
    b"i1ei2e",  # trailing bytes
    b"i01e", b"i-0e", b"ie", b"i-e", b"i1", b"i1.5e",  # bad integers
    b"01:a", b"-1:a", b"5:abc", b"2a:ab", b":", b"3",  # bad lengths
    b"l", b"d", b"d1:a", b"li1e", b"x", b"",  # truncated or unknown
    b"dle1:ae",  # a list is not a dict key
    b"d1:ai1e1:ai2ee",  # duplicate key
    b"l" * 40 + b"e" * 40,  # nested too deep
    b"i" + b"9" * 100 + b"e",  # absurdly long integer
])
def test_decoder_rejects_malformed_input(raw):
    with pytest.raises(bencode.DecodeError):
        bencode.decode(raw)


def test_decoder_accepts_integer_and_string_keys_and_unsorted_dicts():
    assert bencode.decode(b"di0ei5e1:xi-3ee") == {0: 5, b"x": -3}
    assert bencode.decode(b"d1:bi1e1:ai2ee") == {b"b": 1, b"a": 2}
    assert bencode.decode(b"0:") == b""
    assert bencode.decode(b"l" * 10 + b"e" * 10) == [[[[[[[[[[]]]]]]]]]]


def test_encoder_sorts_keys_as_raw_bytes_and_writes_integer_keys():
    assert bencode.encode({b"b": 1, "a": [b"x", "y"], b"\xf4": 0}) == b"d1:al1:x1:ye1:bi1e1:\xf4i0ee"
    assert bencode.encode({3: b"pong", 0: 1}) == b"di0ei1ei3e4:ponge"
    with pytest.raises(TypeError):
        bencode.encode(True)
    with pytest.raises(TypeError):
        bencode.encode({"a": 1, b"a": 2})


def test_lbry_go_string_keys_are_accepted_and_answered_in_sdk_form():
    ping = bencode.encode({b"0": 0, b"1": RPC, b"2": NID, b"3": b"ping", b"4": []})
    assert ping.startswith(b"d1:0i")
    message = decode_message(ping)
    assert message == Request(RPC, NID, b"ping", [])
    assert encode_message(Response(RPC, NID, b"pong")).startswith(b"di0ei1e")
    error = bencode.encode({b"0": 2, b"1": RPC, b"2": NID, b"3": b"invalid-token", b"4": [b"bad", b"token"]})
    assert decode_message(error) == ErrorReply(RPC, NID, b"invalid-token", b"bad token")


@pytest.mark.parametrize("fields", [
    {0: 3, 1: RPC, 2: NID, 3: b"ping"},  # unknown type
    {0: 0, 1: b"short", 2: NID, 3: b"ping"},  # rpc id not 20 bytes
    {0: 0, 1: RPC, 2: b"n" * 20, 3: b"ping"},  # node id not 48 bytes
    {0: 0, 1: RPC, 2: NID},  # no method
    {0: 0, 1: RPC, 2: NID, 3: b"ping", 4: b"notalist"},
    {0: 0, 1: RPC, 2: NID, 3: b"ping", b"0": 0},  # key 0 twice (int and string)
])
def test_malformed_messages_are_rejected(fields):
    with pytest.raises(ValueError):
        decode_message(bencode.encode(fields))


def test_outgoing_datagrams_are_capped_at_1400_bytes():
    with pytest.raises(DatagramTooLarge):
        encode_message(Response(RPC, NID, b"x" * MAX_DATAGRAM))
    with pytest.raises(MessageError):
        decode_message(b"d" + b"x" * MAX_DATAGRAM)


def test_sdk_request_arguments_end_with_the_options_dict():
    assert request_args(b"ping") == [{b"protocolVersion": 1}]
    assert request_args(b"findValue", KEY, page=2) == [KEY, {b"p": 2, b"protocolVersion": 1}]
    assert encode_message(Request(RPC, NID, b"store", request_args(b"store", KEY, b"t" * 48, 3333, NID, 0)))


def test_store_argument_forms():
    sdk = parse_store_args([KEY, b"t" * 48, 3333, NID, 0, {b"protocolVersion": 1}])
    assert (sdk.blob_hash, sdk.token, sdk.tcp_port, sdk.legacy) == (KEY, b"t" * 48, 3333, False)
    legacy = parse_store_args([KEY, {b"lbryid": b"l" * 48, b"port": 3333, b"token": b"t" * 32}, NID, 0])
    assert (legacy.lbryid, legacy.tcp_port, legacy.token, legacy.legacy) == (b"l" * 48, 3333, b"t" * 32, True)
    for bad in ([KEY[:20], b"t", 3333, NID, 0], [KEY, b"t", 0, NID, 0], [KEY, b"t", 70000, NID, 0], [KEY],
                [KEY, {b"lbryid": b"short", b"port": 1, b"token": b"t"}, NID, 0],
                [KEY, {b"lbryid": b"l" * 48, b"port": 1, b"token": b"t"}, NID, 7]):
        with pytest.raises(MessageError):
            parse_store_args(bad)


def _handler():
    own = b"\x01" * 48
    return RequestHandler(own, RoutingTable(own), PeerStore(), TokenManager())


def test_legacy_store_from_lbry_go_is_accepted_with_a_valid_token():
    handler = _handler()
    token = handler.tokens.make("127.0.0.1")
    value = {b"lbryid": b"l" * 48, b"port": 5567, b"token": token}
    args = [KEY, value, b"l" * 48, 0]
    reply = handler.handle(Request(RPC, NID, b"store", args), ("127.0.0.1", 4444))
    assert reply.result == b"OK"
    assert [(p.ip, p.tcp_port, p.node_id) for p in handler.peers.get(KEY)] == [("127.0.0.1", 5567, b"l" * 48)]
    forged = handler.handle(Request(RPC, NID, b"store", [KEY, {**value, b"token": b"x" * 48}, NID, 0]),
                            ("127.0.0.1", 4444))
    assert isinstance(forged, ErrorReply) and forged.message == b"Invalid token"


def test_requests_from_our_own_id_and_unknown_methods():
    handler = _handler()
    assert handler.handle(Request(RPC, handler.node_id, b"ping", []), ("127.0.0.1", 1)) is None
    reply = handler.handle(Request(RPC, NID, b"bogus", []), ("127.0.0.1", 1))
    assert isinstance(reply, ErrorReply) and reply.exc_type == b"<class 'ValueError'>"


def test_find_value_pages_hold_at_most_8_peers_and_name_us_for_held_keys():
    handler = _handler()
    handler.self_peer = lambda: ("10.0.0.1", 3333)
    handler.holds = {KEY}.__contains__
    token = handler.tokens.make("127.0.0.1")
    for i in range(12):
        node = bytes([i + 2]) * 48
        assert handler.handle(Request(RPC, node, b"store", [KEY, token, 4000 + i, node, 0]),
                              ("127.0.0.1", 5000 + i)).result == b"OK"
    pages = []
    for page in range(3):
        reply = handler.handle(Request(RPC, NID, b"findValue", request_args(b"findValue", KEY, page=page)),
                               ("127.0.0.1", 4444))
        encode_message(reply)
        assert reply.result[b"p"] == 2
        pages.append(reply.result.get(KEY, []))
    assert [len(p) for p in pages] == [8, 4, 0]  # 12 peers; we are not added: K holders already
    small = _handler()
    small.self_peer, small.holds = handler.self_peer, handler.holds
    reply = small.handle(Request(RPC, NID, b"findValue", request_args(b"findValue", KEY)), ("127.0.0.1", 4444))
    assert reply.result[b"p"] == 1 and reply.result[KEY][0][:6] == bytes([10, 0, 0, 1, 0x0D, 0x05])
