"""scripts/bench miss: cache misses of one caching node against nginx `proxy_cache` (issue 13).

One origin, A (`prism reflector` on local storage), in front of it two caching nodes on 127.0.0.1:
  ours   `prism reflector --workers 2` with a disk cache, upstream A over --upstream-protocol (http or tcp)
  nginx  2 workers, `proxy_cache` with `proxy_cache_lock on` and key = the blob hash, upstream A over HTTP
Each run writes fresh 2 MiB blobs into A's storage (one set per side) and measures, with the same client
(threads on keep-alive connections, every body checked by SHA-384, each blob asked once):
  cold   blobs neither cache holds: each is fetched from A while it is relayed to the client
  hits   the same blobs again (each asked HIT_REPEAT times, so the measurement is long enough)
The two sides alternate (which goes first swaps every run); medians of --runs runs and ratios ours/nginx.
Also the CPU time per cold miss of each side's caching node, of the origin and of the client (utime + stime):
with every process on the same cores, throughput follows their sum, so their ratio bounds ours/nginx here, and
unlike MB/s it hardly depends on what else the machine is doing. The SHA-384 our node must compute on a miss
(nginx checks nothing) is measured alongside.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import NGINX_PREAMBLE, free_port, wait_port  # noqa: E402  (scripts/bench.d is this script's directory)
from cache import CpuMeter, load, median_cpu, sha384_ms, write_blobs  # noqa: E402
from scaling import Appliance  # noqa: E402

HIT_REPEAT = 3

NGINX_PROXY_CACHE = NGINX_PREAMBLE + """
    proxy_cache_path {tmp}/c levels=1:2 keys_zone=blobs:10m max_size=20g inactive=1d use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location = /blob {{
            proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_cache blobs; proxy_cache_key $arg_hash; proxy_cache_valid 200 1d; proxy_cache_lock on;
        }}
    }}
}}
"""


class NginxProxyCache:
    def __init__(self, directory: Path, origin_port: int):
        directory.mkdir(parents=True)
        directory.chmod(0o777)  # nginx's workers (nobody) write the cache here
        self.port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_PROXY_CACHE.format(tmp=directory, port=self.port, origin=origin_port))
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench miss", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--blobs", type=int, default=60, help="2 MiB blobs per measurement and run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--upstream-protocol", choices=("http", "tcp"), default="http",
                        help="how our node reaches the origin (nginx always uses HTTP)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-miss-"))
    tmp.chmod(0o755)
    apps: list[Appliance] = []
    nginx = None
    try:
        origin = Appliance(tmp / "A", 1, wait=False)
        apps.append(origin)
        upstream_port = origin.http_port if args.upstream_protocol == "http" else origin.peer_port
        ours = Appliance(tmp / "B", 2, "--upstream-reflector", f"127.0.0.1:{upstream_port}",
                         "--upstream-protocol", args.upstream_protocol,
                         "--disk-cache", f"100GB:{tmp / 'B-cache'}:lru", wait=False)
        apps.append(ours)
        for app in apps:
            app.wait_ready()
        nginx = NginxProxyCache(tmp / "nginx", origin.http_port)
        storage = tmp / "A" / "data" / "blobs"
        print(f"bench: ours :{ours.http_port} and nginx proxy_cache :{nginx.port} in front of A "
              f"(ours over {args.upstream_protocol}, nginx over http); {args.runs} runs of {args.blobs} x 2 MiB, "
              f"{args.clients} clients, bodies checked", flush=True)
        sides = {"ours": ours.http_port, "nginx": nginx.port}
        groups = {"ours": ours.proc.pid, "nginx": nginx.proc.pid}  # each leads its own process group
        figures: dict[str, list[float]] = {f"{kind} {side}": [] for kind in ("cold", "hits") for side in sides}
        cpu: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for run in range(args.runs):
            order = list(sides) if run % 2 == 0 else list(reversed(sides))
            fresh = {side: write_blobs(storage, args.blobs) for side in order}
            line = []
            for kind in ("cold", "hits"):
                for side in order:
                    hashes = fresh[side] if kind == "cold" else fresh[side] * HIT_REPEAT
                    with CpuMeter({"node": groups[side], "origin": origin.proc.pid}) as meter:
                        value = load(sides[side], hashes, args.clients)
                    if kind == "cold":
                        cpu[side].append(meter.per_blob(len(hashes)))
                    figures[f"{kind} {side}"].append(value)
                    line.append(f"{kind} {side} {value:.0f}")
            print(f"  run {run + 1}: " + ", ".join(line) + " MB/s", flush=True)
        medians = {name: statistics.median(values) for name, values in figures.items()}
        report = {}
        for kind in ("cold", "hits"):
            ratio = statistics.median(o / n for o, n in zip(figures[f"{kind} ours"], figures[f"{kind} nginx"],
                                                            strict=True))
            report[kind] = ratio
            print(f"{kind:<5} ours {medians[f'{kind} ours']:7.1f} MB/s   nginx proxy_cache "
                  f"{medians[f'{kind} nginx']:7.1f} MB/s   ours/nginx {ratio:.2f} (median of per-run ratios; "
                  f"goal >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})", flush=True)
        sha_ms = sha384_ms()
        used = {side: median_cpu(rows) for side, rows in cpu.items()}
        for side, parts in used.items():
            print(f"CPU per cold miss, {side:<5} {sum(parts.values()):5.1f} ms: the caching node {parts['node']:.1f}, "
                  f"the client {parts['client']:.1f}, the origin {parts['origin']:.1f}")
        ours_total, nginx_total = sum(used["ours"].values()), sum(used["nginx"].values())
        print(f"one SHA-384 of a 2 MiB blob: {sha_ms:.1f} ms, which our node must spend and nginx does not; beside it "
              f"our node spends {used['ours']['node'] - sha_ms:.1f} ms. With every process on the same "
              f"{os.cpu_count()} cores, ours/nginx can reach at most {nginx_total / ours_total:.2f} at these CPU "
              f"costs, and {nginx_total / (nginx_total + sha_ms):.2f} if our node cost nginx's CPU plus the hash",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"protocol": args.upstream_protocol, "runs": figures,
                                                   "medians": medians, "ratios": report, "cpu": cpu}, indent=1))
    finally:
        if nginx is not None:
            nginx.stop()
        for app in reversed(apps):
            app.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
