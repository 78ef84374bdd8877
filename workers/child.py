"""What every child process gets from the supervisor: its role, sockets, scoreboard slot and config."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass

from appliance.config import Config
from appliance.scoreboard import BOOTING, FAILED, Scoreboard

_PR_SET_PDEATHSIG = 1


class BootError(Exception):
    """The child cannot start with this config: the supervisor stops the appliance instead of looping
    (the cache manager excepted: the appliance serves without its cache and retries it with backoff)."""


@dataclass
class ChildContext:
    role: str
    index: int
    slot: int
    fds: dict[str, int]
    supervisor_pid: int
    runtime_dir: str
    config: Config
    verbose: list[str]
    scoreboard: Scoreboard

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}" if self.role in ("worker", "http3") else self.role

    def listener(self, name: str) -> socket.socket | None:
        """The inherited listening socket of a service, or None when this worker does not serve it."""
        fd = self.fds.get(name)
        return socket.socket(fileno=fd) if fd is not None else None

    def post(self, state: int, status: dict | None = None) -> None:
        """Heartbeat: state and a small status dict into this child's scoreboard slot."""
        self.scoreboard.write(self.slot, state, status)

    def socket_path(self, name: str) -> str:
        return os.path.join(self.runtime_dir, f"{name}.sock")

    def parent_alive(self) -> bool:
        return os.getppid() == self.supervisor_pid


def load() -> ChildContext:
    """Read APPLIANCE_CHILD and the config memfd; arrange to die with the supervisor."""
    spec = json.loads(os.environ.pop("APPLIANCE_CHILD"))
    die_with_parent(spec["supervisor_pid"])
    fds = spec["fds"]
    with os.fdopen(fds.pop("config"), "rb") as f:
        f.seek(0)
        payload = json.loads(f.read())
    scoreboard = Scoreboard(128, fd=fds.pop("scoreboard"))
    config = Config(payload["values"], payload["path"])
    ctx = ChildContext(spec["role"], spec["index"], spec["slot"], fds, spec["supervisor_pid"], spec["runtime_dir"],
                       config, payload["verbose"], scoreboard)
    ctx.post(BOOTING)
    return ctx


def die_with_parent(parent_pid: int) -> None:
    """An orphaned SO_REUSEPORT worker would keep stealing connections: exit when the supervisor dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def fail_boot(ctx: ChildContext | None, message: str, code: int) -> None:
    """Log the reason once and exit with `code` (3 = boot error: the supervisor halts the appliance, or serves
    without an optional role)."""
    from appliance.logs import redact

    message = redact(message)
    print(f"{ctx.name if ctx else 'child'}[{os.getpid()}]: cannot start: {message}", file=sys.stderr, flush=True)
    if ctx is not None:
        ctx.post(FAILED, {"error": message})
    os._exit(code)
