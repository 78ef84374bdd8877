"""The `Outputs` protobuf that wallet servers answer `blockchain.claimtrie.resolve` with
(types repository, v2/proto/result.proto)."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from appliance.lbry.claims import schema
from appliance.lbry.claims.schema import Enum, Field, Message
from appliance.lbry.claims.wire import DecodeError

F = Field
ERROR_CODE = Enum.from_list("Error.Code", ["UNKNOWN_CODE", "NOT_FOUND", "INVALID", "BLOCKED"])

OUTPUT = Message("Output")
BLOCKED = Message("Blocked", [F(1, "count", "uint32"), F(2, "channel", "message", OUTPUT)])
ERROR = Message("Error", [
    F(1, "code", "enum", ERROR_CODE),
    F(2, "text", "string"),
    F(3, "blocked", "message", BLOCKED),
])
CLAIM_META = Message("ClaimMeta", [
    F(1, "channel", "message", OUTPUT),
    F(2, "repost", "message", OUTPUT),
    F(3, "short_url", "string"),
    F(4, "canonical_url", "string"),
    F(5, "is_controlling", "bool"),
    F(6, "take_over_height", "uint32"),
    F(7, "creation_height", "uint32"),
    F(8, "activation_height", "uint32"),
    F(9, "expiration_height", "uint32"),
    F(10, "claims_in_channel", "uint32"),
    F(11, "reposted", "uint32"),
    F(20, "effective_amount", "uint64"),
    F(21, "support_amount", "uint64"),
])
OUTPUT.define([
    F(1, "tx_hash", "bytes"),  # internal byte order: the txid reversed
    F(2, "nout", "uint32"),
    F(3, "height", "uint32"),
    F(7, "claim", "message", CLAIM_META, oneof="meta"),
    F(15, "error", "message", ERROR, oneof="meta"),
])
OUTPUTS = Message("Outputs", [
    F(1, "txos", "message", OUTPUT, repeated=True),
    F(2, "extra_txos", "message", OUTPUT, repeated=True),
    F(3, "total", "uint32"),
    F(4, "offset", "uint32"),
    F(5, "blocked", "message", BLOCKED, repeated=True),
    F(6, "blocked_total", "uint32"),
])
del F


def decode_outputs(result: Any) -> dict[str, Any]:
    """The base64 text of a resolve result -> Outputs dict; ValueError with a one-line message."""
    if not isinstance(result, str):
        raise ValueError(f"resolve result is {type(result).__name__}, not base64 text")
    try:
        return schema.decode(OUTPUTS, base64.b64decode(result, validate=True))
    except (binascii.Error, DecodeError) as exc:
        raise ValueError(f"resolve result is not a base64 Outputs message: {exc}") from None


def encode_outputs(outputs: dict[str, Any]) -> str:
    return base64.b64encode(schema.encode(OUTPUTS, outputs)).decode()


def txid_of_output(output: dict[str, Any]) -> str:
    """The display txid of an Output (its tx_hash byte-reversed)."""
    return output.get("tx_hash", b"")[::-1].hex()
