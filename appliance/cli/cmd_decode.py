"""`prism decode VALUE`: print a claim value (hex) as indented protobuf JSON, and a stream's sd hash.

VALUE may also be a whole claim output script (OP_CLAIM_NAME / OP_UPDATE_CLAIM ...), as `prism publish`
prints it: then the claim's name and payout address are printed too."""
from __future__ import annotations

import argparse
import json

from appliance.cli.common import EXIT_FAILURE, CommandError
from appliance.lbry.address import script_address
from appliance.lbry.claims import ClaimError, ClaimValue, decode_hex, decode_value
from appliance.lbry.wallet.script import ScriptError, parse_claim_script


def print_claim(value: ClaimValue) -> None:
    """The claim as indented JSON; for a stream, then the line `SD hash as hex: <hex>` (as reflector.go)."""
    print(json.dumps(value.to_json(), indent=2, ensure_ascii=False))
    if value.claim_type == "stream":
        print(f"SD hash as hex: {value.sd_hash or ''}")


def _claim_script(text: str):
    """The claim prefix of `text` when it is the hex of a claim-name or claim-update script, else None."""
    try:
        parsed = parse_claim_script(bytes.fromhex(text.strip()))
    except (ValueError, ScriptError):
        return None
    return parsed if parsed is not None and parsed.kind != "support" else None


def run(args: argparse.Namespace) -> int:
    script = _claim_script(args.value)
    try:
        value = decode_value(script.value) if script is not None else decode_hex(args.value)
    except ClaimError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    print_claim(value)
    if script is not None:
        print(f"Claim name: {script.name.decode('utf-8', 'replace')}")
        print(f"Pays to: {script_address(script.payout) or script.payout.hex()}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "decode", help="decode a claim value",
        description="Decode a claim value (the hex of the value bytes of a claim output): unsigned, signed by a "
                    "channel, or a legacy v1/JSON claim migrated to the current schema. Prints the claim as "
                    "indented JSON and, for a stream, its sd hash.")
    p.add_argument("value", metavar="VALUE", help="hex of the claim value bytes, or of a whole claim output script")
    p.set_defaults(run=run)
