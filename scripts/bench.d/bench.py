"""scripts/bench driver: our blob servers against nginx on the same files, in the same run (127.0.0.1 only).

Each measurement alternates nginx and ours, `--runs` times, and reports medians and the ratio ours/nginx.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
BLOBS = 200
BLOB_SIZE = 2 * 1024 * 1024

# What every nginx of the benches shares; each appends the rest of its http block and closes it.
NGINX_PREAMBLE = """
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 65;
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
"""

NGINX_CONF = NGINX_PREAMBLE + """
    map $arg_hash $blob_path {{
        "~^(?<prefix>[0-9a-f]{{2}})[0-9a-f]{{94}}$" "/$prefix/$arg_hash";
        default "/missing";
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
        location = /blob {{ default_type application/octet-stream; try_files $blob_path =404; }}
    }}
}}
"""

WRK_LUA = """
local paths = {}
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


def make_blobs(root: Path) -> list[str]:
    import hashlib

    hashes = []
    for _ in range(BLOBS):
        data = os.urandom(BLOB_SIZE)
        h = hashlib.sha384(data).hexdigest()
        (root / h[:2]).mkdir(exist_ok=True, mode=0o755)
        (root / h[:2] / h).write_bytes(data)
        hashes.append(h)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return hashes


class Nginx:
    def __init__(self, tmp: Path, root: Path):
        self.port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=self.port, root=root))
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=10)


def wrk_get(port: int, paths_file: Path, lua: Path, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(lua), f"http://127.0.0.1:{port}",
                          "--", str(paths_file)], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"bench: wrk saw {errors.group(1)} error responses:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ab_head(port: int, path: str, seconds: int) -> float:
    out = subprocess.run(["ab", "-q", "-k", "-i", "-c32", "-t", str(seconds), "-n", "10000000",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed is None or int(failed.group(1)) or non2xx:
        raise SystemExit(f"bench: ab reported failures:\n{out}")
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def peer_load(port: int, hashes_file: Path, seconds: int, processes: int = 2, connections: int = 16) -> float:
    """MB/s of SDK-style TCP peer downloads by `processes` x `connections` clients."""
    procs = [subprocess.Popen([PYTHON, str(HERE / "peerload.py"), str(port), str(hashes_file), str(seconds),
                               str(connections)], stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode:
            raise SystemExit("bench: the TCP peer load generator failed")
        total += int(out.split()[0])
    return total / seconds / 1e6


def upload_ingest(port: int, tmp: Path) -> float:
    """MB/s of one 200 MB stream uploaded over the reflector protocol (a fresh stream each run)."""
    out = subprocess.run([PYTHON, str(HERE / "upload.py"), str(port), str(tmp)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"bench: upload failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.split()[0])


def report(name: str, ours: list[float], theirs: list[float] | None, unit: str, goal: float | None,
           baseline: str = "nginx") -> dict:
    mine = statistics.median(ours)
    line = f"{name:<34} ours {mine:10.1f} {unit}"
    result = {"test": name, "ours": ours, "ours_median": mine, "unit": unit}
    if theirs:
        base = statistics.median(theirs)
        ratio = mine / base
        line += f"   {baseline} {base:10.1f} {unit}   ratio {ratio:5.2f}"
        if goal is not None:
            line += f"  (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})"
        result.update({baseline: theirs, f"{baseline}_median": base, "ratio": ratio})
    print(line, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--processes", type=int, default=2, help="workers of prism reflector (SO_REUSEPORT)")
    parser.add_argument("--only", default="a,b,c,d,e,f")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    tmp.chmod(0o755)
    root = tmp / "blobs"
    root.mkdir(mode=0o755)
    results = []
    nginx = ours = None
    try:
        print(f"bench: writing {BLOBS} random 2 MiB blobs under {root}", flush=True)
        hashes = make_blobs(root)
        (tmp / "hashes.txt").write_text("\n".join(hashes) + "\n")
        (tmp / "paths.txt").write_text("".join(f"/blob?hash={h}\n" for h in hashes))
        (tmp / "random.lua").write_text(WRK_LUA)
        for h in hashes:  # warm the page cache for both servers
            (root / h[:2] / h).read_bytes()
        nginx = Nginx(tmp, root)
        import scaling

        ours = scaling.Appliance(tmp / "ours", args.processes, "--storage-dir", str(root))
        print(f"bench: nginx on :{nginx.port}, ours on {ours.ports}; {args.runs} runs of {args.seconds} s each",
              flush=True)
        if "a" in only:
            runs = {"nginx": [], "ours": []}
            for _ in range(args.runs):
                for name, server in (("nginx", nginx), ("ours", ours)):
                    runs[name].append(wrk_get(server.port, tmp / "paths.txt", tmp / "random.lua", args.seconds))
            results.append(report("(a) GET 2 MiB, 200 blobs, c=32", runs["ours"], runs["nginx"], "req/s", 0.9))
        if "b" in only:
            runs = {"nginx": [], "ours": []}
            for _ in range(args.runs):
                for name, server in (("nginx", nginx), ("ours", ours)):
                    runs[name].append(ab_head(server.port, f"/blob?hash={hashes[0]}", args.seconds))
            results.append(report("(b) HEAD, ab -k -c32", runs["ours"], runs["nginx"], "req/s", 0.3))
        if "c" in only:
            runs = {"nginx": [], "ours": []}
            for _ in range(args.runs):
                runs["ours"].append(peer_load(ours.ports["peer"], tmp / "hashes.txt", args.seconds))
                # nginx has no peer protocol: its GET throughput with as many clients is the yardstick
                runs["nginx"].append(wrk_get(nginx.port, tmp / "paths.txt", tmp / "random.lua", args.seconds)
                                     * BLOB_SIZE / 1e6)
            results.append(report("(c) TCP peer downloads, 32 clients", runs["ours"], runs["nginx"], "MB/s", None))
        if "d" in only:
            runs = {"ours": []}
            for _ in range(args.runs):
                runs["ours"].append(upload_ingest(ours.ports["receiver"], tmp))
            results.append(report("(d) upload ingest, 200 MB stream", runs["ours"], None, "MB/s", None))
        if "e" in only:
            import h3bench

            appliance = h3bench.Appliance(tmp, root, args.processes)
            try:
                runs = {"http1": [], "http3": []}
                for _ in range(args.runs):
                    runs["http1"].append(wrk_get(appliance.ports["http"], tmp / "paths.txt", tmp / "random.lua",
                                                 args.seconds) * BLOB_SIZE / 1e6)
                    runs["http3"].append(h3bench.h3_load(appliance.ports["http3"], tmp / "hashes.txt", args.seconds))
                results.append(report("(e) HTTP/3 vs HTTP/1.1 GET 2 MiB, c=32", runs["http3"], runs["http1"], "MB/s",
                                      0.1, baseline="HTTP/1.1"))
                chained = h3bench.chain_cold_misses(tmp, root, appliance, args.runs)
                results.append(report("(e) chained cache cold misses, HTTP/3 upstream vs HTTP/1.1 upstream",
                                      chained["http3"], chained["http"], "MB/s", 0.1, baseline="HTTP/1.1"))
            finally:
                appliance.stop()
        if "f" in only:
            results += scaling.run(tmp, root, hashes, args.runs, args.seconds)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        for server in (ours, nginx):
            if server is not None:
                server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
