"""DHT datagrams: requests, responses and errors, their RPC arguments and results.

Input: the SDK's integer keys (`{0: type, 1: rpc id, ...}`) and lbry.go's string keys (`{"0": ...}`).
Output: always the SDK form, checked to be at most 1400 bytes with every dict last in its parent.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from appliance.dht import bencode

NODE_ID_LEN = 48
RPC_ID_LEN = 20
TOKEN_LEN = 48
COMPACT_PEER_LEN = 54
MAX_DATAGRAM = 1400  # the SDK never sends more; we drop anything larger on input
PROTOCOL_VERSION = 1
K = 8
ALPHA = 5

REQUEST, RESPONSE, ERROR = 0, 1, 2
PING, STORE, FIND_NODE, FIND_VALUE = b"ping", b"store", b"findNode", b"findValue"
METHODS = (PING, STORE, FIND_NODE, FIND_VALUE)
PONG, STORED = b"pong", b"OK"
VALUE_ERROR = b"<class 'ValueError'>"  # what the SDK writes as the exception type
INVALID_TOKEN = b"Invalid token"  # the SDK client looks for this text to refetch its token
PV_KEY, PAGE_KEY, TOKEN_KEY, CONTACTS_KEY = b"protocolVersion", b"p", b"token", b"contacts"


class MessageError(ValueError):
    """A datagram that is valid bencode but not a DHT message, or bad RPC arguments."""


class DatagramTooLarge(ValueError):
    """An outgoing datagram would exceed MAX_DATAGRAM bytes."""


@dataclass(frozen=True)
class Request:
    rpc_id: bytes
    node_id: bytes
    method: bytes
    args: list


@dataclass(frozen=True)
class Response:
    rpc_id: bytes
    node_id: bytes
    result: Any


@dataclass(frozen=True)
class ErrorReply:
    rpc_id: bytes
    node_id: bytes
    exc_type: bytes
    message: bytes


Message = Request | Response | ErrorReply


class ContactTriple(NamedTuple):
    """A node as findNode returns it: [node_id, ip, udp_port]."""

    node_id: bytes
    ip: str
    udp_port: int


class Peer(NamedTuple):
    """A blob holder as findValue returns it (compact form): ip, TCP peer port, node id."""

    ip: str
    tcp_port: int
    node_id: bytes


# --- datagrams -----------------------------------------------------------------------------------------

def _key(key: Any) -> int | None:
    """0..4 from an integer key (SDK) or a byte-string digit key (lbry.go)."""
    if isinstance(key, int) and 0 <= key <= 4:
        return key
    if isinstance(key, bytes) and len(key) == 1 and key in b"01234":
        return key[0] - 0x30
    return None


def decode_message(data: bytes) -> Message:
    """Parse one datagram; MessageError (or bencode.DecodeError, a subclass of ValueError) if invalid."""
    if len(data) > MAX_DATAGRAM:
        raise MessageError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    raw = bencode.decode(data)
    if not isinstance(raw, dict):
        raise MessageError("a datagram must be a dict")
    fields: dict[int, Any] = {}
    for key, value in raw.items():
        k = _key(key)
        if k is None:
            continue  # unknown keys are ignored, as both implementations do
        if k in fields:
            raise MessageError(f"key {k} given twice")
        fields[k] = value
    kind, rpc_id, node_id = fields.get(0), fields.get(1), fields.get(2)
    if kind not in (REQUEST, RESPONSE, ERROR) or isinstance(kind, bool):
        raise MessageError(f"invalid message type {kind!r}")
    if not isinstance(rpc_id, bytes) or len(rpc_id) != RPC_ID_LEN:
        raise MessageError("invalid rpc id")
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_LEN:
        raise MessageError("invalid node id")
    if 3 not in fields:
        raise MessageError("missing key 3")
    if kind == REQUEST:
        method, args = fields[3], fields.get(4, [])
        if not isinstance(method, bytes) or not isinstance(args, list):
            raise MessageError("invalid request method or arguments")
        return Request(rpc_id, node_id, method, args)
    if kind == RESPONSE:
        return Response(rpc_id, node_id, fields[3])
    exc_type, message = fields[3], fields.get(4, b"")
    if isinstance(message, list):  # lbry.go sends a list of strings
        message = b" ".join(m for m in message if isinstance(m, bytes))
    if not isinstance(exc_type, bytes) or not isinstance(message, bytes):
        raise MessageError("invalid error datagram")
    return ErrorReply(rpc_id, node_id, exc_type, message)


def to_wire(msg: Message) -> dict:
    """The SDK's dict for a message (integer keys)."""
    if isinstance(msg, Request):
        return {0: REQUEST, 1: msg.rpc_id, 2: msg.node_id, 3: msg.method, 4: msg.args}
    if isinstance(msg, Response):
        return {0: RESPONSE, 1: msg.rpc_id, 2: msg.node_id, 3: msg.result}
    return {0: ERROR, 1: msg.rpc_id, 2: msg.node_id, 3: msg.exc_type, 4: msg.message}


def encode_message(msg: Message) -> bytes:
    """Bencode a message in the SDK form; DatagramTooLarge past 1400 bytes, ValueError if an SDK node
    could not decode it (a dict that is not last in its parent)."""
    wire = to_wire(msg)
    if not bencode.dicts_last(wire):
        raise ValueError("a dict must be the last item of its parent (SDK decoder)")
    data = bencode.encode(wire)
    if len(data) > MAX_DATAGRAM:
        raise DatagramTooLarge(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data



def encode_within(msg: Message, max_bytes: int) -> tuple[bytes, int]:
    """Encode a reply in at most `max_bytes` if shedding contacts (the furthest first) can make it fit;
    returns the datagram and how many contacts were shed. A findValue answer's token and peers are never
    shed, so such an answer may stay larger than `max_bytes` (it is at most 1400 bytes all the same)."""
    data = encode_message(msg)
    if len(data) <= max_bytes or not isinstance(msg, Response):
        return data, 0
    result = msg.result
    contacts = result.get(CONTACTS_KEY) if isinstance(result, dict) else result
    if not isinstance(contacts, list) or not contacts:
        return data, 0
    excess, kept = len(data) - max_bytes, list(contacts)
    while kept and excess > 0:
        excess -= len(bencode.encode(kept.pop()))
    result = {**result, CONTACTS_KEY: kept} if isinstance(result, dict) else kept
    return encode_message(Response(msg.rpc_id, msg.node_id, result)), len(contacts) - len(kept)

# --- request arguments ---------------------------------------------------------------------------------

def request_args(method: bytes, *positional: Any, page: int | None = None) -> list:
    """Arguments as the SDK sends them: positional ones, then {p?, protocolVersion: 1} last."""
    options: dict = {PV_KEY: PROTOCOL_VERSION}
    if page is not None:
        options[PAGE_KEY] = page
    return [*positional, options]


def split_options(args: list) -> tuple[list, dict]:
    """Positional arguments and the trailing options dict (empty when there is none)."""
    if args and isinstance(args[-1], dict):
        return list(args[:-1]), args[-1]
    return list(args), {}


def parse_key_arg(args: list, what: str) -> tuple[bytes, dict]:
    """findNode / findValue: [key, {options}?]; the SDK's ValueError wording for a bad key length."""
    positional, options = split_options(args)
    if not positional or not isinstance(positional[0], bytes):
        raise MessageError(f"{what}: missing key")
    key = positional[0]
    if len(key) != NODE_ID_LEN:
        label = "blob_exchange hash" if what == "findValue" else "contact node_id"
        raise MessageError(f"invalid {label} length: {len(key)}")
    return key, options


@dataclass(frozen=True)
class StoreArgs:
    blob_hash: bytes
    token: bytes
    tcp_port: int
    lbryid: bytes | None  # legacy form only: the node id the value names
    legacy: bool


def parse_store_args(args: list) -> StoreArgs:
    """store in the SDK form [hash, token, port, publisher_id, age, {pv}?] or lbry.go's legacy form
    [hash, {lbryid, port, token}, node_id, self_store]."""
    if len(args) == 4 and isinstance(args[1], dict):
        blob_hash, value, _publisher, self_store = args
        token, port, lbryid = value.get(b"token"), value.get(b"port"), value.get(b"lbryid")
        if not isinstance(lbryid, bytes) or len(lbryid) != NODE_ID_LEN:
            raise MessageError("invalid lbryid in store value")
        if self_store not in (0, 1):
            raise MessageError("invalid self_store flag")
        legacy = True
    else:
        positional, _ = split_options(args)
        if len(positional) < 3:
            raise MessageError("store: expected [blob_hash, token, port, publisher_id, age]")
        blob_hash, token, port = positional[:3]
        lbryid, legacy = None, False
    if not isinstance(blob_hash, bytes) or len(blob_hash) != NODE_ID_LEN:
        size = len(blob_hash) if isinstance(blob_hash, bytes) else 0
        raise MessageError(f"invalid length of blob hash: {size}")
    if not isinstance(token, bytes):
        raise MessageError(INVALID_TOKEN.decode())
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise MessageError(f"invalid tcp port: {port!r}")
    return StoreArgs(blob_hash, token, port, lbryid, legacy)


# --- results -------------------------------------------------------------------------------------------

def contact_triple(node_id: bytes, ip: str, udp_port: int) -> list:
    """[node_id, ip as ASCII bytes, udp_port], the SDK's findNode item."""
    return [node_id, ip.encode(), udp_port]


def parse_ipv4(value: Any) -> str:
    """A dotted IPv4 address from bytes or str; MessageError otherwise."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise MessageError("invalid IPv4 address") from None
    if not isinstance(value, str):
        raise MessageError("invalid IPv4 address")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise MessageError(f"invalid IPv4 address {value[:20]!r}") from None


def parse_contacts(value: Any) -> list[ContactTriple]:
    """A findNode result (or findValue `contacts`); malformed items are skipped, a non-list is an error."""
    if not isinstance(value, list):
        raise MessageError("contacts must be a list")
    contacts = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            continue
        node_id, ip, port = item
        if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_LEN:
            continue
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            continue
        try:
            contacts.append(ContactTriple(node_id, parse_ipv4(ip), port))
        except MessageError:
            continue
    return contacts


def compact_peer(ip: str, tcp_port: int, node_id: bytes) -> bytes:
    """4-byte IPv4 + 2-byte big-endian TCP port + 48-byte node id."""
    return socket.inet_aton(ip) + struct.pack(">H", tcp_port) + node_id


def parse_compact_peer(data: bytes) -> Peer:
    if not isinstance(data, bytes) or len(data) != COMPACT_PEER_LEN:
        raise MessageError("a compact peer is 54 bytes")
    port = struct.unpack(">H", data[4:6])[0]
    return Peer(socket.inet_ntoa(data[:4]), port, data[6:])


@dataclass(frozen=True)
class FindValueReply:
    token: bytes
    contacts: list[ContactTriple]
    pages: int
    peers: list[Peer]


def parse_find_value(result: Any, key: bytes) -> FindValueReply:
    """What a client reads out of a findValue result: token, contacts, page count and compact peers."""
    if not isinstance(result, dict):
        raise MessageError("findValue result must be a dict")
    token = result.get(TOKEN_KEY)
    if not isinstance(token, bytes):
        raise MessageError("findValue result without a token")
    contacts = parse_contacts(result.get(CONTACTS_KEY, []))
    pages = result.get(PAGE_KEY, 0)
    if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
        pages = 0
    raw_peers = result.get(key, [])
    peers = []
    if isinstance(raw_peers, list):
        for item in raw_peers:
            try:
                peers.append(parse_compact_peer(item))
            except MessageError:
                continue
    return FindValueReply(token, contacts, pages, peers)
