"""Reflector upload protocol messages (TCP 5566), both sides; pure functions, no sockets.

Every message is one JSON object (framed with `JsonFramer(require_brace=False)`); after a `true`
send answer the client writes exactly the announced number of raw bytes.

    C: {"version": 1}                                 S: {"version":1}
    C: {"sd_blob_hash": H, "sd_blob_size": N}         S: {"send_sd_blob":B[,"needed_blobs":[...]]}
    C: <N bytes, if B>                                S: {"received_sd_blob":B}
    C: {"blob_hash": H, "blob_size": N}               S: {"send_blob":B}
    C: <N bytes, if B>                                S: {"received_blob":B}

Server side: parse_handshake(obj) -> version; encode_handshake_response(v); parse_send_request(obj)
-> SendRequest; encode_sd_response(send, needed_blobs); encode_blob_response(send);
encode_receipt(is_sd, ok). Server replies are compact JSON, as reflector.go writes them.

Client side (the LBRY SDK's bytes: sorted keys, default separators): encode_handshake(version);
encode_sd_request(h, n); encode_blob_request(h, n); parse_handshake_reply(obj) -> version;
parse_sd_reply(obj) -> SdReply; parse_blob_reply(obj) -> bool; parse_receipt(obj, is_sd) -> bool.

`needed_blobs`: our server leaves the key out when the list is empty (reflector.go's form). The SDK
server instead sends `"send_sd_blob": false, "needed_blobs": []` for "I have everything"; the SDK
client and ours read both forms the same way: with `send_sd_blob` false, a missing or empty list means
nothing more to send; after an accepted sd blob, a missing or empty list means "send every blob".
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.blob import MAX_BLOB_SIZE
from appliance.errors import ProtocolError

__all__ = [
    "VERSION_0", "VERSION_1", "SUPPORTED_VERSIONS", "SendRequest", "SdReply", "parse_handshake",
    "encode_handshake_response", "parse_send_request", "encode_sd_response", "encode_blob_response",
    "encode_receipt", "encode_handshake", "encode_sd_request", "encode_blob_request", "parse_handshake_reply",
    "parse_sd_reply", "parse_blob_reply", "parse_receipt",
]

VERSION_0 = 0  # the SDK's REFLECTOR_V1; reflector.go's client sends it
VERSION_1 = 1  # the SDK's REFLECTOR_V2; the SDK client sends it and accepts nothing else
SUPPORTED_VERSIONS = (VERSION_0, VERSION_1)


def _compact(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sdk(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- server side ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SendRequest:
    hash: str
    size: int
    is_sd: bool


def parse_handshake(obj: dict) -> int:
    """The client's protocol version (0 or 1); ProtocolError with reflector.go's messages otherwise."""
    version = obj.get("version") if isinstance(obj, dict) else None
    if version is None:
        raise ProtocolError("handshake is missing protocol version")
    if not _is_int(version) or version not in SUPPORTED_VERSIONS:
        raise ProtocolError("protocol version not supported")
    return version


def encode_handshake_response(version: int) -> bytes:
    return _compact({"version": version})


def parse_send_request(obj: dict) -> SendRequest:
    """An sd request iff `sd_blob_hash` is present and non-empty; checks in reflector.go's order.

    The hash format is not checked here (reflector.go does not either); the server checks it with
    blob.check_hash before touching a store.
    """
    if not isinstance(obj, dict):
        raise ProtocolError("invalid json: send request is not an object")
    sd_hash = obj.get("sd_blob_hash")
    is_sd = isinstance(sd_hash, str) and sd_hash != ""
    hash_key, size_key = ("sd_blob_hash", "sd_blob_size") if is_sd else ("blob_hash", "blob_size")
    hash_, size = obj.get(hash_key), obj.get(size_key)
    if hash_ is not None and not isinstance(hash_, str):
        raise ProtocolError(f"invalid json: {hash_key} must be a string")
    if size is not None and not _is_int(size):
        raise ProtocolError(f"invalid json: {size_key} must be an integer")
    if not hash_:
        raise ProtocolError("blob hash is empty")
    if size is not None and size > MAX_BLOB_SIZE:
        raise ProtocolError(f"blob must be at most {MAX_BLOB_SIZE} bytes")
    if not size:
        raise ProtocolError("0-byte blob received")
    if size < 0:
        raise ProtocolError(f"invalid blob size {size}")
    return SendRequest(hash_, size, is_sd)


def encode_sd_response(send: bool, needed_blobs: list[str] | None = None) -> bytes:
    """`{"send_sd_blob":B}`, plus `needed_blobs` only when the list is non-empty."""
    obj: dict = {"send_sd_blob": bool(send)}
    if needed_blobs:
        obj["needed_blobs"] = list(needed_blobs)
    return _compact(obj)


def encode_blob_response(send: bool) -> bytes:
    return _compact({"send_blob": bool(send)})


def encode_receipt(is_sd: bool, ok: bool) -> bytes:
    return _compact({"received_sd_blob" if is_sd else "received_blob": bool(ok)})


# -- client side ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SdReply:
    send: bool
    needed_blobs: list[str] | None  # None: the key was absent


def encode_handshake(version: int = VERSION_1) -> bytes:
    return _sdk({"version": version})


def encode_sd_request(hash_: str, size: int) -> bytes:
    return _sdk({"sd_blob_hash": hash_, "sd_blob_size": size})


def encode_blob_request(hash_: str, size: int) -> bytes:
    return _sdk({"blob_hash": hash_, "blob_size": size})


def _bool_field(obj: dict, key: str) -> bool:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, bool):
        raise ProtocolError(f"invalid reflector reply: expected a boolean {key!r}, got {json.dumps(obj)[:200]}")
    return value


def parse_handshake_reply(obj: dict) -> int:
    """The server's version; we speak 0 and 1 identically, so either is accepted."""
    version = obj.get("version") if isinstance(obj, dict) else None
    if version is None:
        raise ProtocolError("invalid handshake reply: no protocol version")
    if not _is_int(version) or version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"server speaks unsupported protocol version {version!r}")
    return version


def parse_sd_reply(obj: dict) -> SdReply:
    send = _bool_field(obj, "send_sd_blob")
    needed = obj.get("needed_blobs")
    if needed is not None and not (isinstance(needed, list) and all(isinstance(h, str) for h in needed)):
        raise ProtocolError("invalid reflector reply: needed_blobs must be a list of strings")
    return SdReply(send, needed)


def parse_blob_reply(obj: dict) -> bool:
    return _bool_field(obj, "send_blob")


def parse_receipt(obj: dict, is_sd: bool) -> bool:
    return _bool_field(obj, "received_sd_blob" if is_sd else "received_blob")
