"""LBRY addresses (base58check) and the payout scripts they stand for."""
from __future__ import annotations

import hashlib

from appliance.lbry.claims import base58
from appliance.lbry.wallet.script import OP_CHECKSIG, OP_DUP, OP_EQUALVERIFY, OP_HASH160, pay_to_pubkey_hash, push

OP_EQUAL = 0x87
# Version bytes: mainnet addresses start with "b" (pubkey hash) or "r" (script hash); testnet and regtest
# use Bitcoin's testnet bytes ("m"/"n" and "2").
PUBKEY_HASH_VERSIONS = {0x55: "mainnet", 0x6F: "testnet/regtest"}
SCRIPT_HASH_VERSIONS = {0x7A: "mainnet", 0xC4: "testnet/regtest"}


class AddressError(ValueError):
    """Not an LBRY address; one-line message."""


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def decode_address(address: str) -> tuple[int, bytes]:
    """(version byte, 20-byte hash) of a base58check address; AddressError for anything else."""
    try:
        raw = base58.decode(address)
    except ValueError as exc:
        raise AddressError(f"{address!r} is not an LBRY address: {exc}") from None
    if len(raw) != 25 or _checksum(raw[:21]) != raw[21:]:
        raise AddressError(f"{address!r} is not an LBRY address (bad length or checksum)")
    if raw[0] not in PUBKEY_HASH_VERSIONS and raw[0] not in SCRIPT_HASH_VERSIONS:
        raise AddressError(f"{address!r} has an unknown address version 0x{raw[0]:02x}")
    return raw[0], raw[1:21]


def encode_address(version: int, hash160: bytes) -> str:
    payload = bytes([version]) + hash160
    return base58.encode(payload + _checksum(payload))


def payout_script(address: str) -> bytes:
    """The output script that pays `address`: pay-to-pubkey-hash or pay-to-script-hash."""
    version, hash160 = decode_address(address)
    if version in PUBKEY_HASH_VERSIONS:
        return pay_to_pubkey_hash(hash160)
    return bytes([OP_HASH160]) + push(hash160) + bytes([OP_EQUAL])


def script_address(script: bytes, mainnet: bool = True) -> str | None:
    """The address a payout script pays, or None for a script of another shape."""
    if len(script) == 25 and script[:3] == bytes([OP_DUP, OP_HASH160, 20]) and \
            script[23:] == bytes([OP_EQUALVERIFY, OP_CHECKSIG]):
        return encode_address(0x55 if mainnet else 0x6F, script[3:23])
    if len(script) == 23 and script[:2] == bytes([OP_HASH160, 20]) and script[22] == OP_EQUAL:
        return encode_address(0x7A if mainnet else 0xC4, script[2:22])
    return None
