"""argparse as every command line here uses it: no prefix matching, and a bad flag answered with the usage
of the (sub)command it was given to, not the top-level one."""
from __future__ import annotations

import argparse
from collections.abc import Iterator

_OWNER = "_parser"  # namespace attribute: the innermost parser that took part in parsing


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _all_parsers(sub)


def harden(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Turn off prefix matching (`--worker` is not `--workers`) in this parser and every subparser, and
    make each subparser record itself, so parse() can report errors with the right usage."""
    for p in _all_parsers(parser):
        p.allow_abbrev = False
        if p is not parser:
            p.set_defaults(**{_OWNER: p})
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args, except that unrecognized arguments are reported by the subcommand that received them
    (its own usage line, exit 2)."""
    args, extra = parser.parse_known_args(argv)
    owner = getattr(args, _OWNER, None) or parser
    if extra:
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, _OWNER):
        delattr(args, _OWNER)
    return args
