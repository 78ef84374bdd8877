"""LBRY TCP peer protocol ("blob exchange") messages, both sides; pure functions, no sockets.

A request is one JSON object (framed with `JsonFramer(require_brace=True)`); a response is one JSON
object immediately followed by the raw blob bytes when it announces an incoming blob.

Server side:
    req = parse_request(obj)                    # PeerRequest; ProtocolError on wrong types
    encode_response(available_blobs=[...], payment_rate=rate_reply(req.blob_data_payment_rate),
                    incoming_blob=incoming_found(h, n) | INCOMING_NOT_FOUND | None) -> bytes
    check_requested_blob(h)                     # "Invalid blob hash length" / "invalid blob hash"

Client side:
    encode_request(h) -> bytes                   # the LBRY SDK's exact request (295 bytes)
    encode_availability_requests(hashes) -> list[bytes]   # batches that stay under 512 bytes
    parse_response(obj) -> PeerResponse | None   # None: not a response (a key outside RESPONSE_KEYS)
    accept_blob(resp, h, expected_length) -> int # the length to read; BlobNotFound / ProtocolError

Responses keep reflector.go's key order (lbrycrd_address, available_blobs, blob_data_payment_rate,
incoming_blob) in compact JSON; the LBRY SDK client parses JSON, so any order works for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.blob import MAX_BLOB_SIZE, is_valid_hash
from appliance.errors import BlobNotFound, ProtocolError

__all__ = [
    "LBRYCRD_ADDRESS", "RATE_ACCEPTED", "RATE_TOO_LOW", "RATE_UNSET", "RESPONSE_KEYS", "MAX_CLIENT_REQUEST",
    "INCOMING_NOT_FOUND", "PeerRequest", "PeerResponse", "parse_request", "check_requested_blob", "rate_reply",
    "incoming_found", "encode_response", "encode_request", "encode_availability_requests", "parse_response",
    "accept_blob",
]

LBRYCRD_ADDRESS = "bJxKvpD96kaJLriqVajZ7SaQTsWWyrGQct"
RATE_ACCEPTED = "RATE_ACCEPTED"
RATE_TOO_LOW = "RATE_TOO_LOW"
RATE_UNSET = "RATE_UNSET"  # part of the protocol, never sent
RESPONSE_KEYS = frozenset({"lbrycrd_address", "available_blobs", "blob_data_payment_rate", "incoming_blob"})
# reflector.go servers refuse requests over 512 bytes (spec §10 item 1); our requests stay below.
MAX_CLIENT_REQUEST = 511
NOT_FOUND_ERROR = "blob not found"
INCOMING_NOT_FOUND = {"error": NOT_FOUND_ERROR, "blob_hash": "", "length": 0}


@dataclass(frozen=True)
class PeerRequest:
    """A parsed request; a key the client did not send is None."""

    requested_blobs: list[str] | None = None
    blob_data_payment_rate: float | None = None
    requested_blob: str | None = None
    lbrycrd_address: bool | None = None


@dataclass(frozen=True)
class PeerResponse:
    """A parsed response header; a key the server did not send is None."""

    lbrycrd_address: str | None = None
    available_blobs: list[str] | None = None
    blob_data_payment_rate: str | None = None
    incoming_blob: dict | None = None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_request(obj: dict) -> PeerRequest:
    """Type-check a request object (unknown keys are ignored, as Go's decoder does; null = absent)."""
    if not isinstance(obj, dict):
        raise ProtocolError("invalid json request: not an object")
    blobs = obj.get("requested_blobs")
    if blobs is not None and not (isinstance(blobs, list) and all(isinstance(h, str) for h in blobs)):
        raise ProtocolError("invalid json request: requested_blobs must be a list of strings")
    rate = obj.get("blob_data_payment_rate")
    if rate is not None and not _is_number(rate):
        raise ProtocolError("invalid json request: blob_data_payment_rate must be a number")
    blob = obj.get("requested_blob")
    if blob is not None and not isinstance(blob, str):
        raise ProtocolError("invalid json request: requested_blob must be a string")
    address = obj.get("lbrycrd_address")
    if address is not None and not isinstance(address, bool):
        raise ProtocolError("invalid json request: lbrycrd_address must be a boolean")
    return PeerRequest(blobs, float(rate) if rate is not None else None, blob, address)


def check_requested_blob(hash_: str) -> str:
    """Validate a `requested_blob`: reflector.go's length error, then our full hash check."""
    if len(hash_) != 96:
        raise ProtocolError("Invalid blob hash length")
    if not is_valid_hash(hash_):
        raise ProtocolError("invalid blob hash")
    return hash_


def rate_reply(offered: float | None) -> str | None:
    """The `blob_data_payment_rate` answer: None when the request offered none (key left out)."""
    if offered is None:
        return None
    return RATE_ACCEPTED if offered >= 0 else RATE_TOO_LOW


def incoming_found(hash_: str, length: int) -> dict:
    return {"blob_hash": hash_, "length": length}


def encode_response(*, available_blobs: list[str], payment_rate: str | None = None,
                    incoming_blob: dict | None = None) -> bytes:
    """Compact JSON header in reflector.go's key order; the caller writes the blob bytes right after it."""
    obj: dict = {"lbrycrd_address": LBRYCRD_ADDRESS, "available_blobs": list(available_blobs)}
    if payment_rate is not None:
        obj["blob_data_payment_rate"] = payment_rate
    if incoming_blob is not None:
        obj["incoming_blob"] = incoming_blob
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_request(hash_: str) -> bytes:
    """The LBRY SDK's download request, byte for byte (insertion order, default separators)."""
    return json.dumps({"requested_blobs": [hash_], "lbrycrd_address": True, "blob_data_payment_rate": 0.0,
                       "requested_blob": hash_}).encode()


def encode_availability_requests(hashes: list[str]) -> list[bytes]:
    """`{"requested_blobs": [...], "lbrycrd_address": true}` requests, each under 512 bytes."""
    requests: list[bytes] = []
    batch: list[str] = []
    for h in hashes:
        candidate = json.dumps({"requested_blobs": batch + [h], "lbrycrd_address": True}).encode()
        if batch and len(candidate) > MAX_CLIENT_REQUEST:
            requests.append(json.dumps({"requested_blobs": batch, "lbrycrd_address": True}).encode())
            batch = []
        batch.append(h)
    if batch:
        requests.append(json.dumps({"requested_blobs": batch, "lbrycrd_address": True}).encode())
    return requests


def parse_response(obj: dict) -> PeerResponse | None:
    """Read a response header as the SDK client does: None if any top-level key is not a response key."""
    if not isinstance(obj, dict) or not set(obj) <= RESPONSE_KEYS:
        return None
    blobs = obj.get("available_blobs")
    if blobs is not None and not (isinstance(blobs, list) and all(isinstance(h, str) for h in blobs)):
        raise ProtocolError("invalid peer response: available_blobs must be a list of strings")
    rate = obj.get("blob_data_payment_rate")
    if rate is not None and not isinstance(rate, str):
        raise ProtocolError("invalid peer response: blob_data_payment_rate must be a string")
    incoming = obj.get("incoming_blob")
    if incoming is not None and not isinstance(incoming, dict):
        raise ProtocolError("invalid peer response: incoming_blob must be an object")
    address = obj.get("lbrycrd_address")
    return PeerResponse(address if isinstance(address, str) else None, blobs, rate, incoming)


def accept_blob(resp: PeerResponse, hash_: str, expected_length: int | None = None) -> int:
    """Apply the SDK client's rules to the answer for `requested_blob` = hash_; return the length to read.

    Not found (reflector.go's `incoming_blob.error`, or the SDK server's reply without `incoming_blob`)
    raises BlobNotFound; every other refusal raises ProtocolError.
    """
    incoming = resp.incoming_blob
    if incoming is None or incoming.get("error"):
        raise BlobNotFound(f"{hash_[:8]}: {NOT_FOUND_ERROR}")
    if resp.blob_data_payment_rate != RATE_ACCEPTED:
        raise ProtocolError(f"{hash_[:8]}: payment rate not accepted ({resp.blob_data_payment_rate!r})")
    if resp.available_blobs != [hash_]:
        raise ProtocolError(f"{hash_[:8]}: available_blobs does not list exactly the requested blob")
    if incoming.get("blob_hash") != hash_:
        raise ProtocolError("blob hash in response does not match requested hash")
    length = incoming.get("length")
    if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= MAX_BLOB_SIZE:
        raise ProtocolError(f"{hash_[:8]}: invalid blob length {length!r} in response")
    if expected_length is not None and length != expected_length:
        raise ProtocolError(f"{hash_[:8]}: server announces {length} bytes, expected {expected_length}")
    return length
