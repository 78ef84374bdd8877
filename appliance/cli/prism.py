"""`prism`: reflector.go's command line. Each subcommand lives in `appliance/cli/cmd_<name>.py` and
exposes `register(subparsers)`, which adds its parser and sets `run(args) -> int` as its handler."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from appliance import logs
from appliance.cli.common import EXIT_FAILURE, EXIT_USAGE, CommandError
from appliance.cli.parsing import harden, parse

# Order = order in `prism --help`. A module that does not exist yet is simply not offered.
COMMANDS = [
    "version", "reflector", "peer", "test", "send", "sendblob", "getstream", "upload", "check_integrity",
    "populate_db", "db", "dht", "start", "cluster", "decode", "resolve", "publish",
]


def _global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--conf", default=default, metavar="FILE",
                        help="config file, JSON (reflector.go) or TOML; 'none' disables (default: config.json)")
    parser.add_argument("-v", "--verbose", action="append", default=default, metavar="COMPONENTS",
                        help="components to log verbosely, comma separated or repeated: all, dht, node_finder, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism", allow_abbrev=False,
        description="Prism is a single entry point application with multiple sub modules which can be "
                    "leveraged individually or together (a Python re-implementation of LBRY's reflector.go).")
    _global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"appliance.cli.cmd_{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        before = set(subparsers.choices)
        importlib.import_module(module_name).register(subparsers)
        # Global flags are accepted after the subcommand too (reflector.go's persistent flags).
        for added in set(subparsers.choices) - before:
            _global_flags(subparsers.choices[added], suppress=True)
    return harden(parser)


def verbose_components(args: argparse.Namespace) -> list[str]:
    return [c.strip() for item in (args.verbose or []) for c in item.split(",") if c.strip()]


# Commands that run gevent servers in this process: they must monkey-patch before any other module
# (ssl, sockets, threading) is imported, i.e. before the command modules are loaded to build the parser.
GEVENT_COMMANDS = {"peer", "test"}


def _command_name(argv: list[str]) -> str | None:
    """The subcommand in argv, skipping global options and their values."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--conf", "-v", "--verbose"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    if _command_name(sys.argv[1:] if argv is None else argv) in GEVENT_COMMANDS:
        from gevent import monkey

        monkey.patch_all()
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    verbose = verbose_components(args)
    logs.setup("prism", verbose)
    if "all" in verbose:
        logging.getLogger("prism").info("global verbose logging enabled")
    elif verbose:
        logging.getLogger("prism").info("verbose logging enabled for: %s", ", ".join(verbose))
    try:
        return args.run(args) or 0
    except CommandError as exc:
        print(f"prism: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("prism: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
