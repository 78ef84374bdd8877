"""LBRY streams: the sd blob (stream descriptor), AES-128-CBC content blobs, making and rebuilding a file.

A stream is one sd blob plus N encrypted content blobs. The file is cut into 2,097,151-byte plaintext
pieces; each piece is AES-128-CBC/PKCS#7-encrypted with the stream key and its own IV, so a full piece
becomes a 2,097,152-byte blob. The sd blob lists every blob and ends with a zero-length terminator entry
(its own IV, no hash). The sd blob is written as the LBRY SDK writes it (`json.dumps(sort_keys=True)`);
a received sd blob is never re-serialised: `StreamDescriptor.raw` keeps its bytes and the sd hash is
their SHA-384.

    desc = parse_sd_blob(raw)               # every check of the SDK's from_stream_descriptor_blob
    made = make_stream(path, out_dir=None)  # MadeStream(descriptor, source_hash, source_length)
    for info, data in StreamEncoder(f, stream_name=...).blobs(): ...   # one blob in memory at a time
    reader = FileBlobReader(path, desc)     # re-encrypts blob `hash` from the file on demand
    decrypt_stream(desc, get_blob, out)     # verifies every blob, writes the plaintext
    sanitize_file_name(name)                # a safe single path component

Errors are one line: InvalidStreamDescriptor for sd blobs, DecryptionError for ciphertext, and
StreamMismatch when a blob does not match its descriptor entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from appliance.blob import MAX_BLOB_SIZE, MAX_PLAINTEXT_PER_BLOB, blob_hash, is_valid_hash

__all__ = [
    "STREAM_TYPE", "KEY_SIZE", "IV_SIZE", "InvalidStreamDescriptor", "DecryptionError", "StreamMismatch",
    "pkcs7_pad", "pkcs7_unpad", "encrypt_blob", "decrypt_blob", "BlobInfo", "StreamDescriptor",
    "compute_stream_hash", "parse_sd_blob", "StreamEncoder", "MadeStream", "make_stream", "FileBlobReader",
    "decrypt_stream", "sanitize_file_name", "read_full", "write_atomic",
]

STREAM_TYPE = "lbryfile"
KEY_SIZE = IV_SIZE = 16
BLOCK = 16
_HEX32 = re.compile(r"[0-9a-f]{32}")


class InvalidStreamDescriptor(ValueError):
    """An sd blob the LBRY SDK would refuse."""


class DecryptionError(ValueError):
    """Ciphertext that is not AES-128-CBC/PKCS#7 output for this key and IV."""


class StreamMismatch(ValueError):
    """A blob whose hash or length differs from its entry in the sd blob."""


# -- AES-128-CBC with PKCS#7 ---------------------------------------------------------------------------

def pkcs7_pad(data: bytes, block: int = BLOCK) -> bytes:
    """Always adds 1..block bytes (a whole block when len(data) is a multiple of it)."""
    n = block - len(data) % block
    return data + bytes([n]) * n


def pkcs7_unpad(data: bytes, block: int = BLOCK) -> bytes:
    if not data or len(data) % block:
        raise DecryptionError(f"invalid data length {len(data)}")
    n = data[-1]
    if not 1 <= n <= block or data[-n:] != bytes([n]) * n:
        raise DecryptionError("invalid padding")
    return data[:-n]


def encrypt_blob(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    if not plaintext:
        raise ValueError("cannot encrypt empty slice")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(pkcs7_pad(plaintext)) + encryptor.finalize()


def decrypt_blob(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if not ciphertext or len(ciphertext) % BLOCK:
        raise DecryptionError(f"invalid data length {len(ciphertext)}")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return pkcs7_unpad(decryptor.update(ciphertext) + decryptor.finalize())


# -- descriptor -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlobInfo:
    """One sd blob entry; the terminator has length 0 and blob_hash ""."""

    blob_num: int
    length: int
    iv: str
    blob_hash: str = ""

    def to_dict(self) -> dict:
        d: dict = {"blob_num": self.blob_num, "iv": self.iv, "length": self.length}
        if self.length > 0:
            d["blob_hash"] = self.blob_hash
        return d

    def digest(self) -> bytes:
        """Raw SHA-384 of (hash if length > 0) + num + iv + length, as ASCII (spec §2.5)."""
        text = (self.blob_hash if self.length > 0 else "") + str(self.blob_num) + self.iv + str(self.length)
        return hashlib.sha384(text.encode()).digest()


def compute_stream_hash(stream_name: str, key: str, suggested_file_name: str, blobs: Sequence[BlobInfo]) -> str:
    """hex SHA-384 of hex(name) + key hex + hex(suggested name) + SHA-384(all blob-info digests)."""
    infos = hashlib.sha384(b"".join(b.digest() for b in blobs)).digest()
    h = hashlib.sha384()
    h.update(stream_name.encode().hex().encode())
    h.update(key.encode())
    h.update(suggested_file_name.encode().hex().encode())
    h.update(infos)
    return h.hexdigest()


@dataclass(frozen=True)
class StreamDescriptor:
    """A parsed or freshly built sd blob; `raw` is the exact bytes, `sd_hash` their SHA-384."""

    stream_name: str
    key: str
    suggested_file_name: str
    blobs: tuple[BlobInfo, ...]
    stream_hash: str
    raw: bytes

    @classmethod
    def build(cls, stream_name: str, key: str, suggested_file_name: str, blobs: Sequence[BlobInfo]) -> StreamDescriptor:
        """Compute the stream hash and serialise as the LBRY SDK does (sorted keys, default separators)."""
        stream_hash = compute_stream_hash(stream_name, key, suggested_file_name, blobs)
        info = {
            "blobs": [b.to_dict() for b in blobs], "key": key, "stream_hash": stream_hash,
            "stream_name": stream_name.encode().hex(), "stream_type": STREAM_TYPE,
            "suggested_file_name": suggested_file_name.encode().hex(),
        }
        return cls(stream_name, key, suggested_file_name, tuple(blobs), stream_hash,
                   json.dumps(info, sort_keys=True).encode())

    @property
    def sd_hash(self) -> str:
        return blob_hash(self.raw)

    @property
    def content_blobs(self) -> tuple[BlobInfo, ...]:
        """Every entry but the terminator."""
        return self.blobs[:-1]

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)

    def same_stream(self, other: StreamDescriptor) -> bool:
        """Same content regardless of how the JSON was written."""
        return (self.stream_name, self.key, self.suggested_file_name, self.blobs, self.stream_hash) == \
            (other.stream_name, other.key, other.suggested_file_name, other.blobs, other.stream_hash)


def _bad(message: str) -> InvalidStreamDescriptor:
    return InvalidStreamDescriptor(f"invalid sd blob: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hex_text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key} is missing or not a string")
    try:
        return bytes.fromhex(value).decode("utf-8") if value else ""
    except ValueError:
        raise _bad(f"{key} is not hex of UTF-8 text") from None


def _blob_info(i: int, entry: object) -> BlobInfo:
    if not isinstance(entry, dict):
        raise _bad(f"blob entry {i} is not an object")
    num, length, iv = entry.get("blob_num"), entry.get("length"), entry.get("iv")
    if not _is_int(num) or not _is_int(length):
        raise _bad(f"blob entry {i}: blob_num and length must be integers")
    if not isinstance(iv, str) or not _HEX32.fullmatch(iv):
        raise _bad(f"blob entry {i}: iv must be 32 lowercase hex characters")
    if "blob_hash" in entry and not is_valid_hash(entry["blob_hash"]):
        raise _bad(f"blob entry {i}: blob_hash must be 96 lowercase hex characters")
    return BlobInfo(num, length, iv, entry.get("blob_hash", ""))


def parse_sd_blob(raw: bytes) -> StreamDescriptor:
    """Parse and verify an sd blob as the LBRY SDK does; the descriptor keeps `raw` unchanged."""
    if len(raw) > MAX_BLOB_SIZE:
        raise _bad("larger than a blob")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("does not decode as valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad("not a JSON object")
    entries = obj.get("blobs")
    if not isinstance(entries, list) or not entries:
        raise _bad("blobs is missing or empty")
    infos = [_blob_info(i, e) for i, e in enumerate(entries)]
    if infos[-1].length != 0:
        raise _bad("does not end with a zero-length blob")
    if "blob_hash" in entries[-1]:
        raise _bad("stream terminator blob should not have a hash")
    for i, info in enumerate(infos):
        if info.blob_num != i:
            raise _bad("stream contains out of order or skipped blobs")
        if i < len(infos) - 1:
            if info.length <= 0:
                raise _bad("contains zero-length data blob")
            if info.length > MAX_BLOB_SIZE or info.length % BLOCK:
                raise _bad(f"blob {i} has an impossible length {info.length}")
            if not info.blob_hash:
                raise _bad(f"blob {i} has no blob_hash")
    key = obj.get("key")
    if not isinstance(key, str) or not _HEX32.fullmatch(key):
        raise _bad("key must be 32 lowercase hex characters")
    stream_hash = obj.get("stream_hash")
    if not is_valid_hash(stream_hash):
        raise _bad("stream_hash must be 96 lowercase hex characters")
    name, suggested = _hex_text(obj, "stream_name"), _hex_text(obj, "suggested_file_name")
    if compute_stream_hash(name, key, suggested, infos) != stream_hash:
        raise _bad("stream hash does not match stream metadata")
    return StreamDescriptor(name, key, suggested, tuple(infos), stream_hash, bytes(raw))


# -- making a stream ------------------------------------------------------------------------------------

def read_full(f: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes unless EOF comes first (a pipe may return short reads)."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class StreamEncoder:
    """Encrypt a file into content blobs, yielding one at a time; `descriptor` is set once exhausted.

    `ivs` are used in order (content blobs, then the terminator); random ones fill the rest.
    """

    def __init__(self, source: BinaryIO, *, stream_name: str = "", suggested_file_name: str | None = None,
                 key: bytes | None = None, ivs: Sequence[bytes] = ()):
        self.source = source
        self.stream_name = stream_name
        self.suggested_file_name = sanitize_file_name(stream_name, "") if suggested_file_name is None \
            else suggested_file_name
        self.key = key if key is not None else os.urandom(KEY_SIZE)
        if len(self.key) != KEY_SIZE:
            raise ValueError("the stream key must be 16 bytes")
        self._ivs = list(ivs)
        self.descriptor: StreamDescriptor | None = None
        self.source_length = 0
        self._source_hash = hashlib.sha384()

    @property
    def source_hash(self) -> str:
        """hex SHA-384 of the plaintext read so far (the whole file once exhausted)."""
        return self._source_hash.hexdigest()

    def _iv(self, n: int) -> bytes:
        return self._ivs[n] if n < len(self._ivs) else os.urandom(IV_SIZE)

    def blobs(self) -> Iterator[tuple[BlobInfo, bytes]]:
        infos: list[BlobInfo] = []
        while True:
            piece = read_full(self.source, MAX_PLAINTEXT_PER_BLOB)
            if not piece:
                break
            self.source_length += len(piece)
            self._source_hash.update(piece)
            iv = self._iv(len(infos))
            data = encrypt_blob(self.key, iv, piece)
            info = BlobInfo(len(infos), len(data), iv.hex(), blob_hash(data))
            infos.append(info)
            yield info, data
        infos.append(BlobInfo(len(infos), 0, self._iv(len(infos)).hex()))
        self.descriptor = StreamDescriptor.build(self.stream_name, self.key.hex(), self.suggested_file_name, infos)


@dataclass(frozen=True)
class MadeStream:
    descriptor: StreamDescriptor
    source_hash: str
    source_length: int


def write_atomic(directory: str, name: str, data: bytes) -> None:
    """Write `directory/name` through a unique temp file, fsynced and renamed: never half-visible."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise


def make_stream(path: str, *, out_dir: str | None = None, template: StreamDescriptor | None = None,
                stream_name: str | None = None, key: bytes | None = None, ivs: Sequence[bytes] = (),
                on_blob: Callable[[BlobInfo, bytes], None] | None = None) -> MadeStream:
    """Encode the file at `path` into a stream, one blob in memory at a time.

    `template` (a parsed sd blob) re-encodes with its key, IVs and names; when the file is unchanged the
    template itself is returned, so the sd hash stays the same whatever JSON form it was written in.
    With `out_dir`, every blob and the sd blob are written there (named by hash, atomically).
    """
    if template is not None:
        key, ivs = template.key_bytes, [bytes.fromhex(b.iv) for b in template.blobs]
        names = {"stream_name": template.stream_name, "suggested_file_name": template.suggested_file_name}
    else:
        names = {"stream_name": os.path.basename(path) if stream_name is None else stream_name}
    with open(path, "rb") as f:
        encoder = StreamEncoder(f, key=key, ivs=ivs, **names)
        for info, data in encoder.blobs():
            if out_dir is not None:
                write_atomic(out_dir, info.blob_hash, data)
            if on_blob is not None:
                on_blob(info, data)
    descriptor = encoder.descriptor
    if template is not None and descriptor.same_stream(template):
        descriptor = template
    if out_dir is not None:
        write_atomic(out_dir, descriptor.sd_hash, descriptor.raw)
    return MadeStream(descriptor, encoder.source_hash, encoder.source_length)


class FileBlobReader:
    """Serve a stream's content blobs by re-encrypting them from the original file on demand.

    Used to upload a stream without keeping its blobs: blob i is plaintext piece i encrypted with the
    descriptor's key and IV i. A file that changed since the descriptor was made raises StreamMismatch.
    """

    def __init__(self, path: str, descriptor: StreamDescriptor):
        self.path = path
        self.descriptor = descriptor
        self._index = {b.blob_hash: b for b in descriptor.content_blobs}

    def __call__(self, hash_: str) -> bytes:
        info = self._index.get(hash_)
        if info is None:
            raise KeyError(f"blob {hash_[:8]} is not part of stream {self.descriptor.sd_hash[:8]}")
        with open(self.path, "rb") as f:
            f.seek(info.blob_num * MAX_PLAINTEXT_PER_BLOB)
            piece = read_full(f, MAX_PLAINTEXT_PER_BLOB)
        data = encrypt_blob(self.descriptor.key_bytes, bytes.fromhex(info.iv), piece) if piece else b""
        if blob_hash(data) != hash_:
            raise StreamMismatch(f"{self.path} changed: blob {info.blob_num} no longer matches the sd blob")
        return data


# -- rebuilding a file ----------------------------------------------------------------------------------

def decrypt_stream(descriptor: StreamDescriptor, get_blob: Callable[[BlobInfo], bytes], out: BinaryIO,
                   on_blob: Callable[[BlobInfo, int], None] | None = None) -> int:
    """Fetch, verify and decrypt every content blob in order into `out`; returns the plaintext length."""
    key = descriptor.key_bytes
    total = 0
    for info in descriptor.content_blobs:
        data = get_blob(info)
        if len(data) != info.length or blob_hash(data) != info.blob_hash:
            raise StreamMismatch(f"blob {info.blob_num} ({info.blob_hash[:8]}) does not match the sd blob")
        plain = decrypt_blob(key, bytes.fromhex(info.iv), data)
        out.write(plain)
        total += len(plain)
        if on_blob is not None:
            on_blob(info, len(plain))
    return total


# -- file names -----------------------------------------------------------------------------------------

_ILLEGAL_CHARS = re.compile(r'[<>:"/\\|?*]')
_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_MAX_NAME_BYTES = 255


def sanitize_file_name(name: str, default: str = "lbry_download") -> str:
    """A single safe file-name component: no separators, no control or Windows-illegal characters, no
    leading/trailing spaces or dots, no reserved device names; `default` when nothing is left."""
    cleaned = _ILLEGAL_CHARS.sub("", name)
    cleaned = "".join(c for c in cleaned if unicodedata.category(c) != "Cc")
    cleaned = cleaned.strip(". \t")  # leading dots too: no hidden files, no "..."
    if cleaned.split(".")[0].upper() in _RESERVED_NAMES:
        cleaned = "_" + cleaned
    encoded = cleaned.encode()
    if len(encoded) > _MAX_NAME_BYTES:
        stem, dot, ext = cleaned.rpartition(".")
        ext = dot + ext if dot and len(ext.encode()) < 32 else ""
        budget = _MAX_NAME_BYTES - len(ext.encode())
        stem = (stem if ext else cleaned).encode()[:budget].decode("utf-8", "ignore")
        cleaned = stem.rstrip(". \t") + ext
    return cleaned or default
