"""What `prism publish` builds: the stream claim, the claim output, and a funded, unsigned transaction.

Pure functions: the wallet (lbrycrd) is asked only for coins, addresses and signatures by the command.
"""
from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import struct
from dataclasses import dataclass

from appliance.lbry.claims import encode_value
from appliance.lbry.wallet.script import claim_name_script
from appliance.lbry.wallet.tx import Transaction, TxInput, TxOutput
from appliance.stream import MadeStream

DUST = 1_000  # deweys: change smaller than this goes to the fee instead of making an output nobody can spend
MAX_NAME_BYTES = 255
# Characters that cannot appear in an LBRY URL's name part (the SDK refuses them too), and whitespace.
_INVALID_NAME = re.compile(r"[=&#:$@%?;/\\\"<>*!^~`{}|\[\]\s]")


class PublishError(ValueError):
    """A publish that cannot be built; one-line message."""


class InsufficientFunds(PublishError):
    pass


def check_name(name: str) -> bytes:
    """The claim name as bytes; PublishError when LBRY would not accept it."""
    if not name:
        raise PublishError("--name is required: the claim name (lbry://NAME)")
    bad = _INVALID_NAME.search(name)
    if bad:
        raise PublishError(f"claim name {name!r} contains {bad.group()!r}, which LBRY names cannot hold")
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        raise PublishError(f"claim name is {len(raw)} bytes; at most {MAX_NAME_BYTES}")
    return raw


def stream_type(media_type: str) -> str | None:
    """The Stream oneof for a media type (video, audio, image), as the LBRY apps set it."""
    kind = media_type.split("/", 1)[0]
    return kind if kind in ("video", "audio", "image") else None


def stream_claim(made: MadeStream, path: str, *, title: str = "", description: str = "", author: str = "",
                 tags: list[str] | None = None, release_time: int = 0) -> dict:
    """The Claim message (as the codec's dict) of a stream made from the file at `path`."""
    media_type = mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"
    stream: dict = {
        "source": {"sd_hash": bytes.fromhex(made.descriptor.sd_hash), "name": os.path.basename(path),
                   "size": made.source_length, "hash": bytes.fromhex(made.source_hash), "media_type": media_type},
        "author": author,
        "release_time": release_time,
    }
    kind = stream_type(media_type)
    if kind is not None:
        stream[kind] = {}
    return {"stream": stream, "title": title, "description": description, "tags": list(tags or [])}


def claim_output_script(name: bytes, claim: dict, payout: bytes) -> bytes:
    """OP_CLAIM_NAME <name> <0x00 || Claim> OP_2DROP OP_DROP <payout>: an unsigned claim paid to `payout`."""
    return claim_name_script(name, encode_value(claim), payout)


@dataclass(frozen=True)
class Coin:
    txid: str
    nout: int
    value: int  # deweys


def select_coins(coins: list[Coin], needed: int) -> list[Coin]:
    """The smallest single coin that covers `needed`; else the largest coins until they do."""
    enough = [c for c in coins if c.value >= needed]
    if enough:
        return [min(enough, key=lambda c: (c.value, c.txid, c.nout))]
    chosen, total = [], 0
    for coin in sorted(coins, key=lambda c: -c.value):
        chosen.append(coin)
        total += coin.value
        if total >= needed:
            return chosen
    raise InsufficientFunds(f"insufficient funds: the wallet has {total} deweys spendable in {len(coins)} "
                            f"output(s), the claim needs {needed} (amount + fee)")


def claim_transaction(coins: list[Coin], claim_script: bytes, amount: int, fee: int,
                      change_script: bytes) -> Transaction:
    """Inputs `coins`, output 0 the claim of `amount`, then the change (unless it is dust)."""
    change = sum(c.value for c in coins) - amount - fee
    if change < 0:
        raise InsufficientFunds("the selected coins do not cover amount + fee")
    outputs = [TxOutput(amount, claim_script)]
    if change >= DUST:
        outputs.append(TxOutput(change, change_script))
    return Transaction(version=1, inputs=[TxInput(c.txid, c.nout) for c in coins], outputs=outputs)


def claim_id(txid: str, nout: int) -> str:
    """An LBRY claim id: hash160 of the transaction hash (internal byte order) and the output index."""
    sha = hashlib.sha256(bytes.fromhex(txid)[::-1] + struct.pack(">I", nout)).digest()
    return hashlib.new("ripemd160", sha).digest()[::-1].hex()
