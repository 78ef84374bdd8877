"""The protobuf wire format: varints, tags and length-delimited fields, nothing schema-specific."""
from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_MAX_VARINT_BYTES = 10


class DecodeError(ValueError):
    """Bytes that are not a valid protobuf message (of the expected type)."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the unsigned varint at `pos`; return (value, position after it)."""
    result = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise DecodeError("varint longer than 10 bytes")


def write_varint(value: int) -> bytes:
    """Encode an integer as a varint; negative numbers take their 64-bit two's complement (as protobuf does)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag_encode(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def signed64(value: int) -> int:
    """Reinterpret a 64-bit unsigned varint as int64."""
    return value - (1 << 64) if value & (1 << 63) else value


def signed32(value: int) -> int:
    """Reinterpret a varint as int32 (protobuf sign-extends negative int32 to 64 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & (1 << 31) else value


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field; value is an int or the raw bytes."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise DecodeError("truncated 64-bit field")
            value, pos = data[pos:pos + 8], pos + 8
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise DecodeError("truncated 32-bit field")
            value, pos = data[pos:pos + 4], pos + 4
        elif wire_type == LENGTH:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise DecodeError("truncated length-delimited field")
            value, pos = data[pos:pos + length], pos + length
        else:
            # Groups are deprecated and appear in no LBRY message.
            raise DecodeError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def key(number: int, wire_type: int) -> bytes:
    return write_varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, LENGTH) + write_varint(len(payload)) + payload


def fixed32_float(raw: bytes) -> float:
    return struct.unpack("<f", raw)[0]


def float_fixed32(value: float) -> bytes:
    return struct.pack("<f", value)


def fixed64_double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def double_fixed64(value: float) -> bytes:
    return struct.pack("<d", value)
