"""scripts/bench section (e): HTTP/3 downloads against HTTP/1.1 downloads of the same 2 MiB blobs, one appliance.

The appliance (`prism reflector`, local storage = the bench's blob directory) serves HTTP/1.1 from its gevent
workers and HTTP/3 from its asyncio http3 role. HTTP/1.1 is driven by wrk, HTTP/3 by h3load.py (asyncio +
aioquic, the client Http3Store uses), both with 32 requests in flight.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from appliance import ipc  # noqa: E402

H3_CONNECTIONS, H3_STREAMS = 8, 4  # 32 requests in flight, as wrk -c32


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Appliance:
    def __init__(self, tmp: Path, root: Path, workers: int):
        self.ports = {"http": _free_port(), "peer": _free_port(), "metrics": _free_port(),
                      "http3": _free_port(socket.SOCK_DGRAM)}
        self.runtime = tmp / "appliance-run"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli.prism", "reflector", "--conf", "none", "--disable-dht",
             "--disable-uploads", "--use-db=false", "--disable-blocklist", "--protected-content-url", "",
             "--listen-address", "127.0.0.1", "--workers", str(workers), "--storage-dir", str(root),
             "--http-peer-port", str(self.ports["http"]), "--tcp-peer-port", str(self.ports["peer"]),
             "--metrics-port", str(self.ports["metrics"]), "--http3-peer-port", str(self.ports["http3"]),
             "--runtime-dir", str(self.runtime), "--state-dir", str(tmp / "appliance-state"),
             "--cache-dir", str(tmp / "appliance-cache")],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "appliance.log", "wb"))
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"bench: the appliance did not start; see {tmp / 'appliance.log'}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            status = ipc.IpcClient(str(self.runtime / "control.sock"), name="control", timeout=2).call("status")
        except (ipc.IpcError, OSError, TimeoutError):
            return False
        return status["state"] == "ready"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def h3_load(port: int, hashes_file: Path, seconds: int) -> float:
    """MB/s of HTTP/3 downloads with H3_CONNECTIONS x H3_STREAMS requests in flight."""
    out = subprocess.run([sys.executable, str(HERE / "h3load.py"), str(port), str(hashes_file), str(seconds),
                          str(H3_CONNECTIONS), str(H3_STREAMS)], capture_output=True, text=True,
                         timeout=seconds + 120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode:
        raise SystemExit(f"bench: the HTTP/3 load generator failed: {out.stderr.strip()[-500:]}")
    total_bytes, _, elapsed = out.stdout.split()
    return int(total_bytes) / float(elapsed) / 1e6
