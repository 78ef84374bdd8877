"""`prism publish FILE --name NAME`: encode a file into a stream, reflect it, then claim it on the LBRY
blockchain through a local lbrycrd (spec §1.16, with reflector.go's weaknesses fixed).

Order: the wallet is asked for coins and addresses and signs the claim transaction first (so a wallet
problem costs no upload), then the stream is reflected and checked complete on the reflector, and only
then is the transaction broadcast. No private key passes through prism: lbrycrd signs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from appliance.cli.client_support import CLIENT_TIMEOUT, client_errors
from appliance.cli.cmd_send import make
from appliance.cli.common import EXIT_USAGE, CommandError, load_config, parse_address, progress
from appliance.clients.reflector import ReflectorClient
from appliance.lbry.address import AddressError, payout_script, script_address
from appliance.lbry.claims import ClaimValue, decode_value
from appliance.lbry.lbrycrd import COIN, LbrycrdClient, LbrycrdError, format_lbc, to_deweys
from appliance.lbry.publish import (
    Coin,
    PublishError,
    check_name,
    claim_id,
    claim_output_script,
    claim_transaction,
    select_coins,
    stream_claim,
)
from appliance.lbry.wallet.script import parse_claim_script
from appliance.lbry.wallet.tx import Transaction, TransactionError, parse_transaction_hex
from appliance.stream import FileBlobReader

DEFAULT_REFLECTOR = "reflector.lbry.com:5566"  # reflector.go's


def lbc_amount(text: str) -> int:
    """An argparse type: an LBC amount ("0.01") in deweys."""
    try:
        deweys = to_deweys(Decimal(text))
    except (InvalidOperation, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an LBC amount with at most 8 decimals") from None
    if deweys <= 0:
        raise argparse.ArgumentTypeError("the amount must be more than 0")
    return deweys


def spendable_coins(unspent: list[dict]) -> list[Coin]:
    coins = []
    for utxo in unspent:
        if utxo.get("spendable", True) and utxo.get("safe", True):
            coins.append(Coin(utxo["txid"], int(utxo["vout"]), to_deweys(utxo["amount"])))
    return coins


def describe(tx: Transaction) -> dict:
    """The transaction as `prism decode` would show its parts: inputs, and each output's amount and meaning."""
    outputs = []
    for n, out in enumerate(tx.outputs):
        item: dict = {"n": n, "amount": format_lbc(out.value)}
        claim = parse_claim_script(out.script)
        if claim is not None:
            item["claim_name"] = claim.name.decode("utf-8", "replace")
            item["claim"] = decode_value(claim.value).to_json()
            item["address"] = script_address(claim.payout)
        else:
            item["address"] = script_address(out.script)
        outputs.append(item)
    return {"txid": tx.txid, "inputs": [{"txid": i.prev_txid, "nout": i.prev_nout} for i in tx.inputs],
            "outputs": outputs}


def _same_spend(unsigned: Transaction, signed: Transaction) -> bool:
    """The wallet signed what we built: same outpoints, same outputs."""
    return ([(i.prev_txid, i.prev_nout) for i in unsigned.inputs] == [(i.prev_txid, i.prev_nout) for i in signed.inputs]
            and unsigned.outputs == signed.outputs)


def _lbrycrd(args: argparse.Namespace) -> LbrycrdClient:
    url = args.lbrycrd or load_config(args).lbrycrd_url
    try:
        return LbrycrdClient(url, timeout=CLIENT_TIMEOUT)
    except LbrycrdError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


@dataclass
class Funding:
    coins: list[Coin]
    claim_address: str
    change_address: str


def fund(args: argparse.Namespace, wallet: LbrycrdClient) -> Funding:
    """Coins and addresses from the wallet, asked before the file is encoded so a wallet problem costs nothing."""
    try:
        for given in (args.claim_address, args.change_address):
            if given:
                payout_script(given)  # a mistyped address fails here, not after the upload
        coins = select_coins(spendable_coins(wallet.list_unspent()), args.amount + args.fee)
        return Funding(coins, args.claim_address or wallet.new_address(),
                       args.change_address or wallet.raw_change_address())
    except (LbrycrdError, PublishError, AddressError) as exc:
        raise CommandError(f"{exc}; nothing was reflected or broadcast") from None


def build_signed(args: argparse.Namespace, wallet: LbrycrdClient, funding: Funding, name: bytes,
                 claim: dict) -> Transaction:
    """Build the claim transaction and have the wallet sign it; it must come back spending the same."""
    try:
        claim_script = claim_output_script(name, claim, payout_script(funding.claim_address))
        unsigned = claim_transaction(funding.coins, claim_script, args.amount, args.fee,
                                     payout_script(funding.change_address))
        signed = parse_transaction_hex(wallet.sign(unsigned.serialize().hex()))
    except (LbrycrdError, PublishError, AddressError, TransactionError) as exc:
        raise CommandError(f"{exc}; nothing was reflected or broadcast") from None
    if not _same_spend(unsigned, signed):
        raise CommandError("lbrycrd returned a signed transaction that spends differently from the one prism "
                           "built; nothing was reflected or broadcast")
    return signed


def reflect(args: argparse.Namespace, made, host: str, port: int) -> None:
    """Reflect the stream, then ask again: the reflector must want nothing more of it."""
    sd = made.descriptor
    total = len(sd.raw) + sum(b.length for b in sd.content_blobs)
    with progress(total=total, desc="reflecting", unit="B", unit_scale=True) as bar, \
            client_errors(f"reflecting to {host}:{port} failed; nothing was broadcast"):
        with ReflectorClient(host, port, timeout=CLIENT_TIMEOUT) as client:
            client.send_stream(sd.sd_hash, sd.raw, FileBlobReader(args.path, sd),
                               on_blob=lambda h, size, sent: bar.update(size))
        with ReflectorClient(host, port, timeout=CLIENT_TIMEOUT) as client:
            reply = client.send_sd_blob(sd.sd_hash, sd.raw)
    if reply.send or reply.needed_blobs:
        missing = len(reply.needed_blobs) or "some"
        raise CommandError(f"{host}:{port} still lacks {missing} blob(s) of stream {sd.sd_hash[:12]} after the "
                           "upload; nothing was broadcast")


def run(args: argparse.Namespace) -> int:
    try:
        name = check_name(args.name or "")
    except PublishError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if not os.path.isfile(args.path):
        raise CommandError(f"{args.path}: not a readable file")
    host, port = parse_address(args.reflector)
    wallet = _lbrycrd(args)
    funding = fund(args, wallet)

    made = make(args.path)
    tags = [t.strip() for item in args.tags for t in item.split(",") if t.strip()]
    release_time = args.release_time if args.release_time is not None else int(time.time())
    claim = stream_claim(made, args.path, title=args.title, description=args.description, author=args.author,
                         tags=tags, release_time=release_time)
    signed = build_signed(args, wallet, funding, name, claim)
    result = {"name": args.name, "sd_hash": made.descriptor.sd_hash, "txid": signed.txid,
              "claim_id": claim_id(signed.txid, 0), "amount": format_lbc(args.amount),
              "fee": format_lbc(args.fee),
              "claim": ClaimValue(claim).to_json(), "transaction": describe(signed)}
    if args.dry_run:
        result["broadcast"] = False
        result["signed_hex"] = signed.serialize().hex()
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0

    reflect(args, made, host, port)
    try:
        txid = wallet.broadcast(signed.serialize().hex())
    except LbrycrdError as exc:
        raise CommandError(f"stream {made.descriptor.sd_hash} is on {host}:{port}, but the claim transaction was "
                           f"not broadcast: {exc}") from None
    if txid != signed.txid:
        raise CommandError(f"lbrycrd broadcast a transaction with txid {txid}, not the one signed ({signed.txid})")
    result["broadcast"] = True
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "publish", help="publish a file to the LBRY blockchain through lbrycrd, and reflect it",
        description="Encode FILE into a stream, build its claim (Stream: sd hash, file name, size, SHA-384, "
                    "media type; title, description, author, tags, release time), have a local lbrycrd's wallet "
                    "fund and sign the claim transaction, reflect the stream, and broadcast the transaction only "
                    "once the reflector has every blob. Prints the txid, claim id and claim as JSON. "
                    f"Amounts are in LBC (1 LBC = {COIN:,} deweys).",
        allow_abbrev=False)
    p.add_argument("path", metavar="FILE", help="the file to publish")
    p.add_argument("--name", default="", help="claim name, as in lbry://NAME (required)")
    p.add_argument("--title", default="", help="claim title")
    p.add_argument("--description", default="", help="claim description")
    p.add_argument("--author", default="", help="stream author")
    p.add_argument("--tags", action="append", default=[], metavar="TAG[,TAG...]",
                   help="claim tags, comma separated or repeated")
    p.add_argument("--release-time", type=int, default=None, metavar="UNIX_TIME",
                   help="release time in seconds since the epoch (default: now)")
    p.add_argument("--lbrycrd", default="", metavar="URL",
                   help="lbrycrd JSON-RPC URL, http://USER:PASSWORD@HOST:PORT (default: the config's lbrycrd_url, "
                        "kept in the secrets file)")
    p.add_argument("--claim-address", default="", metavar="ADDRESS",
                   help="address the claim pays to (default: a new address of lbrycrd's wallet)")
    p.add_argument("--change-address", default="", metavar="ADDRESS",
                   help="address for the change (default: a new change address of lbrycrd's wallet)")
    p.add_argument("--amount", type=lbc_amount, default=lbc_amount("0.01"), metavar="LBC",
                   help="LBC staked on the claim (default 0.01)")
    p.add_argument("--fee", type=lbc_amount, default=lbc_amount("0.0002"), metavar="LBC",
                   help="transaction fee in LBC (default 0.0002, as reflector.go)")
    p.add_argument("--reflector", default=DEFAULT_REFLECTOR, metavar="HOST:PORT",
                   help=f"reflector to upload the stream to (default {DEFAULT_REFLECTOR}, as reflector.go)")
    p.add_argument("--dry-run", action="store_true",
                   help="build, sign and print the transaction; reflect and broadcast nothing")
    p.set_defaults(run=run)
