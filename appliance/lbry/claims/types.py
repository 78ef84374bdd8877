"""LBRY's current claim schema (types repository, v2/proto/claim.proto), written as descriptors.

JSON display follows LBRY: file and sd hashes and public keys in hex, fee addresses in base58, referenced
claims as claim ids (the byte-reversed hex of the claim hash). Stream extensions (field 14) and repost
modifications are not modelled; they are skipped like any unknown field.
"""
from __future__ import annotations

from appliance.lbry.claims import base58
from appliance.lbry.claims.enums import COUNTRY, LANGUAGE, SCRIPT
from appliance.lbry.claims.schema import Enum, Field, Message

F = Field


def hex_bytes(value: bytes) -> str:
    return value.hex()


def claim_id_of(claim_hash: bytes) -> str:
    """LBRY shows a claim hash (as stored on chain) byte-reversed in hex: the claim id."""
    return claim_hash[::-1].hex()


def claim_hash_of(claim_id: str) -> bytes:
    """The inverse of claim_id_of; ValueError unless `claim_id` is 40 hex digits."""
    raw = bytes.fromhex(claim_id)
    if len(raw) != 20:
        raise ValueError(f"a claim id is 40 hex digits, got {len(claim_id)}")
    return raw[::-1]


FEE_CURRENCY = Enum.from_list("Fee.Currency", ["UNKNOWN_CURRENCY", "LBC", "BTC", "USD"])
LIST_TYPE = Enum("ClaimList.ListType", {0: "COLLECTION", 2: "DERIVATION"})

SOURCE = Message("Source", [
    F(1, "hash", "bytes", show=hex_bytes),  # SHA-384 of the whole file
    F(2, "name", "string"),
    F(3, "size", "uint64"),
    F(4, "media_type", "string"),
    F(5, "url", "string"),
    F(6, "sd_hash", "bytes", show=hex_bytes),  # SHA-384 of the stream's sd blob
    F(7, "bt_infohash", "bytes", show=hex_bytes),
])
FEE = Message("Fee", [
    F(1, "currency", "enum", FEE_CURRENCY),
    F(2, "address", "bytes", show=base58.encode),
    F(3, "amount", "uint64"),  # deweys for LBC, satoshis for BTC, cents for USD
])
IMAGE = Message("Image", [F(1, "width", "uint32"), F(2, "height", "uint32")])
AUDIO = Message("Audio", [F(1, "duration", "uint32")])
VIDEO = Message("Video", [F(1, "width", "uint32"), F(2, "height", "uint32"), F(3, "duration", "uint32"),
                          F(15, "audio", "message", AUDIO)])
SOFTWARE = Message("Software", [F(1, "os", "string")])
LANGUAGE_TAG = Message("Language", [
    F(1, "language", "enum", LANGUAGE),
    F(2, "script", "enum", SCRIPT),
    F(3, "region", "enum", COUNTRY),
])
LOCATION = Message("Location", [
    F(1, "country", "enum", COUNTRY),
    F(2, "state", "string"),
    F(3, "city", "string"),
    F(4, "code", "string"),
    F(5, "latitude", "sint32"),
    F(6, "longitude", "sint32"),
])
CLAIM_REFERENCE = Message("ClaimReference", [
    F(1, "claim_hash", "bytes", show=claim_id_of, json_name="claimId"),
])
CLAIM_LIST = Message("ClaimList", [
    F(1, "list_type", "enum", LIST_TYPE),
    F(2, "claim_references", "message", CLAIM_REFERENCE, repeated=True),
])
STREAM = Message("Stream", [
    F(1, "source", "message", SOURCE),
    F(2, "author", "string"),
    F(3, "license", "string"),
    F(4, "license_url", "string"),
    F(5, "release_time", "int64"),  # seconds since the UNIX epoch
    F(6, "fee", "message", FEE),
    F(10, "image", "message", IMAGE, oneof="type"),
    F(11, "video", "message", VIDEO, oneof="type"),
    F(12, "audio", "message", AUDIO, oneof="type"),
    F(13, "software", "message", SOFTWARE, oneof="type"),
])
CHANNEL = Message("Channel", [
    F(1, "public_key", "bytes", show=hex_bytes),
    F(2, "email", "string"),
    F(3, "website_url", "string"),
    F(4, "cover", "message", SOURCE),
    F(5, "featured", "message", CLAIM_LIST),
])
CLAIM = Message("Claim", [
    F(1, "stream", "message", STREAM, oneof="type"),
    F(2, "channel", "message", CHANNEL, oneof="type"),
    F(3, "collection", "message", CLAIM_LIST, oneof="type"),
    F(4, "repost", "message", CLAIM_REFERENCE, oneof="type"),
    F(8, "title", "string"),
    F(9, "description", "string"),
    F(10, "thumbnail", "message", SOURCE),
    F(11, "tags", "string", repeated=True),
    F(12, "languages", "message", LANGUAGE_TAG, repeated=True),
    F(13, "locations", "message", LOCATION, repeated=True),
])
CLAIM_TYPES = ("stream", "channel", "collection", "repost")
del F
