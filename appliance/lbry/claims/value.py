"""A claim's value as stored in a claim output: the framing (unsigned, or signed by a channel) around the
Claim protobuf, the legacy forms, and the JSON that `prism decode` prints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.lbry.claims import legacy, schema
from appliance.lbry.claims.types import CLAIM, CLAIM_TYPES, claim_hash_of, claim_id_of
from appliance.lbry.claims.wire import DecodeError

UNSIGNED, SIGNED = 0x00, 0x01
CHANNEL_HASH_SIZE, SIGNATURE_SIZE = 20, 64
_SIGNED_HEADER = 1 + CHANNEL_HASH_SIZE + SIGNATURE_SIZE


class ClaimError(ValueError):
    """A claim value that cannot be decoded; the message is one line."""


@dataclass
class ClaimValue:
    """A decoded claim: the Claim message as a dict (see appliance.lbry.claims.types) and its signature, if any."""

    claim: dict[str, Any]
    channel_hash: bytes | None = None  # the signing channel's claim hash (claim id byte-reversed)
    signature: bytes | None = None
    format: str = "v2"  # "v2", or "v1" (legacy protobuf) / "json" (the JSON era), migrated to v2

    @property
    def claim_type(self) -> str | None:
        """stream, channel, collection, repost, or None for a claim with no type set."""
        return next((t for t in CLAIM_TYPES if t in self.claim), None)

    @property
    def signing_channel_id(self) -> str | None:
        return claim_id_of(self.channel_hash) if self.channel_hash else None

    @property
    def sd_hash(self) -> str | None:
        """The stream's sd hash in hex; None for other claim types and streams without one."""
        raw = self.claim.get("stream", {}).get("source", {}).get("sd_hash")
        return raw.hex() if raw else None

    def to_json(self) -> dict[str, Any]:
        """Protobuf JSON of the Claim (LBRY's hex/base58/claim-id display for bytes), plus the signature."""
        out = schema.to_json(CLAIM, self.claim)
        if self.channel_hash is not None:
            out["signingChannelId"] = self.signing_channel_id
            out["signature"] = (self.signature or b"").hex()
        return out


def encode_value(claim: dict[str, Any], *, signing_channel_id: str | None = None,
                 signature: bytes | None = None) -> bytes:
    """The value bytes of a claim: 0x00 + Claim, or 0x01 + channel hash + 64-byte signature + Claim."""
    body = schema.encode(CLAIM, claim)
    if signing_channel_id is None:
        return bytes([UNSIGNED]) + body
    if signature is None or len(signature) != SIGNATURE_SIZE:
        raise ValueError(f"a signature is {SIGNATURE_SIZE} bytes")
    return bytes([SIGNED]) + claim_hash_of(signing_channel_id) + signature + body


def decode_value(data: bytes) -> ClaimValue:
    """Decode a claim value in any of its forms; ClaimError when it is none of them."""
    if not data:
        raise ClaimError("empty claim value")
    try:
        if data[0] == UNSIGNED:
            return ClaimValue(schema.decode(CLAIM, data[1:]))
        if data[0] == SIGNED:
            if len(data) < _SIGNED_HEADER:
                raise DecodeError(f"signed claim value shorter than its {_SIGNED_HEADER}-byte header")
            return ClaimValue(schema.decode(CLAIM, data[_SIGNED_HEADER:]), data[1:1 + CHANNEL_HASH_SIZE],
                              data[1 + CHANNEL_HASH_SIZE:_SIGNED_HEADER])
    except DecodeError as exc:
        raise ClaimError(f"invalid claim value: {exc}") from None
    # Anything else predates the current framing: a JSON claim starts with "{", a v1 protobuf with a tag.
    try:
        if data[:1] == b"{":
            migrated, kind = legacy.from_json(data), "json"
        else:
            migrated, kind = legacy.from_v1_protobuf(data), "v1"
    except DecodeError as exc:
        raise ClaimError(f"invalid claim value: first byte 0x{data[0]:02x} is not a current claim, "
                         f"and it is not a legacy claim either: {exc}") from None
    return ClaimValue(migrated.claim, migrated.channel_hash, migrated.signature, kind)


def decode_hex(text: str) -> ClaimValue:
    """decode_value of hex text (as `prism decode` takes it)."""
    try:
        data = bytes.fromhex(text.strip())
    except ValueError:
        raise ClaimError("the claim value is not hex") from None
    return decode_value(data)
