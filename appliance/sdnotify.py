"""systemd's notify protocol (sd_notify) without libsystemd: a datagram to $NOTIFY_SOCKET.

A no-op when NOTIFY_SOCKET is unset (not started by systemd). Errors are swallowed: a broken notify
socket must never take the appliance down.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        valid = usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if valid else None  # ping at half the timeout
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> None:
        """Send fields such as 'READY=1', 'STATUS=...' in one datagram."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass
