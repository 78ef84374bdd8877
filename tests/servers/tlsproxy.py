"""A TLS front for a plain-HTTP test server: Debian's haproxy, terminating TLS and passing the bytes on."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fleet import haproxy_binary
from tests.servers.ports import free_port, port_open, wait_until

CONFIG = """global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend plain
backend plain
    server backend 127.0.0.1:{backend_port}
"""


class TlsProxy:
    """https://127.0.0.1:`port` in front of 127.0.0.1:`backend_port`, with the certificate and key in `pem`."""

    def __init__(self, directory: Path, backend_port: int, pem: Path):
        self.port = free_port()
        config = directory / "tls-proxy.cfg"
        config.write_text(CONFIG.format(port=self.port, pem=pem, backend_port=backend_port))
        self.process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=open(directory / "tls-proxy.log", "wb"))
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 10, "haproxy to listen")
        if self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited: {(directory / 'tls-proxy.log').read_text()[-500:]}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
