"""`prism version`: reflector.go's six lines."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from appliance import __version__


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version_info() -> dict[str, str]:
    return {
        "Name": "prism-bin",
        "Version": __version__,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "commit": _git("rev-parse", "--short=7", "HEAD"),
        "commit long": _git("rev-parse", "HEAD"),
        "build date": _git("log", "-1", "--format=%cd", "--date=format:%Y-%m-%d %H:%M:%S %z"),
    }


def run(args: argparse.Namespace) -> int:
    for key, value in version_info().items():
        print(f"{key}: {value}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(run=run)
