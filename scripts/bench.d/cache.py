"""scripts/bench cache: the cache tier through a two-level chain on 127.0.0.1 (issue 5).

A (standalone, local storage: the origin) <- B (upstream A over HTTP, a disk cache) <- C (upstream B over the
TCP peer protocol, a disk cache); every request goes to C's HTTP port. Each run writes fresh 2 MiB blobs into
A's storage and measures, with the same client (threads on keep-alive connections, each blob asked once):
  hits   blobs already in C's disk cache (each asked HIT_REPEAT times, so the measurement is long enough)
  cold   blobs in neither cache: every one crosses both hops (single-flight lease, SHA-384 check, disk write)
  mixed  half of each, interleaved: a 50% hit ratio
and reports MB/s with cold/hits and mixed/hits as ratios measured in the same run, medians of --runs runs.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scaling import Appliance  # noqa: E402  (scripts/bench.d is this script's directory)

BLOB_SIZE = 2 * 1024 * 1024
HIT_REPEAT = 10


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of one process group."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def sha384_ms() -> float:
    """CPU milliseconds of one SHA-384 of a 2 MiB blob on this machine (what every verifying hop pays)."""
    data = os.urandom(BLOB_SIZE)
    started = time.process_time()
    for _ in range(20):
        hashlib.sha384(data).digest()
    return (time.process_time() - started) / 20 * 1000


class CpuMeter:
    """CPU milliseconds per blob of this process (the load client's threads) and of process groups, over
    one measurement: on a machine where every process shares the cores, throughput follows their sum."""

    def __init__(self, groups: dict[str, int]):
        self.groups = groups

    def __enter__(self) -> CpuMeter:
        self._client = time.process_time()
        self._start = {name: group_cpu(pgid) for name, pgid in self.groups.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.used = {"client": time.process_time() - self._client}
        self.used.update({name: group_cpu(pgid) - self._start[name] for name, pgid in self.groups.items()})

    def per_blob(self, blobs: int) -> dict[str, float]:
        return {name: seconds / blobs * 1000 for name, seconds in self.used.items()}


def write_blobs(root: Path, count: int) -> list[str]:
    """`count` random 2 MiB blobs in reflector.go's layout under root (the origin's local storage)."""
    hashes = []
    for _ in range(count):
        data = os.urandom(BLOB_SIZE)
        hash_ = hashlib.sha384(data).hexdigest()
        (root / hash_[:2]).mkdir(parents=True, exist_ok=True)
        (root / hash_[:2] / hash_).write_bytes(data)
        hashes.append(hash_)
    return hashes


def load(port: int, hashes: list[str], clients: int) -> float:
    """GET every hash once with `clients` keep-alive connections, each body checked; MB/s received."""
    todo = iter(hashes)
    lock = threading.Lock()
    errors: list[str] = []
    received = [0] * clients

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        buf = memoryview(bytearray(BLOB_SIZE + 65536))
        try:
            while True:
                with lock:
                    hash_ = next(todo, None)
                if hash_ is None or errors:
                    return
                conn.request("GET", f"/blob?hash={hash_}")
                response = conn.getresponse()
                n = 0
                while chunk := response.readinto(buf[n:]):
                    n += chunk
                if response.status != 200 or hashlib.sha384(buf[:n]).hexdigest() != hash_:
                    errors.append(f"HTTP {response.status}, {n} bytes for {hash_[:8]}, not the blob")
                received[i] += n
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(f"bench: {len(errors)} failed request(s), e.g. {errors[0]}")
    return sum(received) / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench cache", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blobs", type=int, default=60, help="2 MiB blobs per measurement and run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--workers", type=int, default=2, help="workers of the edge appliance C")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--index-entries", default="1000000", metavar="N[,N...]",
                        help="also measure the cache index at these sizes, each policy (10000000 takes minutes); "
                             "'' skips it")
    parser.add_argument("--index-only", action="store_true", help="only the index measurement")
    args = parser.parse_args()
    if args.index_entries:
        import cache_index

        rows = [row for n in args.index_entries.split(",") for row in cache_index.measure(int(n))]
        cache_index.report(rows)
    if args.index_only:
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-cache-"))
    apps: list[Appliance] = []
    try:
        a = Appliance(tmp / "A", 1, wait=False)
        apps.append(a)
        b = Appliance(tmp / "B", 1, "--upstream-reflector", f"127.0.0.1:{a.http_port}",
                      "--upstream-protocol", "http", "--disk-cache", f"100GB:{tmp / 'B-cache'}:lru", wait=False)
        apps.append(b)
        c = Appliance(tmp / "C", args.workers, "--upstream-reflector", f"127.0.0.1:{b.peer_port}",
                      "--upstream-protocol", "tcp", "--disk-cache", f"100GB:{tmp / 'C-cache'}:lru", wait=False)
        apps.append(c)
        for app in apps:
            app.wait_ready()
        storage = tmp / "A" / "data" / "blobs"
        print(f"bench: chain C :{c.http_port} <- B :{b.peer_port} (tcp) <- A :{a.http_port} (http); "
              f"{args.runs} runs of {args.blobs} x 2 MiB per measurement, {args.clients} clients", flush=True)
        figures: dict[str, list[float]] = {"hits": [], "cold": [], "mixed": [], "cold/hits": [], "mixed/hits": []}
        cpu: dict[str, list[dict[str, float]]] = {"hits": [], "cold": []}
        for run in range(args.runs):
            cached = write_blobs(storage, args.blobs)
            load(c.http_port, cached, args.clients)  # warm: now on B's and C's disks
            cold = write_blobs(storage, args.blobs)
            half_cold = write_blobs(storage, args.blobs // 2)
            mixed = [h for pair in zip(cached[:len(half_cold)], half_cold, strict=True) for h in pair]
            groups = {"C": c.proc.pid, "B": b.proc.pid, "A": a.proc.pid}  # each leads its own process group
            with CpuMeter(groups) as hit_cpu:
                hits = load(c.http_port, cached * HIT_REPEAT, args.clients)
            with CpuMeter(groups) as cold_cpu:
                misses = load(c.http_port, cold, args.clients)
            cpu["hits"].append(hit_cpu.per_blob(len(cached) * HIT_REPEAT))
            cpu["cold"].append(cold_cpu.per_blob(len(cold)))
            both = load(c.http_port, mixed, args.clients)
            for name, value in (("hits", hits), ("cold", misses), ("mixed", both), ("cold/hits", misses / hits),
                                ("mixed/hits", both / hits)):
                figures[name].append(value)
            print(f"  run {run + 1}: hits {hits:.0f} MB/s, cold {misses:.0f} MB/s, 50% hits {both:.0f} MB/s",
                  flush=True)
        medians = {name: statistics.median(values) for name, values in figures.items()}
        print(f"hits (C's disk)                   {medians['hits']:8.1f} MB/s")
        print(f"cold misses through C <- B <- A   {medians['cold']:8.1f} MB/s   ratio to hits "
              f"{medians['cold/hits']:.2f}")
        print(f"50% hit ratio                     {medians['mixed']:8.1f} MB/s   ratio to hits "
              f"{medians['mixed/hits']:.2f}")
        report_cpu({kind: median_cpu(rows) for kind, rows in cpu.items()}, sha384_ms())
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": figures, "medians": medians, "cpu": cpu}, indent=1))
    finally:
        for app in reversed(apps):
            app.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def median_cpu(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(row[name] for row in rows) for name in rows[0]}


def report_cpu(cpu: dict[str, dict[str, float]], sha_ms: float) -> None:
    """Where the CPU of a blob goes, hits against cold misses, and the cold/hits ratio it allows here."""
    for kind, used in cpu.items():
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in used.items())
        print(f"CPU per blob, {kind:<5} {sum(used.values()):5.1f} ms: {parts}")
    bound = sum(cpu["hits"].values()) / sum(cpu["cold"].values())
    print(f"one SHA-384 of a 2 MiB blob: {sha_ms:.1f} ms; a cold blob is hashed by the client, C and B, a hit by the "
          f"client only. With every process on the same {os.cpu_count()} cores, cold/hits can reach at most "
          f"{bound:.2f} (CPU per hit / CPU per cold blob); with nothing but the hashes and the client's share, "
          f"{sum(cpu['hits'].values()) / (sum(cpu['hits'].values()) + 2 * sha_ms):.2f}")


if __name__ == "__main__":
    sys.exit(main())
