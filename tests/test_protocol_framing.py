"""JsonFramer: the "one JSON object, then raw bytes" reader of both TCP protocols."""
import json
import time

import pytest

from appliance.errors import ProtocolError, UnexpectedEOF, classify
from appliance.protocol.framing import InvalidData, InvalidJson, JsonFramer, RequestTooLarge


def feed_bytewise(framer: JsonFramer, data: bytes):
    got = None
    for i in range(len(data)):
        framer.feed(data[i:i + 1])
        got = framer.next_json()
        if got is not None:
            return got, i
    return got, None


def test_object_split_at_every_byte_is_found_exactly_at_its_end():
    msg = json.dumps({"requested_blob": "a}b{c]\"x\\\"y", "n": [1, {"k": "}"}]}).encode()
    framer = JsonFramer()
    got, at = feed_bytewise(framer, msg)
    assert got == {"requested_blob": 'a}b{c]"x\\"y', "n": [1, {"k": "}"}]}
    assert at == len(msg) - 1 and framer.buffered() == 0


def test_brace_inside_string_does_not_end_the_message():
    framer = JsonFramer()
    framer.feed(b'{"a": "}}}')
    assert framer.next_json() is None
    framer.feed(b'"}')
    assert framer.next_json() == {"a": "}}}"}


def test_json_then_raw_bytes_in_one_chunk_and_pipelined_messages():
    blob = bytes(range(256)) * 4 + b"{not json}"
    framer = JsonFramer()
    framer.feed(b'{"incoming_blob": {"length": 1034}}' + blob + b'{"next": 1}')
    assert framer.next_json() == {"incoming_blob": {"length": 1034}}
    assert framer.take_raw(len(blob) + 1000) is None  # not enough yet, nothing consumed
    assert framer.take_raw(len(blob)) == blob
    assert framer.next_json() == {"next": 1}
    assert framer.buffered() == 0


def test_raw_bytes_after_an_object_are_not_scanned_as_json():
    framer = JsonFramer(max_json=64)
    framer.feed(b'{"length": 1000}')
    assert framer.next_json() == {"length": 1000}
    framer.feed(b"x" * 1000)  # blob bytes: neither "Invalid data" nor "too large"
    assert framer.take_available(10) == b"x" * 10
    assert framer.take_raw(990) == b"x" * 990


def test_peer_mode_first_byte_must_be_brace():
    for bad in [b"hello dear server, I would like blobs. Please", b" {}", b"\n{}", b"[1]", b"}" * 100_000]:
        framer = JsonFramer()
        with pytest.raises(InvalidData, match="^Invalid data$") as err:
            framer.feed(bad)
        assert classify(err.value) == "invalid_peer_data"


def test_upload_mode_tolerates_leading_whitespace():
    framer = JsonFramer(require_brace=False)
    framer.feed(b"  \r\n\t")
    assert framer.buffered() == 0 and framer.next_json() is None
    framer.feed(b' {"version": 1}\n{"blob_hash": "h", ')
    assert framer.next_json() == {"version": 1}
    assert framer.next_json() is None
    framer.feed(b'"blob_size": 3}')
    assert framer.next_json() == {"blob_hash": "h", "blob_size": 3}


@pytest.mark.parametrize("bad", [b"[1, 2]", b'"str"', b"42", b"true", b"null", b"hello"])
def test_top_level_non_objects_are_refused_in_upload_mode(bad):
    framer = JsonFramer(require_brace=False)
    with pytest.raises(InvalidJson) as err:
        framer.feed(bad)
    assert "invalid json request" not in str(err.value)
    assert classify(err.value) in ("json_syntax", "invalid_character")


def test_invalid_json_messages_per_mode():
    peer = JsonFramer()
    peer.feed(b"{abc}")
    with pytest.raises(InvalidJson, match="invalid json request") as err:
        peer.next_json()
    assert classify(err.value) == "invalid_peer_json"
    upload = JsonFramer(require_brace=False)
    upload.feed(b'{"version": 1,}')
    with pytest.raises(InvalidJson) as err:
        upload.next_json()
    assert classify(err.value) == "json_syntax"
    for bad in [b'{"a": NaN}', b'{"a": "\xff"}', b'{"a": 1]']:
        framer = JsonFramer()
        with pytest.raises(ProtocolError):
            framer.feed(bad)
            framer.next_json()


def test_over_the_limit_without_any_closing_brace():
    framer = JsonFramer(max_json=1000)
    framer.feed(b'{"a": "')
    for _ in range(9):
        framer.feed(b"x" * 100)  # 907 bytes: still fine
    with pytest.raises(RequestTooLarge, match="^request is too large$") as err:
        framer.feed(b"x" * 100)
    assert classify(err.value) == "request_too_large"


def test_over_the_limit_with_a_complete_object():
    framer = JsonFramer(max_json=512)
    big = json.dumps({"requested_blobs": ["a" * 96] * 6}).encode()
    assert len(big) > 512
    with pytest.raises(RequestTooLarge):
        framer.feed(big)
    ok = JsonFramer(max_json=len(big))
    ok.feed(big)
    assert ok.next_json() == json.loads(big)


def test_deep_nesting_is_a_protocol_error_not_a_crash():
    for mode in (True, False):
        framer = JsonFramer(require_brace=mode)
        with pytest.raises(InvalidJson, match="nesting too deep"):
            framer.feed(b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")
    # deep but allowed nesting parses
    framer = JsonFramer()
    framer.feed(b'{"a": ' + b"[" * 400 + b"]" * 400 + b"}")
    assert framer.next_json() is not None


def test_scanning_is_incremental_not_quadratic():
    # 60 KB of string content fed 1 byte at a time: re-parsing the buffer each time would take minutes.
    framer = JsonFramer()
    framer.feed(b'{"a": "')
    started = time.monotonic()
    for _ in range(60_000):
        framer.feed(b"}")
        assert framer.next_json() is None
    framer.feed(b'"}')
    assert framer.next_json() == {"a": "}" * 60_000}
    assert time.monotonic() - started < 20  # generous bound; a quadratic scan needs far longer


def test_escape_split_across_chunks():
    framer = JsonFramer()
    framer.feed(b'{"a": "x\\')
    assert framer.next_json() is None
    framer.feed(b'"}')  # escaped quote, string still open
    assert framer.next_json() is None
    framer.feed(b'"}')
    assert framer.next_json() == {"a": 'x"}'}


def test_finish_at_eof():
    clean = JsonFramer()
    clean.feed(b'{"a": 1}')
    assert clean.next_json() == {"a": 1}
    clean.finish()  # nothing pending: returns
    peer = JsonFramer()
    peer.feed(b'{"a": ')
    with pytest.raises(InvalidJson, match="invalid json request"):
        peer.finish()
    upload = JsonFramer(require_brace=False)
    upload.feed(b'{"a": ')
    with pytest.raises(UnexpectedEOF):
        upload.finish()
