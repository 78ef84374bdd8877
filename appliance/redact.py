"""Keep credentials out of status, logs and client-facing text.

`userinfo` masks the password of URLs (`scheme://user:pass@host`) and of reflector.go DSNs
(`user:pass@tcp(host)/db`) wherever they appear in a text. `Redactor` also masks the exact values of
the secret settings, so an exception that quotes one (a URL, a key) is masked in the log too.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"'<>]*@")
_DSN_PASSWORD = re.compile(r"([^\s:@/\"'<>()]+):\S*@((?:tcp|unix)\()")
MIN_SECRET = 4  # shorter values would mask ordinary words


def userinfo(text: str) -> str:
    """`text` with the userinfo of every URL and the password of every DSN replaced by ***."""
    if "@" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@{m.group(2)}", text)


def value(value: object) -> object:
    """A setting's value for display: strings and lists of strings with their userinfo masked."""
    if isinstance(value, str):
        return userinfo(value)
    if isinstance(value, list):
        return [userinfo(v) if isinstance(v, str) else v for v in value]
    return value


class Redactor:
    """Masks known secret values and any userinfo in a text."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        found = set(self.secrets)
        for secret in secrets:
            if not isinstance(secret, str):
                continue
            if len(secret) >= MIN_SECRET:
                found.add(secret)
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: a shorter one never splits it

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return userinfo(text)

