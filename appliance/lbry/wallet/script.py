"""LBRY output scripts: the claim-name, claim-update and support prefixes in front of a payout script."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

OP_0, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4 = 0x00, 0x4C, 0x4D, 0x4E
OP_DROP, OP_2DROP, OP_DUP, OP_EQUALVERIFY = 0x75, 0x6D, 0x76, 0x88
OP_HASH160, OP_CHECKSIG = 0xA9, 0xAC
OP_CLAIM_NAME, OP_SUPPORT_CLAIM, OP_UPDATE_CLAIM = 0xB5, 0xB6, 0xB7


class ScriptError(ValueError):
    """A script that cannot be read; one-line message."""


class NoClaim(ScriptError):
    def __init__(self, message: str = "no claim found in output"):
        super().__init__(message)


def iter_ops(script: bytes) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (opcode, pushed data or None, offset after the op); OP_0 pushes b""."""
    pos = 0
    while pos < len(script):
        op = script[pos]
        pos += 1
        if op > OP_PUSHDATA4:
            yield op, None, pos
            continue
        if op < OP_PUSHDATA1:
            size = op
        else:
            width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
            if pos + width > len(script):
                raise ScriptError("truncated push length")
            size = int.from_bytes(script[pos:pos + width], "little")
            pos += width
        if pos + size > len(script):
            raise ScriptError(f"push of {size} bytes runs past the end of the script")
        yield op, script[pos:pos + size], pos + size
        pos += size


@dataclass
class ClaimScript:
    kind: str  # "name" (new claim), "update" or "support"
    name: bytes
    claim_hash: bytes | None  # the claimed id as stored (byte-reversed claim id); None for a new claim
    value: bytes | None  # the claim value; supports may carry data too
    payout: bytes  # the script after the claim prefix (usually pay-to-pubkey-hash)


# Each shape: the opcode, how many pushes follow, then the drops that remove them again.
_SHAPES = {
    OP_CLAIM_NAME: [("name", 2, (OP_2DROP, OP_DROP))],
    OP_UPDATE_CLAIM: [("update", 3, (OP_2DROP, OP_2DROP))],
    OP_SUPPORT_CLAIM: [("support", 2, (OP_2DROP, OP_DROP)), ("support", 3, (OP_2DROP, OP_2DROP))],
}


def parse_claim_script(script: bytes) -> ClaimScript | None:
    """The claim prefix of an output script; None when the script has none, ScriptError when it is malformed."""
    if not script or script[0] not in _SHAPES:
        return None
    ops: list[tuple[int, bytes | None, int]] = []
    try:
        for item in iter_ops(script[1:]):
            ops.append(item)
            if len(ops) == 5:  # the longest prefix: three pushes and two drops
                break
    except ScriptError:
        if len(ops) < 4:  # the error is inside the prefix, not in the payout script after a short prefix
            raise
    for kind, pushes, drops in _SHAPES[script[0]]:
        wanted = pushes + len(drops)
        if len(ops) < wanted:
            continue
        if any(data is None for _, data, _ in ops[:pushes]):
            continue
        if tuple(op for op, _, _ in ops[pushes:wanted]) != drops:
            continue
        data = [d for _, d, _ in ops[:pushes]]
        payout = script[1 + ops[wanted - 1][2]:]
        if kind == "name":
            return ClaimScript(kind, data[0], None, data[1], payout)
        if kind == "update" or pushes == 3:
            return ClaimScript(kind, data[0], data[1], data[2], payout)
        return ClaimScript(kind, data[0], data[1], None, payout)
    raise ScriptError(f"malformed claim script (opcode 0x{script[0]:02x})")


def claim_value(script: bytes) -> bytes:
    """The claim value in a claim-name or claim-update output; NoClaim for anything else (supports too)."""
    try:
        parsed = parse_claim_script(script)
    except ScriptError as exc:
        raise NoClaim(f"no claim found in output: {exc}") from None
    if parsed is None or parsed.kind == "support":
        raise NoClaim()
    return parsed.value


# --- building scripts (publishing is out of scope; tests and the fake wallet server use these) ---------

def push(data: bytes) -> bytes:
    """The minimal push of `data`."""
    n = len(data)
    if n == 0:
        return bytes([OP_0])
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + struct.pack("<H", n) + data
    return bytes([OP_PUSHDATA4]) + struct.pack("<I", n) + data


def pay_to_pubkey_hash(pubkey_hash: bytes) -> bytes:
    return bytes([OP_DUP, OP_HASH160]) + push(pubkey_hash) + bytes([OP_EQUALVERIFY, OP_CHECKSIG])


def claim_name_script(name: bytes, value: bytes, payout: bytes) -> bytes:
    return bytes([OP_CLAIM_NAME]) + push(name) + push(value) + bytes([OP_2DROP, OP_DROP]) + payout


def update_claim_script(name: bytes, claim_hash: bytes, value: bytes, payout: bytes) -> bytes:
    return (bytes([OP_UPDATE_CLAIM]) + push(name) + push(claim_hash) + push(value)
            + bytes([OP_2DROP, OP_2DROP]) + payout)


def support_claim_script(name: bytes, claim_hash: bytes, payout: bytes) -> bytes:
    return bytes([OP_SUPPORT_CLAIM]) + push(name) + push(claim_hash) + bytes([OP_2DROP, OP_DROP]) + payout
