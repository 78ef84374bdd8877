"""Where the LBRY SDK vectors are: $REFLECTOR_VECTORS, else ../shared/vectors beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def vectors_dir() -> Path:
    """The vectors folder; skips the calling test (or module) with a reason when it is not there."""
    for candidate in (os.environ.get("REFLECTOR_VECTORS", ""), Path(__file__).resolve().parents[2] / "shared/vectors"):
        if candidate and (Path(candidate) / "peer.json").exists():
            return Path(candidate)
    pytest.skip("LBRY SDK vectors not found (set REFLECTOR_VECTORS)", allow_module_level=True)
