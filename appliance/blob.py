"""Blob hashes, sizes and SHA-384: the checks every entry point applies before touching a store."""
from __future__ import annotations

import hashlib
import re

MAX_BLOB_SIZE = 2 * 1024 * 1024  # 2,097,152 bytes
MAX_PLAINTEXT_PER_BLOB = MAX_BLOB_SIZE - 1  # PKCS#7 then adds exactly one byte
HASH_HEX_LENGTH = 96
HASH_BYTES = 48

_HASH_RE = re.compile(r"[0-9a-f]{96}")


class InvalidBlobHash(ValueError):
    """A string that is not 96 lowercase hex characters."""


class InvalidBlobSize(ValueError):
    """A blob of 0 bytes or more than MAX_BLOB_SIZE."""


def is_valid_hash(value: object) -> bool:
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None


def check_hash(value: object) -> str:
    """Return `value` if it is a blob hash, else raise InvalidBlobHash."""
    if not is_valid_hash(value):
        shown = value if isinstance(value, str) and len(value) <= 120 else f"{str(value)[:40]}..."
        raise InvalidBlobHash(f"invalid blob hash {shown!r}: expected 96 lowercase hex characters")
    return value  # type: ignore[return-value]


def check_size(size: int) -> int:
    """Raise InvalidBlobSize with reflector.go's wording for an unsendable size."""
    if size <= 0:
        raise InvalidBlobSize("0-byte blob received")
    if size > MAX_BLOB_SIZE:
        raise InvalidBlobSize(f"blob must be at most {MAX_BLOB_SIZE} bytes")
    return size


def blob_hash(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-384 of `data`."""
    return hashlib.sha384(data).hexdigest()


def verify(expected_hash: str, data: bytes | bytearray | memoryview) -> bool:
    return blob_hash(data) == expected_hash


def prefix_path(hash_: str) -> str:
    """The relative path of a blob in reflector.go's disk layout: `<h[0:2]>/<h>`."""
    return f"{hash_[:2]}/{hash_}"
