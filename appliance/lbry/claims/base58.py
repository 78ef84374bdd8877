"""Base58 (Bitcoin alphabet), how LBRY shows the address bytes of a claim's fee."""
from __future__ import annotations

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\0"))  # each leading zero byte is a leading "1"
    return "1" * zeros + "".join(reversed(digits))


def decode(text: str) -> bytes:
    number = 0
    for char in text:
        try:
            number = number * 58 + _INDEX[char]
        except KeyError:
            raise ValueError(f"invalid base58 character {char!r}") from None
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + body
