"""LBRY (Bitcoin-format) raw transactions: parse and serialise version, inputs, outputs and locktime."""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field


class TransactionError(ValueError):
    """Bytes that are not a transaction we can read; one-line message."""


@dataclass
class TxInput:
    prev_txid: str  # display order (byte-reversed) hex, as wallet servers take it
    prev_nout: int
    script: bytes = b""
    sequence: int = 0xFFFFFFFF


@dataclass
class TxOutput:
    value: int  # deweys
    script: bytes


@dataclass
class Transaction:
    version: int = 1
    inputs: list[TxInput] = field(default_factory=list)
    outputs: list[TxOutput] = field(default_factory=list)
    locktime: int = 0

    def serialize(self) -> bytes:
        out = bytearray(struct.pack("<i", self.version))
        out += write_compact_size(len(self.inputs))
        for txin in self.inputs:
            out += bytes.fromhex(txin.prev_txid)[::-1] + struct.pack("<I", txin.prev_nout)
            out += write_compact_size(len(txin.script)) + txin.script + struct.pack("<I", txin.sequence)
        out += write_compact_size(len(self.outputs))
        for txout in self.outputs:
            out += struct.pack("<q", txout.value) + write_compact_size(len(txout.script)) + txout.script
        out += struct.pack("<I", self.locktime)
        return bytes(out)

    @property
    def txid(self) -> str:
        return txid_of(self.serialize())


def txid_of(raw: bytes) -> str:
    """Double SHA-256 of the raw transaction, byte-reversed hex (the form explorers and wallet servers use)."""
    return hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex()


def write_compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TransactionError(f"truncated transaction: needs {self.pos + n} bytes, has {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def compact_size(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        return self.unpack({0xFD: "<H", 0xFE: "<I", 0xFF: "<Q"}[first])

    def count(self, what: str) -> int:
        n = self.compact_size()
        # Each item takes at least a byte: a larger count cannot be real and would only waste memory.
        if n > len(self.data) - self.pos:
            raise TransactionError(f"transaction claims {n} {what}, more than its size allows")
        return n


def parse_transaction(raw: bytes) -> Transaction:
    """Parse a raw transaction; TransactionError for truncated, trailing or segwit-serialised bytes."""
    r = _Reader(raw)
    version = r.unpack("<i")
    n_inputs = r.count("inputs")
    if n_inputs == 0 and r.data[r.pos:r.pos + 1] == b"\x01":
        # The segwit marker (0x00) and flag (0x01). LBRY has no segwit; say so rather than misparse.
        raise TransactionError("segwit-serialised transactions are not supported")
    inputs = []
    for _ in range(n_inputs):
        prev = r.take(32)[::-1].hex()
        nout = r.unpack("<I")
        script = r.take(r.count("script bytes"))
        inputs.append(TxInput(prev, nout, script, r.unpack("<I")))
    outputs = []
    for _ in range(r.count("outputs")):
        value = r.unpack("<q")
        outputs.append(TxOutput(value, r.take(r.count("script bytes"))))
    locktime = r.unpack("<I")
    if r.pos != len(raw):
        raise TransactionError(f"{len(raw) - r.pos} bytes after the end of the transaction")
    return Transaction(version, inputs, outputs, locktime)


def parse_transaction_hex(text: str) -> Transaction:
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raise TransactionError("the transaction is not hex") from None
    return parse_transaction(raw)
