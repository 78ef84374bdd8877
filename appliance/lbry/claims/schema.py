"""A small schema layer over the protobuf wire format: message and enum descriptors written in Python,
decoding to plain dicts, encoding from them, and protobuf-JSON rendering.

Messages are dicts keyed by the proto field names (snake_case); a key is present when the field was on the
wire (or, for encoding, when it should be written). Repeated fields are lists, enums are ints, sub-messages
are dicts. Unknown fields are skipped when decoding, as every protobuf reader does.
"""
from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.lbry.claims import wire
from appliance.lbry.claims.wire import DecodeError

_VARINT_KINDS = {"bool", "uint32", "uint64", "int32", "int64", "sint32", "sint64", "enum"}
_WIRE_TYPE = {**{k: wire.VARINT for k in _VARINT_KINDS}, "string": wire.LENGTH, "bytes": wire.LENGTH,
              "message": wire.LENGTH, "float": wire.FIXED32, "double": wire.FIXED64}
_SIXTY_FOUR_BIT = {"uint64", "int64", "sint64"}  # protobuf JSON writes these as strings


class Enum:
    """A protobuf enum: numbers to names and back."""

    def __init__(self, name: str, names: dict[int, str]):
        self.name = name
        self.names = names
        self.values = {v: k for k, v in names.items()}

    @classmethod
    def from_list(cls, name: str, names: list[str], start: int = 0) -> Enum:
        """An enum whose names are numbered consecutively from `start`."""
        return cls(name, {start + i: n for i, n in enumerate(names)})

    def name_of(self, number: int) -> str | int:
        """The name of a number; the number itself when the schema does not know it (newer senders)."""
        return self.names.get(number, number)

    def value_of(self, name: str | int) -> int:
        if isinstance(name, int):
            return name
        try:
            return self.values[name]
        except KeyError:
            raise ValueError(f"{self.name} has no value {name!r}") from None


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str  # one of _WIRE_TYPE's keys
    target: Message | Enum | None = None  # the message type or enum of `message` / `enum` fields
    repeated: bool = False
    oneof: str | None = None
    show: Callable[[Any], Any] | None = None  # JSON rendering of the value, where LBRY shows it differently
    json_name: str | None = None  # JSON key, when not the camelCase of `name`
    required: bool = False  # proto2 `required`: a message without it does not parse

    @property
    def json_key(self) -> str:
        if self.json_name:
            return self.json_name
        head, *rest = self.name.split("_")
        return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Message:
    """A message type. `define` may be called after construction so that types can refer to each other."""

    def __init__(self, name: str, fields: list[Field] | None = None, proto2: bool = False):
        self.name = name
        self.proto2 = proto2  # proto2: explicit presence; proto3: default scalars are not written
        self.fields: list[Field] = []
        self.by_number: dict[int, Field] = {}
        self.by_name: dict[str, Field] = {}
        if fields:
            self.define(fields)

    def define(self, fields: list[Field]) -> Message:
        for f in fields:
            if f.kind not in _WIRE_TYPE:
                raise ValueError(f"{self.name}.{f.name}: unknown kind {f.kind}")
        self.fields = list(fields)
        self.by_number = {f.number: f for f in fields}
        self.by_name = {f.name: f for f in fields}
        return self

    def __repr__(self) -> str:
        return f"Message({self.name})"


# --- decoding -------------------------------------------------------------------------------------------

def _scalar(message: Message, f: Field, wire_type: int, raw: int | bytes) -> Any:
    if wire_type != _WIRE_TYPE[f.kind]:
        raise DecodeError(f"{message.name}.{f.name}: wire type {wire_type} does not match {f.kind}")
    kind = f.kind
    if kind == "bool":
        return raw != 0
    if kind == "uint64":
        return raw
    if kind == "uint32":
        return raw & 0xFFFFFFFF
    if kind in ("int32", "enum"):
        return wire.signed32(raw)
    if kind == "int64":
        return wire.signed64(raw)
    if kind in ("sint32", "sint64"):
        return wire.zigzag_decode(raw)
    if kind == "float":
        return wire.fixed32_float(raw)
    if kind == "double":
        return wire.fixed64_double(raw)
    if kind == "string":
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if not message.proto2:  # proto3 requires valid UTF-8; proto2 readers were lenient
                raise DecodeError(f"{message.name}.{f.name}: invalid UTF-8") from None
            return raw.decode("utf-8", "replace")
    if kind == "bytes":
        return bytes(raw)
    raise AssertionError(kind)


def _unpack(message: Message, f: Field, raw: bytes) -> list:
    """A packed repeated scalar field: the values back to back in one length-delimited field."""
    values, pos = [], 0
    while pos < len(raw):
        if f.kind == "float":
            values.append(wire.fixed32_float(raw[pos:pos + 4]))
            pos += 4
        elif f.kind == "double":
            values.append(wire.fixed64_double(raw[pos:pos + 8]))
            pos += 8
        else:
            number, pos = wire.read_varint(raw, pos)
            values.append(_scalar(message, f, wire.VARINT, number))
    if pos != len(raw):
        raise DecodeError(f"{message.name}.{f.name}: truncated packed field")
    return values


def decode(message: Message, data: bytes) -> dict[str, Any]:
    """Parse `data` as `message`; DecodeError when it is not valid protobuf of that shape."""
    out: dict[str, Any] = {}
    # A singular sub-message that appears more than once is merged, which is what parsing the concatenation
    # of its occurrences gives.
    pending: dict[str, list[bytes]] = {}
    for number, wire_type, raw in wire.iter_fields(data):
        f = message.by_number.get(number)
        if f is None:
            continue
        if f.oneof:
            for other in message.fields:
                if other.oneof == f.oneof and other.name != f.name:
                    out.pop(other.name, None)
                    pending.pop(other.name, None)
        if f.kind == "message":
            if wire_type != wire.LENGTH:
                raise DecodeError(f"{message.name}.{f.name}: wire type {wire_type} does not match message")
            if f.repeated:
                out.setdefault(f.name, []).append(decode(f.target, raw))
            else:
                pending.setdefault(f.name, []).append(raw)
                out[f.name] = None  # placeholder keeps the order; filled below
        elif f.repeated:
            if wire_type == wire.LENGTH and f.kind not in ("string", "bytes"):
                out.setdefault(f.name, []).extend(_unpack(message, f, raw))
            else:
                out.setdefault(f.name, []).append(_scalar(message, f, wire_type, raw))
        else:
            out[f.name] = _scalar(message, f, wire_type, raw)
    for name, pieces in pending.items():
        out[name] = decode(message.by_name[name].target, b"".join(pieces))
    for f in message.fields:
        if f.required and f.name not in out:
            raise DecodeError(f"{message.name}: missing required field {f.name}")
    return out


# --- encoding -------------------------------------------------------------------------------------------

def _is_default(f: Field, value: Any) -> bool:
    return f.kind != "message" and value in (0, "", b"", False)


def _encode_one(f: Field, value: Any) -> bytes:
    kind = f.kind
    if kind == "message":
        return wire.length_delimited(f.number, encode(f.target, value))
    if kind == "string":
        return wire.length_delimited(f.number, value.encode("utf-8"))
    if kind == "bytes":
        return wire.length_delimited(f.number, bytes(value))
    if kind == "float":
        return wire.key(f.number, wire.FIXED32) + wire.float_fixed32(value)
    if kind == "double":
        return wire.key(f.number, wire.FIXED64) + wire.double_fixed64(value)
    if kind == "enum":
        value = f.target.value_of(value)
    elif kind in ("sint32", "sint64"):
        value = wire.zigzag_encode(value)
    elif kind == "bool":
        value = int(bool(value))
    return wire.key(f.number, wire.VARINT) + wire.write_varint(value)


def encode(message: Message, values: dict[str, Any]) -> bytes:
    """Serialise a dict as `message`, fields in number order (as protoc-generated code writes them)."""
    unknown = set(values) - set(message.by_name)
    if unknown:
        raise ValueError(f"{message.name} has no field {', '.join(sorted(unknown))}")
    out = bytearray()
    for f in sorted(message.fields, key=lambda f: f.number):
        if f.name not in values or values[f.name] is None:
            continue
        value = values[f.name]
        if f.repeated:
            for item in value:
                out += _encode_one(f, item)
        elif message.proto2 or f.oneof or not _is_default(f, value):
            out += _encode_one(f, value)
    return bytes(out)


# --- protobuf JSON --------------------------------------------------------------------------------------

def float32_shortest(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (what Go and C++ print for a float field)."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _json_scalar(f: Field, value: Any) -> Any:
    if f.show is not None:
        return f.show(value)
    if f.kind == "enum":
        return f.target.name_of(value)
    if f.kind in _SIXTY_FOUR_BIT:
        return str(value)
    if f.kind == "bytes":
        return base64.b64encode(value).decode()
    if f.kind in ("float", "double"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float32_shortest(value) if f.kind == "float" else value
    return value


def to_json(message: Message, values: dict[str, Any]) -> dict[str, Any]:
    """Protobuf's JSON mapping: camelCase keys, enums by name, 64-bit integers as strings, proto3 default
    values left out; bytes fields use the field's `show` (LBRY's hex, base58, claim ids) or base64."""
    out: dict[str, Any] = {}
    for f in message.fields:
        if f.name not in values or values[f.name] is None:
            continue
        value = values[f.name]
        if f.repeated:
            if not value:
                continue
            if f.kind == "message":
                out[f.json_key] = [to_json(f.target, item) for item in value]
            else:
                out[f.json_key] = [_json_scalar(f, item) for item in value]
        elif f.kind == "message":
            out[f.json_key] = to_json(f.target, value)
        elif message.proto2 or f.oneof or not _is_default(f, value):
            out[f.json_key] = _json_scalar(f, value)
    return out
