"""Store tokens as the LBRY SDK makes them: sha384(secret + 4-byte IPv4 of the requester), 48 bytes.

The secret rotates every 5 minutes and the previous one stays valid, so a token handed out in a
findValue answer works for 5 to 10 minutes, and only from the IP address it was issued to.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import threading
import time
from collections.abc import Callable

ROTATE_INTERVAL = 300.0


def new_secret() -> bytes:
    """48 bytes, as the SDK draws them (sha384 of random bytes)."""
    return hashlib.sha384(os.urandom(32)).digest()


def make_token(secret: bytes, ip: str) -> bytes:
    return hashlib.sha384(secret + socket.inet_aton(ip)).digest()


class TokenManager:
    """The current and previous secrets; rotate() when `interval` has passed (maybe_rotate)."""

    def __init__(self, secret: bytes | None = None, interval: float = ROTATE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._secret = secret or new_secret()
        self._previous: bytes | None = None
        self._interval = interval
        self._clock = clock
        self._rotated_at = clock()

    def make(self, ip: str) -> bytes:
        """The token for a requester at `ip`."""
        with self._lock:
            return make_token(self._secret, ip)

    def verify(self, token: bytes, ip: str) -> bool:
        """True for a token made for `ip` with the current or the previous secret."""
        with self._lock:
            secrets = [self._secret] + ([self._previous] if self._previous else [])
        return any(hmac.compare_digest(token, make_token(s, ip)) for s in secrets)

    def rotate(self, secret: bytes | None = None) -> None:
        with self._lock:
            self._previous, self._secret = self._secret, secret or new_secret()
            self._rotated_at = self._clock()

    def maybe_rotate(self) -> bool:
        """Rotate when the interval has passed since the last rotation; True if it did."""
        if self._clock() - self._rotated_at < self._interval:
            return False
        self.rotate()
        return True
