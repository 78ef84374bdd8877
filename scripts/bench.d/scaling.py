"""scripts/bench, issue 4: `prism reflector` as the server under test, and how it scales with its workers.

Appliance(directory, workers, *flags, wait=True) runs `prism reflector` (supervisor, cache manager, gevent
workers) on free 127.0.0.1 ports in its own directory, waits until every process is ready (or, with
wait=False, when you call wait_ready()), and has .ports {"receiver", "peer", "http"}, .port / .http_port and
.peer_port. run() is section (f): the appliances there are edge caches (an upstream that is never asked, a disk
cache that already holds every blob: edge_cache_dir() hard-links the benchmark's blobs into it), so every GET is
a cache hit.
"""
from __future__ import annotations

import hashlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from appliance import ipc  # noqa: E402
from tests.appliance_process import free_ports  # noqa: E402

SMALL_BLOBS, SMALL_SIZE = 200, 4096


class Appliance:
    def __init__(self, directory: Path, workers: int, *flags: str, wait: bool = True):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        receiver, peer, http, metrics = free_ports(4)
        self.ports = {"receiver": receiver, "peer": peer, "http": http}
        self.port = self.http_port = http
        self.peer_port = peer
        argv = [sys.executable, "-m", "appliance.cli.prism", "reflector", "--conf", "none", "--listen-address",
                "127.0.0.1", "--disable-dht", "--disable-http3", "--workers", str(workers),
                "--receiver-port", str(receiver), "--tcp-peer-port", str(peer), "--http-peer-port", str(http),
                "--metrics-port", str(metrics), *flags]
        with open(self.dir / "appliance.log", "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env={**os.environ, "PYTHONPATH": str(REPO)},
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: prism reflector exited while starting; see {self.dir / 'appliance.log'}")
            client = ipc.IpcClient(str(self.dir / "run" / "control.sock"), name="control", timeout=5)
            try:
                status = client.call("status")
                if status["state"] == "ready" and all(p["state"] == "ready" for p in status["processes"]):
                    return
            except (ipc.IpcError, OSError, TimeoutError):
                pass
            finally:
                client.close()
            time.sleep(0.1)
        raise SystemExit(f"bench: prism reflector was not ready within {timeout:g}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def edge_cache_dir(root: Path, hashes: list[str], directory: Path) -> Path:
    """Hard links of the blobs under root in a disk-cache layout (the same files: no copy, one page cache)."""
    for hash_ in hashes:
        (directory / hash_[:2]).mkdir(parents=True, exist_ok=True)
        os.link(root / hash_[:2] / hash_, directory / hash_[:2] / hash_)
    return directory


def light_get(port: int, paths_file: Path, seconds: int, connections: int = 32, processes: int = 2) -> float:
    """Requests/s of getload.py (keep-alive GETs, bodies discarded in the kernel) against 127.0.0.1:port,
    `connections` in all over `processes` client processes."""
    argv = [sys.executable, str(Path(__file__).with_name("getload.py")), str(port), str(paths_file), str(seconds),
            str(connections // processes)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode:
            raise SystemExit(f"bench: getload failed: {err.strip()[-500:]}")
        rate, errors = out.split()
        if int(errors):
            raise SystemExit(f"bench: getload saw {errors} error responses from port {port}")
        total += float(rate)
    return total


def run(tmp: Path, root: Path, hashes: list[str], runs: int, seconds: int) -> list[dict]:
    """(f): GET of cached blobs, `prism reflector --workers 2` against `--workers 1` (same blobs, same run,
    alternating). 2 MiB hits with the light client, next to nginx with 2 and 1 worker processes on the same
    client (the machine's own ceiling: on 2 cores the kernel's loopback TCP work and the client share the
    cores with the server); then 4 KiB hits with wrk, where the server's own work dominates. Report rows."""
    import bench

    small = _small_blobs(tmp / "scaling-small", SMALL_BLOBS, SMALL_SIZE)
    (tmp / "scaling-small.txt").write_text("".join(f"/blob?hash={h}\n" for h in small))
    servers = {}
    try:
        for workers in (1, 2):
            cache = edge_cache_dir(root, hashes, tmp / f"scaling-w{workers}-cache")
            edge_cache_dir(tmp / "scaling-small", small, cache)
            upstream = free_ports(1)[0]  # never asked: every blob is a hit
            servers[f"w{workers}"] = Appliance(tmp / f"scaling-w{workers}", workers, "--upstream-reflector",
                                               f"127.0.0.1:{upstream}", "--upstream-protocol", "http",
                                               "--disk-cache", f"100GB:{cache}:lru")
        for workers in (1, 2):
            directory = tmp / f"scaling-nginx{workers}"
            directory.mkdir()
            conf = bench.NGINX_CONF.replace("worker_processes 2;", f"worker_processes {workers};")
            servers[f"nginx{workers}"] = _Nginx(directory, root, conf)
        big = {name: [] for name in servers}
        tiny = {"w1": [], "w2": []}
        for _ in range(runs):
            for name, server in servers.items():
                big[name].append(light_get(server.port, tmp / "paths.txt", seconds))
            for name in tiny:
                tiny[name].append(bench.wrk_get(servers[name].port, tmp / "scaling-small.txt", tmp / "random.lua",
                                                seconds))
    finally:
        for server in servers.values():
            server.stop()
    share = statistics.median(big["w1"]) / statistics.median(big["nginx2"])
    print(f"(f) 1 worker of ours serves {100 * share:.0f}% of what nginx serves with 2 on this machine", flush=True)
    return [_report("(f) GET 2 MiB hits, 2 vs 1 worker", big["w2"], big["w1"], 1.7),
            _report("(f) nginx, 2 vs 1 worker, same client", big["nginx2"], big["nginx1"], None),
            _report(f"(f) GET {SMALL_SIZE // 1024} KiB hits, wrk, 2 vs 1 worker", tiny["w2"], tiny["w1"], 1.7)]


def _small_blobs(root: Path, count: int, size: int) -> list[str]:
    hashes = []
    for _ in range(count):
        data = os.urandom(size)
        hash_ = hashlib.sha384(data).hexdigest()
        (root / hash_[:2]).mkdir(parents=True, exist_ok=True)
        (root / hash_[:2] / hash_).write_bytes(data)
        hashes.append(hash_)
    return hashes


class _Nginx:
    def __init__(self, directory: Path, root: Path, conf: str):
        import bench

        directory.chmod(0o755)
        self.port = bench.free_port()
        (directory / "nginx.conf").write_text(conf.format(tmp=directory, port=self.port, root=root))
        self.proc = subprocess.Popen(["nginx", "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
                                     stderr=subprocess.DEVNULL)
        bench.wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=10)


def _report(name: str, two: list[float], one: list[float], goal: float | None) -> dict:
    a, b = statistics.median(two), statistics.median(one)
    line = f"{name:<38} 2 workers {a:8.1f} req/s   1 worker {b:8.1f} req/s   ratio {a / b:5.2f}"
    if goal is not None:
        line += f"  (goal >= {goal}: {'met' if a / b >= goal else 'NOT met'})"
    print(line, flush=True)
    return {"test": name, "two_workers": two, "one_worker": one, "two_median": a, "one_median": b,
            "ratio": a / b, "unit": "req/s"}
