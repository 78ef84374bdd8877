"""What the client-side `prism` commands (send, sendblob, getstream) share: one-line network errors."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from appliance.blob import InvalidBlobHash, check_hash
from appliance.cli.common import EXIT_USAGE, CommandError
from appliance.errors import BlobNotFound, OriginError, ProtocolError

# Seconds each network operation (one message, one whole blob) may take.
CLIENT_TIMEOUT = 30.0


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def client_errors(action: str, hint: Callable[[BaseException], str] | None = None) -> Iterator[None]:
    """Turn the expected failures of a network client into `prism: <action>: <reason>[; <hint>]`, exit 1.

    `hint(exc)` may add what to do about it (e.g. "add --http"); an empty string adds nothing."""
    try:
        yield
    except CommandError:
        raise
    except (BlobNotFound, OriginError, ProtocolError, OSError, ValueError) as exc:
        advice = hint(exc) if hint else ""
        raise CommandError(f"{action}: {one_line(exc)}" + (f"; {advice}" if advice else "")) from None


def hash_argument(value: str, what: str = "hash") -> str:
    """A blob hash given on the command line; exit 2 when it is not one."""
    try:
        return check_hash(value)
    except InvalidBlobHash:
        raise CommandError(f"invalid {what} {value!r}: expected 96 lowercase hex characters", EXIT_USAGE) from None
