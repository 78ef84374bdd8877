"""scripts/bench section (e): HTTP/3 downloads against HTTP/1.1 downloads of the same 2 MiB blobs, one appliance.

The appliance (`prism reflector`, local storage = the bench's blob directory) serves HTTP/1.1 from its gevent
workers and HTTP/3 from its asyncio http3 processes. HTTP/1.1 is driven by wrk, HTTP/3 by h3load.py (asyncio +
qh3, the client Http3Store uses), both with 32 requests in flight.

chain_cold_misses(): two caches chained to that appliance, one with `--upstream-protocol http3`, one with `http`;
fresh blobs are written to the origin each run and fetched once through each cache's HTTP port (cold misses:
the upstream hop, SHA-384 check and disk write), alternating which cache goes first.
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

H3_CONNECTIONS, H3_STREAMS, H3_PROCESSES = 8, 4, 2  # 32 requests in flight, as wrk -c32 -t2


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Appliance:
    def __init__(self, tmp: Path, root: Path, workers: int, *flags: str):
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
             "--cache-dir", str(tmp / "appliance-cache"), *flags],
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
    """MB/s of HTTP/3 downloads with H3_CONNECTIONS x H3_STREAMS requests in flight, from H3_PROCESSES load
    generators (wrk runs -t2: two threads; a Python client is one core per process)."""
    procs = [subprocess.Popen([sys.executable, str(HERE / "h3load.py"), str(port), str(hashes_file), str(seconds),
                               str(H3_CONNECTIONS // H3_PROCESSES), str(H3_STREAMS)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
             for _ in range(H3_PROCESSES)]
    total, longest = 0, 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode:
            raise SystemExit(f"bench: the HTTP/3 load generator failed: {err.strip()[-500:]}")
        total_bytes, _, elapsed = out.split()
        total, longest = total + int(total_bytes), max(longest, float(elapsed))
    return total / longest / 1e6

CHAIN_BLOBS, CHAIN_CLIENTS = 40, 8


def chain_cold_misses(tmp: Path, root: Path, origin: Appliance, runs: int) -> dict[str, list[float]]:
    """MB/s of cold misses through a cache whose upstream is `origin` over HTTP/3, and over HTTP/1.1."""
    from cache import load, write_blobs
    from scaling import Appliance as Cache

    upstreams = {"http3": origin.ports["http3"], "http": origin.ports["http"]}
    caches = {proto: Cache(tmp / f"chain-{proto}", 1, "--upstream-reflector", f"127.0.0.1:{port}",
                           "--upstream-protocol", proto, "--disk-cache", f"100GB:{tmp / f'chain-{proto}-cache'}:lru",
                           wait=False) for proto, port in upstreams.items()}
    try:
        for cache in caches.values():
            cache.wait_ready()
        figures: dict[str, list[float]] = {proto: [] for proto in caches}
        for run in range(runs):
            order = list(caches) if run % 2 == 0 else list(reversed(caches))
            for proto in order:
                figures[proto].append(load(caches[proto].http_port, write_blobs(root, CHAIN_BLOBS), CHAIN_CLIENTS))
        return figures
    finally:
        for cache in caches.values():
            cache.stop()
