"""Claims from before the current schema, migrated to it the way the LBRY SDK reads them:
the v1 protobuf (types repository, v1/proto/*.proto, proto2) and the older JSON claims."""
from __future__ import annotations

import json
from decimal import ROUND_UP, Decimal
from typing import Any

from appliance.lbry.claims import base58, schema
from appliance.lbry.claims.enums import LANGUAGE
from appliance.lbry.claims.schema import Enum, Field, Message
from appliance.lbry.claims.types import FEE_CURRENCY
from appliance.lbry.claims.wire import DecodeError

F = Field
_VERSION = Enum("Version", {0: "UNKNOWN_VERSION", 1: "_0_0_1"})
METADATA_VERSION = Enum.from_list("Metadata.Version", ["UNKNOWN_VERSION", "_0_0_1", "_0_0_2", "_0_0_3", "_0_1_0"])
CLAIM_TYPE = Enum.from_list("Claim.ClaimType", ["UNKNOWN_CLAIM_TYPE", "streamType", "certificateType"])
SOURCE_TYPE = Enum.from_list("Source.SourceTypes", ["UNKNOWN_SOURCE_TYPE", "lbry_sd_hash"])
KEY_TYPE = Enum.from_list("KeyType", ["UNKNOWN_PUBLIC_KEY_TYPE", "NIST256p", "NIST384p", "SECP256k1"])

V1_FEE = Message("Fee", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "currency", "enum", FEE_CURRENCY, required=True),  # same numbering as the current Fee.Currency
    F(3, "address", "bytes", required=True),
    F(4, "amount", "float", required=True),  # in LBC / BTC / USD, not in base units
])
V1_METADATA = Message("Metadata", proto2=True, fields=[
    F(1, "version", "enum", METADATA_VERSION, required=True),
    F(2, "language", "enum", LANGUAGE, required=True),  # same numbering as the current Language
    F(3, "title", "string", required=True),
    F(4, "description", "string", required=True),
    F(5, "author", "string", required=True),
    F(6, "license", "string", required=True),
    F(7, "nsfw", "bool", required=True),
    F(8, "fee", "message", V1_FEE),
    F(9, "thumbnail", "string"),
    F(10, "preview", "string"),
    F(11, "licenseUrl", "string"),
])
V1_SOURCE = Message("Source", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "sourceType", "enum", SOURCE_TYPE, required=True),
    F(3, "source", "bytes", required=True),  # the sd hash
    F(4, "contentType", "string", required=True),
])
V1_STREAM = Message("Stream", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "metadata", "message", V1_METADATA, required=True),
    F(3, "source", "message", V1_SOURCE, required=True),
])
V1_CERTIFICATE = Message("Certificate", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "keyType", "enum", KEY_TYPE, required=True),
    F(4, "publicKey", "bytes", required=True),
])
V1_SIGNATURE = Message("Signature", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "signatureType", "enum", KEY_TYPE, required=True),
    F(3, "signature", "bytes", required=True),
    F(4, "certificateId", "bytes", required=True),  # the channel's claim id, in display byte order
])
V1_CLAIM = Message("Claim", proto2=True, fields=[
    F(1, "version", "enum", _VERSION, required=True),
    F(2, "claimType", "enum", CLAIM_TYPE, required=True),
    F(3, "stream", "message", V1_STREAM),
    F(4, "certificate", "message", V1_CERTIFICATE),
    F(5, "publisherSignature", "message", V1_SIGNATURE),
])
del F

_COIN = Decimal(100_000_000)  # deweys per LBC, satoshis per BTC


def fee_base_units(currency: str, amount: Decimal) -> int:
    """A fee amount in LBC/BTC/USD as the current schema stores it: deweys, satoshis or cents (cents are
    rounded up, as the SDK does)."""
    if currency == "USD":
        return int(amount.quantize(Decimal("0.01"), ROUND_UP) * 100)
    return int(amount * _COIN)


def _fee(currency: int | str, address: bytes, amount: Decimal) -> dict[str, Any]:
    name = FEE_CURRENCY.name_of(currency) if isinstance(currency, int) else currency
    if name not in ("LBC", "BTC", "USD"):
        raise DecodeError(f"unsupported fee currency {name}")
    return {"currency": FEE_CURRENCY.value_of(name), "address": address, "amount": fee_base_units(name, amount)}


class Migrated:
    """A legacy claim in the current form, with the signature it carried (if any)."""

    def __init__(self, claim: dict[str, Any], channel_hash: bytes | None = None, signature: bytes | None = None):
        self.claim = claim
        self.channel_hash = channel_hash
        self.signature = signature


def from_v1_protobuf(data: bytes) -> Migrated:
    """Parse a v1 protobuf claim and migrate it; DecodeError when it is not one."""
    old = schema.decode(V1_CLAIM, data)
    claim_type = old["claimType"]
    if claim_type == 2:
        if "certificate" not in old:
            raise DecodeError("certificate claim without a certificate")
        return Migrated({"channel": {"public_key": old["certificate"]["publicKey"]}})
    if claim_type != 1 or "stream" not in old:
        raise DecodeError(f"legacy claim of unknown type {CLAIM_TYPE.name_of(claim_type)}")
    meta, source = old["stream"]["metadata"], old["stream"]["source"]
    stream: dict[str, Any] = {
        "source": {"sd_hash": source["source"], "media_type": source["contentType"]},
        "author": meta["author"], "license": meta["license"], "license_url": meta.get("licenseUrl", ""),
    }
    claim: dict[str, Any] = {"stream": stream, "title": meta["title"], "description": meta["description"]}
    if meta.get("thumbnail"):
        claim["thumbnail"] = {"url": meta["thumbnail"]}
    if meta["language"]:
        claim["languages"] = [{"language": meta["language"]}]
    if meta["nsfw"]:
        claim["tags"] = ["mature"]
    if "fee" in meta:
        fee = meta["fee"]
        # A float32 on the wire: take the shortest decimal that reads back as it (0.4, not 0.4000000059...),
        # so that a USD fee is not rounded up a cent.
        amount = Decimal(repr(schema.float32_shortest(fee["amount"])))
        stream["fee"] = _fee(fee["currency"], fee["address"], amount)
    signature = old.get("publisherSignature")
    if signature:
        # v1 stores the channel's claim id in display order; signed values store the claim hash (reversed).
        return Migrated(claim, signature["certificateId"][::-1], signature["signature"])
    return Migrated(claim)


def from_json(data: bytes) -> Migrated:
    """Migrate a claim from the JSON era (schema versions 0.0.1 to 0.0.3); DecodeError when it is not one."""
    try:
        value = json.loads(data)
        sd_hash = bytes.fromhex(value["sources"]["lbry_sd_hash"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a JSON claim with sources.lbry_sd_hash ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise DecodeError("not a JSON claim")

    def text(key: str) -> str:
        item = value.get(key) or ""
        return item if isinstance(item, str) else str(item)

    media_type = text("content_type") or text("content-type") or "application/octet-stream"
    stream: dict[str, Any] = {"source": {"sd_hash": sd_hash, "media_type": media_type}, "author": text("author"),
                              "license": text("license"), "license_url": text("license_url")}
    claim: dict[str, Any] = {"stream": stream, "title": text("title"), "description": text("description")}
    if text("thumbnail"):
        claim["thumbnail"] = {"url": text("thumbnail")}
    language = text("language")
    language = "en" if language.lower() == "english" else language
    if language in LANGUAGE.values and language != "UNKNOWN_LANGUAGE":
        claim["languages"] = [{"language": LANGUAGE.value_of(language)}]
    if value.get("nsfw") is True:
        claim["tags"] = ["mature"]
    fee = value.get("fee")
    if isinstance(fee, dict) and fee:
        currency, details = next(iter(fee.items()))
        try:
            stream["fee"] = _fee(currency, base58.decode(details["address"]), Decimal(str(details["amount"])))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise DecodeError(f"invalid fee in JSON claim: {exc}") from None
    return Migrated(claim)
