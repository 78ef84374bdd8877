"""Test helper for a fleet behind HAProxy: the shipped deploy/haproxy/haproxy.cfg run by Debian's haproxy
on loopback, its stats socket read for server states."""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.appliance_process import REPO, free_ports, poll

SHIPPED = REPO / "deploy" / "haproxy" / "haproxy.cfg"
SERVICES = {"reflector_http": "http", "reflector_peer": "tcp_peer", "reflector_upload": "receiver"}
SHIPPED_PORTS = {"http": 5569, "tcp_peer": 5567, "receiver": 5566}


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if path is None:
        pytest.skip("haproxy is not installed (scripts/test installs Debian's)")
    return path


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the shipped haproxy.cfg no longer has {old!r}: update tests/fleet.py"
    return text.replace(old, new)


def render_config(nodes: list, directory: Path) -> tuple[str, dict[str, int]]:
    """The shipped config for `nodes` (appliances, in server-id order) on free loopback ports.

    Only what cannot run in a test changes: the process settings of `global` (chroot, user, daemon,
    syslog, maxconn), the stats socket path, the bind ports and the server addresses. Returns (config, ports).
    """
    text = SHIPPED.read_text()
    for line in ("    chroot /var/lib/haproxy\n", "    user haproxy\n", "    group haproxy\n", "    daemon\n"):
        text = _replace(text, line, "")
    text = _replace(text, "maxconn 20000", "maxconn 1000")  # within an unprivileged descriptor limit
    text = _replace(text, "log /dev/log local0", "log stdout format raw local0")  # into haproxy.log
    text = _replace(text, "stats socket /run/haproxy/admin.sock", f"stats socket {directory / 'admin.sock'}")
    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS)), strict=True))
    for service, shipped in SHIPPED_PORTS.items():
        text = _replace(text, f"bind :{shipped}\n", f"bind 127.0.0.1:{ports[service]}\n")
        for i, node in enumerate(nodes, 1):
            text = _replace(text, f"192.0.2.{10 + i}:{shipped} ", f"127.0.0.1:{node.ports[service]} ")
    assert "192.0.2." not in text, "the shipped config has more servers than the test starts"
    return text, ports


class HAProxy:
    def __init__(self, nodes: list, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        text, self.ports = render_config(nodes, directory)
        self.config = directory / "haproxy.cfg"
        self.config.write_text(text)
        self.log_path = directory / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> HAProxy:
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + check.stdout
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        poll(lambda: (self.dir / "admin.sock").exists() and self.states(), 10, "haproxy to start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.dir / "admin.sock"))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> "UP" / "DOWN" / ... from `show stat`."""
        try:
            lines = self.command("show stat").splitlines()
        except OSError:
            return {}
        header = lines[0].lstrip("# ").split(",")
        status = header.index("status")
        states = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > status and fields[1] not in ("FRONTEND", "BACKEND"):
                states[(fields[0], fields[1])] = fields[status].split(" ")[0]
        return states

    def wait_state(self, server: str, state: str, timeout: float = 15) -> None:
        """Until `server` (node1...) is in `state` in every backend."""
        def seen() -> bool:
            states = [s for (_, name), s in self.states().items() if name == server]
            return bool(states) and all(s == state for s in states)
        poll(seen, timeout, f"haproxy to see {server} {state}")
