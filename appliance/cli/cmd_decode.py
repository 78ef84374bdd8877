"""`prism decode VALUE`: print a claim value (hex) as indented protobuf JSON, and a stream's sd hash."""
from __future__ import annotations

import argparse
import json

from appliance.cli.common import EXIT_FAILURE, CommandError
from appliance.lbry.claims import ClaimError, ClaimValue, decode_hex


def print_claim(value: ClaimValue) -> None:
    """The claim as indented JSON; for a stream, then the line `SD hash as hex: <hex>` (as reflector.go)."""
    print(json.dumps(value.to_json(), indent=2, ensure_ascii=False))
    if value.claim_type == "stream":
        print(f"SD hash as hex: {value.sd_hash or ''}")


def run(args: argparse.Namespace) -> int:
    try:
        value = decode_hex(args.value)
    except ClaimError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    print_claim(value)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "decode", help="decode a claim value",
        description="Decode a claim value (the hex of the value bytes of a claim output): unsigned, signed by a "
                    "channel, or a legacy v1/JSON claim migrated to the current schema. Prints the claim as "
                    "indented JSON and, for a stream, its sd hash.")
    p.add_argument("value", metavar="VALUE", help="hex of the claim value bytes")
    p.set_defaults(run=run)
