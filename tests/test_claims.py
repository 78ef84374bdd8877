"""Claim values: the protobuf codec, the current schema, signed/unsigned framing, legacy forms, JSON."""
import os

import pytest

from appliance.lbry.claims import ClaimError, decode_hex, decode_value, encode_value, schema, wire
from appliance.lbry.claims.legacy import V1_CLAIM
from appliance.lbry.claims.types import CLAIM, claim_hash_of

SD = bytes.fromhex("ab" * 48)
CHANNEL_ID = "0123456789abcdef0123456789abcdef01234567"

# --- published LBRY claim values (hex), with where each comes from ---
# lbryio/lbry.go, schema/stake/decode_test.go, TestDecodeClaim: an unsigned current-schema stream.
UNSIGNED_STREAM = (
    "000aa4010a8a010a30f1303989f58396694b0c5982c97f7e9d9435841d92aa13f4b80f671c27110c469babc4fbf4bd764155eaac089"
    "cfc49e8121454554d205045204d45524e45204c41472e6d703418cad0c8012209766964656f2f6d70343230c2c9389731e2a9568f66c"
    "78d703736a8c341015ada2e46f5dcc87aa6f08ab17c02df2121d9f6ef74055827a29dfc75801a044e6f6e6532040803180a5a0908b0"
    "01109001188102421054554d205045204d45524e45204c41474a0944657369206c6f636b62020801"
)
UNSIGNED_STREAM_SD = "c2c9389731e2a9568f66c78d703736a8c341015ada2e46f5dcc87aa6f08ab17c02df2121d9f6ef74055827a29dfc7580"

# lbryio/lbry-sdk, tests/unit/schema/test_claim_from_bytes.py, test_signed_claim_made_by_ytsync:
# a legacy v1 stream signed by a channel.
V1_SIGNED_STREAM = (
    "080110011aee04080112a604080410011a2b4865726520617265203520526561736f6e73204920e29da4e"
    "fb88f204e657874636c6f7564207c20544c4722920346696e64206f7574206d6f72652061626f7574204e"
    "657874636c6f75643a2068747470733a2f2f6e657874636c6f75642e636f6d2f0a0a596f752063616e206"
    "6696e64206d65206f6e20746865736520736f6369616c733a0a202a20466f72756d733a2068747470733a"
    "2f2f666f72756d2e6865617679656c656d656e742e696f2f0a202a20506f64636173743a2068747470733"
    "a2f2f6f6666746f706963616c2e6e65740a202a2050617472656f6e3a2068747470733a2f2f7061747265"
    "6f6e2e636f6d2f7468656c696e757867616d65720a202a204d657263683a2068747470733a2f2f7465657"
    "37072696e672e636f6d2f73746f7265732f6f6666696369616c2d6c696e75782d67616d65720a202a2054"
    "77697463683a2068747470733a2f2f7477697463682e74762f786f6e64616b0a202a20547769747465723"
    "a2068747470733a2f2f747769747465722e636f6d2f7468656c696e757867616d65720a0a2e2e2e0a6874"
    "7470733a2f2f7777772e796f75747562652e636f6d2f77617463683f763d4672546442434f535f66632a0"
    "f546865204c696e75782047616d6572321c436f7079726967687465642028636f6e746163742061757468"
    "6f722938004a2968747470733a2f2f6265726b2e6e696e6a612f7468756d626e61696c732f46725464424"
    "34f535f666352005a001a41080110011a30040e8ac6e89c061f982528c23ad33829fd7146435bf7a4cc22"
    "f0bff70c4fe0b91fd36da9a375e3e1c171db825bf5d1f32209766964656f2f6d70342a5c080110031a406"
    "2b2dd4c45e364030fbfad1a6fefff695ebf20ea33a5381b947753e2a0ca359989a5cc7d15e5392a0d354c"
    "0b68498382b2701b22c03beb8dcb91089031b871e72214feb61536c007cdf4faeeaab4876cb397feaf6b51"
)
V1_SIGNED_STREAM_SD = "040e8ac6e89c061f982528c23ad33829fd7146435bf7a4cc22f0bff70c4fe0b91fd36da9a375e3e1c171db825bf5d1f3"
V1_SIGNED_STREAM_CHANNEL = "feb61536c007cdf4faeeaab4876cb397feaf6b51"

# Same test: the certificate (v1 channel) of that channel, and its public key.
V1_CHANNEL = (
    "08011002225e0801100322583056301006072a8648ce3d020106052b8104000a034200043878b1edd4a13"
    "73149909ef03f4339f6da9c2bd2214c040fd2e530463ffe66098eca14fc70b50ff3aefd106049a815f595"
    "ed5a13eda7419ad78d9ed7ae473f17"
)
V1_CHANNEL_KEY = (
    "3056301006072a8648ce3d020106052b8104000a034200043878b1edd4a1373149909ef03f4339f6da9c2b"
    "d2214c040fd2e530463ffe66098eca14fc70b50ff3aefd106049a815f595ed5a13eda7419ad78d9ed7ae47"
    "3f17"
)

# Same file, test_unsigned_with_fee: a legacy v1 stream with a 15 LBC fee.
V1_STREAM_WITH_FEE = (
    "080110011ad6010801127c080410011a08727067206d69646922046d6964692a08727067206d696469322"
    "e437265617469766520436f6d6d6f6e73204174747269627574696f6e20342e3020496e7465726e617469"
    "6f6e616c38004224080110011a19553f00bc139bbf40de425f94d51fffb34c1bea6d9171cd374c2500007"
    "0414a0052005a001a54080110011a301f41eb0312aa7e8a5ce49349bc77d811da975833719d751523b19f"
    "123fc3d528d6a94e3446ccddb7b9329f27a9cad7e3221c6170706c69636174696f6e2f782d7a69702d636"
    "f6d70726573736564"
)
V1_STREAM_WITH_FEE_SD = (
    "1f41eb0312aa7e8a5ce49349bc77d811da975833719d751523b19f123fc3d528d6a94e3446ccddb7b9329f27a9cad7e3")
V1_STREAM_WITH_FEE_ADDRESS = "bJUQ9MxS9N6M29zsA5GTpVSDzsnPjMBBX9"

# Same file, test_old_json_schema_v2: a claim from the JSON era (schema 0.0.2).
JSON_V2 = (
    b'{"license": "Creative Commons Attribution 3.0 United States", "fee": {"LBC": {"amount'
    b'": 10, "address": "bFro33qBKxnL1AsjUU9N4AQHp9V62Nhc5L"}}, "ver": "0.0.2", "descriptio'
    b'n": "Force P0 State for Nividia Cards! (max mining performance)", "language": "en", "'
    b'author": "Mii", "title": "Nividia P0", "sources": {"lbry_sd_hash": "c5ffee0fa5168e166'
    b'81b519d9d85446e8d1d818a616bd55540aa7374d2321b51abf2ac3dae1443a03dadcc8f7affaa62"}, "n'
    b'sfw": false, "license_url": "https://creativecommons.org/licenses/by/3.0/us/legalcode'
    b'", "content-type": "application/x-msdownload"}'
)
JSON_V2_SD = "c5ffee0fa5168e16681b519d9d85446e8d1d818a616bd55540aa7374d2321b51abf2ac3dae1443a03dadcc8f7affaa62"


def test_varints_and_zigzag_round_trip():
    for n in (0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1):
        assert wire.read_varint(wire.write_varint(n), 0) == (n, len(wire.write_varint(n)))
    assert wire.write_varint(300) == b"\xac\x02"
    assert wire.write_varint(-1) == b"\xff" * 9 + b"\x01"  # negative int32/int64 take 10 bytes
    for n in (0, -1, 1, -2**31, 2**31 - 1):
        assert wire.zigzag_decode(wire.zigzag_encode(n)) == n
    with pytest.raises(wire.DecodeError):
        wire.read_varint(b"\x80\x80", 0)


def test_published_unsigned_stream_decodes_to_its_fields():
    value = decode_hex(UNSIGNED_STREAM)
    assert (value.format, value.claim_type, value.signing_channel_id) == ("v2", "stream", None)
    assert value.sd_hash == UNSIGNED_STREAM_SD
    doc = value.to_json()
    assert doc["title"] == "TUM PE MERNE LAG" and doc["description"] == "Desi lock"
    stream = doc["stream"]
    assert stream["source"]["sdHash"] == UNSIGNED_STREAM_SD
    assert stream["source"]["name"] == "TUM PE MERNE LAG.mp4" and stream["source"]["size"] == "3287114"
    assert stream["fee"] == {"currency": "USD", "amount": "10"}
    assert stream["video"] == {"width": 176, "height": 144, "duration": 257}
    assert doc["languages"] == [{"language": "en"}]
    # Our encoder writes the same bytes protoc-generated code wrote.
    assert encode_value(value.claim).hex() == UNSIGNED_STREAM


def test_signed_stream_built_with_our_encoder():
    signature = os.urandom(64)
    claim = {"stream": {"source": {"sd_hash": SD, "name": "movie.mp4", "size": 123456789, "media_type": "video/mp4"},
                        "author": "someone", "release_time": 1_700_000_000,
                        "fee": {"currency": "LBC", "address": bytes(25), "amount": 150_000_000},
                        "video": {"width": 1920, "height": 1080, "duration": 60}},
             "title": "A title", "tags": ["a", "b"],
             "languages": [{"language": "de", "script": "Latn", "region": "AT"}],
             "locations": [{"country": "US", "state": "NJ", "latitude": -40_123_456}]}
    raw = encode_value(claim, signing_channel_id=CHANNEL_ID, signature=signature)
    assert raw[0] == 1 and raw[1:21] == bytes.fromhex(CHANNEL_ID)[::-1] and raw[21:85] == signature
    value = decode_value(raw)
    assert value.claim_type == "stream" and value.sd_hash == SD.hex()
    assert value.signing_channel_id == CHANNEL_ID and value.signature == signature
    doc = value.to_json()
    assert doc["signingChannelId"] == CHANNEL_ID and doc["signature"] == signature.hex()
    assert doc["stream"]["releaseTime"] == "1700000000" and doc["stream"]["source"]["size"] == "123456789"
    assert doc["stream"]["fee"] == {"currency": "LBC", "address": "1" * 25, "amount": "150000000"}
    assert doc["languages"] == [{"language": "de", "script": "Latn", "region": "AT"}]
    assert doc["locations"] == [{"country": "US", "state": "NJ", "latitude": -40123456}]
    assert doc["tags"] == ["a", "b"]


def test_channel_repost_and_collection():
    key = os.urandom(33)
    channel = decode_value(encode_value({"channel": {"public_key": key, "email": "a@b.c",
                                                     "featured": {"claim_references": [
                                                         {"claim_hash": claim_hash_of(CHANNEL_ID)}]}},
                                         "title": "My channel", "thumbnail": {"url": "https://x/y.png"}}))
    assert channel.claim_type == "channel" and channel.sd_hash is None
    doc = channel.to_json()
    assert doc["channel"]["publicKey"] == key.hex() and doc["channel"]["email"] == "a@b.c"
    assert doc["channel"]["featured"] == {"claimReferences": [{"claimId": CHANNEL_ID}]}
    assert doc["thumbnail"] == {"url": "https://x/y.png"}

    repost = decode_value(encode_value({"repost": {"claim_hash": claim_hash_of(CHANNEL_ID)}, "title": "again"},
                                       signing_channel_id=CHANNEL_ID, signature=bytes(64)))
    assert repost.claim_type == "repost" and repost.sd_hash is None
    assert repost.to_json()["repost"] == {"claimId": CHANNEL_ID}

    collection = decode_value(encode_value({"collection": {"claim_references": [{"claim_hash": b"\x01" * 20}] * 2}}))
    assert collection.claim_type == "collection"
    assert collection.to_json()["collection"] == {"claimReferences": [{"claimId": "01" * 20}] * 2}


def test_published_legacy_v1_values_migrate():
    signed = decode_hex(V1_SIGNED_STREAM)
    assert (signed.format, signed.claim_type, signed.sd_hash) == ("v1", "stream", V1_SIGNED_STREAM_SD)
    assert signed.signing_channel_id == V1_SIGNED_STREAM_CHANNEL and len(signed.signature) == 64
    doc = signed.to_json()
    assert doc["title"] == "Here are 5 Reasons I ❤️ Nextcloud | TLG"
    assert doc["stream"]["author"] == "The Linux Gamer" and doc["stream"]["source"]["mediaType"] == "video/mp4"
    assert doc["thumbnail"] == {"url": "https://berk.ninja/thumbnails/FrTdBCOS_fc"}

    channel = decode_hex(V1_CHANNEL)
    assert channel.claim_type == "channel" and channel.to_json()["channel"]["publicKey"] == V1_CHANNEL_KEY

    fee = decode_hex(V1_STREAM_WITH_FEE)
    assert fee.sd_hash == V1_STREAM_WITH_FEE_SD
    assert fee.to_json()["stream"]["fee"] == {"currency": "LBC", "address": V1_STREAM_WITH_FEE_ADDRESS,
                                              "amount": "1500000000"}


def test_legacy_v1_built_with_our_encoder():
    old = {"version": 1, "claimType": 1, "stream": {
        "version": 1,
        "metadata": {"version": 4, "language": 48, "title": "t", "description": "d", "author": "a",
                     "license": "l", "nsfw": True, "fee": {"version": 1, "currency": 3, "address": b"\0" * 25,
                                                            "amount": 0.4},
                     "thumbnail": "https://thumb"},
        "source": {"version": 1, "sourceType": 1, "source": SD, "contentType": "image/png"}}}
    value = decode_value(schema.encode(V1_CLAIM, old))
    assert value.format == "v1" and value.sd_hash == SD.hex() and value.channel_hash is None
    doc = value.to_json()
    assert doc["languages"] == [{"language": "fr"}] and doc["tags"] == ["mature"]
    assert doc["stream"]["fee"]["amount"] == "40"  # USD cents; the float32 0.4 is not rounded up to 41
    assert doc["thumbnail"] == {"url": "https://thumb"} and doc["stream"]["source"]["mediaType"] == "image/png"


def test_json_era_claim_migrates():
    value = decode_value(JSON_V2)
    assert (value.format, value.sd_hash) == ("json", JSON_V2_SD)
    doc = value.to_json()
    assert doc["title"] == "Nividia P0" and doc["stream"]["author"] == "Mii"
    assert doc["stream"]["fee"] == {"currency": "LBC", "address": "bFro33qBKxnL1AsjUU9N4AQHp9V62Nhc5L",
                                    "amount": "1000000000"}


@pytest.mark.parametrize("value,message", [
    (b"", "empty claim value"),
    (b"\x01" + bytes(30), "shorter than its 85-byte header"),
    (b"\x00\x0a\x05\x01", "truncated"),
    (b"\x00\x42\x02\xff\xfe", "invalid UTF-8"),
    (b"\x08\x01", "missing required field"),
    (b"{not json", "not a JSON claim"),
    (b"\x07garbage", "is not a current claim"),
])
def test_bad_values_are_one_line_errors(value, message):
    with pytest.raises(ClaimError, match=message) as info:
        decode_value(value)
    assert "\n" not in str(info.value)


def test_decode_hex_rejects_non_hex():
    with pytest.raises(ClaimError, match="not hex"):
        decode_hex("zz")


def test_oneof_last_member_wins_and_unknown_fields_are_skipped():
    stream = schema.encode(CLAIM, {"stream": {"author": "x"}})
    channel = schema.encode(CLAIM, {"channel": {"email": "y"}})
    unknown = wire.length_delimited(99, b"future field")
    assert schema.decode(CLAIM, stream + unknown + channel) == {"channel": {"email": "y"}}
    # A singular sub-message seen twice is merged.
    twice = schema.encode(CLAIM, {"stream": {"author": "x"}}) + schema.encode(CLAIM, {"stream": {"license": "l"}})
    assert schema.decode(CLAIM, twice) == {"stream": {"author": "x", "license": "l"}}


def test_unknown_enum_numbers_render_as_numbers():
    value = decode_value(encode_value({"stream": {"fee": {"currency": 9}}}))
    assert value.to_json()["stream"]["fee"] == {"currency": 9}
