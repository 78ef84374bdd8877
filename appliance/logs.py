"""Logging for journald: one line per event with level, process role and pid; USR1 reopens the file."""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable

from appliance.redact import Redactor

_role = "prism"
_redact = Redactor()  # every line passes through it: no secret setting or URL password reaches a log
_file_handler: logging.Handler | None = None
VERBOSE_COMPONENTS = ("all", "dht", "node_finder", "store", "ipc", "supervisor", "http", "peer", "reflector", "db")


class _RoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.role = _role
        record.pid = os.getpid()
        return _redact(super().format(record))


def _formatter(timestamps: bool) -> logging.Formatter:
    prefix = "%(asctime)s " if timestamps else ""
    return _RoleFormatter(prefix + "%(levelname)s %(role)s[%(pid)d] %(name)s: %(message)s")


def setup(role: str = "prism", verbose: list[str] | None = None, log_file: str = "") -> None:
    """Configure the root logger once per process; `verbose` lists components logged at DEBUG."""
    global _role, _file_handler
    _role = role
    verbose = verbose or []
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    # journald stamps lines itself; a terminal or a file wants timestamps.
    stamps = not os.environ.get("JOURNAL_STREAM")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_formatter(stamps))
    root.addHandler(stream)
    if log_file:
        _file_handler = logging.FileHandler(log_file)
        _file_handler.setFormatter(_formatter(True))
        root.addHandler(_file_handler)
    root.setLevel(logging.DEBUG if "all" in verbose else logging.INFO)
    for component in verbose:
        logging.getLogger(component).setLevel(logging.DEBUG)


def hide(secrets: Iterable[str]) -> None:
    """Mask these values (the secret settings) wherever a log line would show them."""
    _redact.add(secrets)


def redact(text: str) -> str:
    """`text` as a log line would show it, for output that does not go through logging."""
    return _redact(text)


def set_role(role: str) -> None:
    """Name the process in every following line (children call this after fork)."""
    global _role
    _role = role


def reopen() -> None:
    """Reopen the log file (logrotate moved it); a no-op when logging only to stderr."""
    if _file_handler is not None:
        _file_handler.acquire()
        try:
            _file_handler.close()
            _file_handler.stream = _file_handler._open()
        finally:
            _file_handler.release()


class Throttle:
    """At most one log line per `interval` seconds per key (an outage must not flood the log).

    `throttle(key)` is None when the line should be left out, else a suffix counting what was left out.
    """

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[object, float] = {}
        self._skipped: dict[object, int] = {}

    def __call__(self, key: object) -> str | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        return f" ({skipped} more like it since the last line)" if skipped else ""
