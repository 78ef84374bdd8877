"""`prism resolve ADDRESS:PORT URL`: resolve a lbry:// URL through one wallet server and print its claim."""
from __future__ import annotations

import argparse

from appliance import config as cfg
from appliance.cli.cmd_decode import print_claim
from appliance.cli.common import EXIT_FAILURE, CommandError, load_config, parse_address
from appliance.lbry.wallet import WalletClient, WalletError
from appliance.lbry.wallet.outputs import txid_of_output

FLAGS = ["wallet_timeout"]


def run(args: argparse.Namespace) -> int:
    host, port = parse_address(args.address)
    config = load_config(args, cfg.overrides_from_args(args, FLAGS))
    client = WalletClient([f"{host}:{port}"], connect_timeout=config.wallet_timeout,
                          request_timeout=config.wallet_timeout)
    try:
        with client:
            output = client.resolve(args.url)
            value = client.get_claim(txid_of_output(output), output.get("nout", 0))
    except WalletError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    print_claim(value)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "resolve", help="resolve a lbry:// URL through a wallet server",
        description="Resolve a lbry:// URL through the wallet server at ADDRESS:PORT, fetch the claim from its "
                    "transaction and print it as indented JSON (and a stream's sd hash).")
    p.add_argument("address", metavar="ADDRESS:PORT", help="wallet server, e.g. spv25.lbry.com:50001")
    p.add_argument("url", metavar="URL", help="lbry:// URL")
    cfg.add_flags(p, FLAGS)
    p.set_defaults(run=run)
