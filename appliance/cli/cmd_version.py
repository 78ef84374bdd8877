"""`prism version`: reflector.go's six lines."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from appliance import __version__


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _build_info() -> dict[str, str]:
    """Written into an installed venv by packaging/build-venv.sh (no git checkout there to ask)."""
    try:
        return json.loads((Path(sys.prefix) / "build-info.json").read_text())
    except (OSError, ValueError):
        return {}


def version_info() -> dict[str, str]:
    built = _build_info()
    if built:
        return {"Name": "prism-bin", "Version": __version__,
                **{k: built.get(k, "unknown") for k in ("branch", "commit", "commit long", "build date")}}
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
