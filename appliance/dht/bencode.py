"""Strict bencode for LBRY DHT datagrams.

Decoding rejects anything a careless peer or an attacker could use to make us guess: trailing bytes,
negative or zero-padded lengths and integers, `-0`, truncated values and nesting deeper than a limit.
Dict keys may be byte strings (lbry.go) or integers (the LBRY SDK writes `i0e` keys); both decode.

Encoding reproduces the SDK's bytes: dict keys sorted (integers numerically, byte strings as raw
bytes), integer keys written as `i<n>e`, str written as its UTF-8 bytes.
"""
from __future__ import annotations

from typing import Any

MAX_DEPTH = 16  # DHT messages nest 4 levels at most (dict > list > list > bytes)
_DIGITS = frozenset(b"0123456789")


class DecodeError(ValueError):
    """The bytes are not one well-formed bencoded value."""


def decode(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one value; DecodeError on anything malformed or on trailing bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("bencode input must be bytes")
    data = bytes(data)
    value, end = _decode(data, 0, max_depth)
    if end != len(data):
        raise DecodeError(f"trailing bytes after the value at offset {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if pos >= len(data):
        raise DecodeError("truncated input")
    lead = data[pos]
    if lead == 0x69:  # i
        return _decode_int(data, pos + 1, ord("e"))
    if lead in _DIGITS:
        return _decode_bytes(data, pos)
    if depth <= 0:
        raise DecodeError("nesting too deep")
    if lead == 0x6C:  # l
        items = []
        pos += 1
        while True:
            if pos >= len(data):
                raise DecodeError("unterminated list")
            if data[pos] == 0x65:  # e
                return items, pos + 1
            item, pos = _decode(data, pos, depth - 1)
            items.append(item)
    if lead == 0x64:  # d
        result: dict = {}
        pos += 1
        while True:
            if pos >= len(data):
                raise DecodeError("unterminated dict")
            if data[pos] == 0x65:
                return result, pos + 1
            if data[pos] == 0x69:
                key, pos = _decode_int(data, pos + 1, ord("e"))
            elif data[pos] in _DIGITS:
                key, pos = _decode_bytes(data, pos)
            else:
                raise DecodeError(f"invalid dict key at offset {pos}")
            if key in result:
                raise DecodeError(f"duplicate dict key {key!r}")
            result[key], pos = _decode(data, pos, depth - 1)
    raise DecodeError(f"invalid token {chr(lead)!r} at offset {pos}")


def _decode_int(data: bytes, pos: int, terminator: int) -> tuple[int, int]:
    end = data.find(terminator, pos)
    if end < 0:
        raise DecodeError("unterminated integer")
    text = data[pos:end]
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or not set(digits) <= _DIGITS:
        raise DecodeError(f"invalid integer {text[:32]!r}")
    if len(digits) > 1 and digits[:1] == b"0":
        raise DecodeError(f"integer with leading zero {text[:32]!r}")
    if text == b"-0":
        raise DecodeError("negative zero")
    if len(digits) > 64:  # far beyond any DHT field; also keeps int() cheap
        raise DecodeError("integer too long")
    return int(text), end + 1


def _decode_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos, pos + 12)
    if colon < 0:
        raise DecodeError(f"invalid byte-string length at offset {pos}")
    length_text = data[pos:colon]
    if not set(length_text) <= _DIGITS or (len(length_text) > 1 and length_text[:1] == b"0"):
        raise DecodeError(f"invalid byte-string length {length_text!r}")
    start = colon + 1
    end = start + int(length_text)
    if end > len(data):
        raise DecodeError("byte string runs past the end of the input")
    return data[start:end], end


def encode(value: Any) -> bytes:
    """Encode int, bytes, str, list/tuple and dict (int, bytes or str keys) the way the SDK does."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _sort_key(key: Any) -> tuple[int, Any]:
    if isinstance(key, bool) or not isinstance(key, int | bytes | str):
        raise TypeError(f"cannot bencode dict key of type {type(key).__name__}")
    if isinstance(key, int):
        return (0, key)
    return (1, key.encode() if isinstance(key, str) else key)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("cannot bencode a bool; use an int")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        keys = sorted(value, key=_sort_key)
        seen = set()
        for key in keys:
            kind, raw = _sort_key(key)
            if (kind, raw) in seen:
                raise TypeError(f"dict key {key!r} given twice (str and bytes)")
            seen.add((kind, raw))
            _encode(raw, out)
            _encode(value[key], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def dicts_last(value: Any) -> bool:
    """True when every dict is the last item of its list or dict, so the SDK's decoder can read it.

    The SDK decoder does not consume a nested dict's closing `e`; a dict followed by a sibling breaks
    the decode or silently drops the keys after it (vectors/dht.json `sdk_decoder_quirk`).
    """
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, dict):
        items = [value[k] for k in sorted(value, key=_sort_key)]
    else:
        return True
    for i, item in enumerate(items):
        if isinstance(item, dict) and i != len(items) - 1:
            return False
        if not dicts_last(item):
            return False
    return True
