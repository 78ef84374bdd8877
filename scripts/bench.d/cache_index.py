"""scripts/bench cache --index-entries N[,N...]: the cache manager's index at N entries, for each policy.

For each policy and size, in fresh processes: the resident memory per entry of a built index (RSS after
minus before, divided by N: what the cache manager pays per cached blob), the time of a batch of 1,000
access reports, and the time to be ready again after a clean stop (snapshot) and after a crash (snapshot
plus a journal of changes). The anchor: nginx's proxy_cache keys zone holds ~8,000 keys per MB, ~125 bytes
per key.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLICIES = ("lru", "lfu", "arc", "simple")

_BUILD = """
import gc, json, os, sys, time
from appliance.cache.index import CacheIndex, index_path
from appliance.cache.policies import make_policy

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

directory, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
gc.collect()
before = rss()
index = CacheIndex(index_path(directory), make_policy(name, count * 2_000_000))
index.load()
sample = []  # hashes to report uses of (iterating a 10M-entry lfu in eviction order would sort it)
started = time.perf_counter()
for i in range(count):
    hash_ = os.urandom(48).hex()
    index.add(hash_, 2_000_000)
    if i % 10_000 == 0:  # the manager flushes about once a second
        index.flush()
    if i % max(1, count // 1000) == 0:
        sample.append(hash_)
index.flush()
build = time.perf_counter() - started
gc.collect()
after = rss()
with open(os.path.join(directory, "sample.json"), "w") as f:
    json.dump(sample, f)
started = time.perf_counter()
index.touch(*sample)
touches = time.perf_counter() - started
index.close()
print(json.dumps({"bytes_per_entry": (after - before) / count, "build_s": build, "touch_1000_ms": touches * 1000}))
"""

_RESTART = """
import json, os, sys, time
from appliance.cache.index import CacheIndex, index_path
from appliance.cache.policies import make_policy

directory, name, count, crash = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "crash"
started = time.perf_counter()
index = CacheIndex(index_path(directory), make_policy(name, count * 2_000_000))
index.load()
ready = time.perf_counter() - started
assert len(index) == count, (len(index), count)
if crash:  # changes flushed to the journal, then no clean stop: the next start replays them
    with open(os.path.join(directory, "sample.json")) as f:
        sample = json.load(f)
    for _ in range(100):
        index.touch(*sample)
        index.flush()
    index._close_quietly()
else:
    index.close()
print(json.dumps({"ready_s": ready, "needs_scan": index.needs_scan}))
"""


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench index: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(count: int, policies=POLICIES) -> list[dict]:
    rows = []
    for name in policies:
        with tempfile.TemporaryDirectory(prefix="bench-index-") as directory:
            built = _run(_BUILD, directory, name, str(count))
            clean = _run(_RESTART, directory, name, str(count), "crash")  # clean start, then a crash
            crashed = _run(_RESTART, directory, name, str(count), "clean")  # replays 100 batches of changes
            rows.append({"policy": name, "entries": count, **built, "ready_clean_s": clean["ready_s"],
                         "ready_after_crash_s": crashed["ready_s"], "crash_detected": crashed["needs_scan"]})
    return rows


def report(rows: list[dict]) -> None:
    print(f"{'policy':<7} {'entries':>11} {'B/entry':>8} {'1000 uses':>10} {'ready clean':>12} "
          f"{'ready after crash':>18}   (nginx keys zone ~125 B/key)")
    for r in rows:
        print(f"{r['policy']:<7} {r['entries']:>11,} {r['bytes_per_entry']:>8.1f} {r['touch_1000_ms']:>8.2f}ms "
              f"{r['ready_clean_s']:>11.2f}s {r['ready_after_crash_s']:>17.2f}s")
