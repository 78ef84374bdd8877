"""DHT lookups after nodes die (issue 14 item 7): 10 of our nodes on 127.0.0.1, 5 s RPC timeout (the SDK's).

Per round, in a fresh network: the lookup time of a hash from each of 7 nodes while all 10 live (the
baseline), then 3 nodes are stopped (the 3 closest to the hash besides the announcer) and each of the 7
survivors looks the hash up at once ("first"), then again once their RPCs to the dead have timed out
("later"). Rounds alternate between this tree and a baseline tree (`--baseline-rev`, extracted with git
archive) so both are measured in the same run; figures are medians over rounds of each round's median.

Then issue 15's amplification probe: 2,000 findNode datagrams from one source, with the default limits
and with none.

Usage: scripts/bench dht [--rounds N] [--baseline-rev REV]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_round() -> dict:
    """Run in a child whose sys.path starts with the tree under test; prints one JSON line."""
    from appliance.dht import iterative
    from appliance.dht.service import DhtService

    services = []
    try:
        first = DhtService(bind=("127.0.0.1", 0), peer_port=22000)
        first.start()
        services.append(first)
        for i in range(1, 10):
            service = DhtService(bind=("127.0.0.1", 0), seeds=[f"127.0.0.1:{first.port}"], peer_port=22000 + i)
            service.start()
            service.wait_joined(10)
            services.append(service)
        for service in services:
            iterative.find_node(service.node, service.node_id)
        blob = os.urandom(48).hex()
        key = int(blob, 16)
        services[0].announce([blob])
        deadline = time.monotonic() + 30
        while services[0].status()["announced"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = ("127.0.0.1", services[0].node.peer_port)
        others = sorted(services[1:], key=lambda s: int.from_bytes(s.node_id, "big") ^ key)
        dead, survivors = others[:3], [services[0]] + others[3:]

        def timed() -> tuple[list[float], int]:
            times, found = [], 0
            for service in survivors[1:]:
                start = time.monotonic()
                found += holder in service.lookup(blob)
                times.append(time.monotonic() - start)
            return times, found

        live, found_live = timed()
        for service in dead:
            service.stop()
        first_times, found_first = timed()
        time.sleep(6)  # every RPC to the dead has timed out (5 s)
        later, found_later = timed()
        return {"live": live, "first": first_times, "later": later,
                "found": [found_live, found_first, found_later], "lookups": len(survivors) - 1}
    finally:
        for service in services:
            service.stop()  # (again for the dead: stop is idempotent)


def amplification(count: int = 2000) -> None:
    """issue 15's probe: `count` findNode datagrams from one source within a second, to a node offered 200
    contacts (its table keeps those that fit), with the default limits and with none (the baseline);
    bytes out/in and the largest answer."""
    import socket

    from appliance.config import SETTINGS
    from appliance.dht.messages import FIND_NODE, Request, Response, decode_message, encode_message, request_args
    from appliance.dht.node import Node

    defaults = {s.key: s.default for s in SETTINGS}
    print(f"{count} findNode datagrams from one source within ~1 s, to a node with a full table")
    for name, options in (("no limits", {}), ("defaults", {"rate_limit": defaults["dht_rate_limit"],
                                                            "rate_burst": defaults["dht_rate_burst"],
                                                            "max_amplification": defaults["dht_max_amplification"]})):
        for form in ("SDK request", "stripped request"):
            node = Node(bind=("127.0.0.1", 0), **options)
            node.start()
            for i in range(200):
                node.routing.add(os.urandom(48), f"203.{i}.113.{200 + i % 50}", 40000 + i)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.bind(("127.0.0.2", 0))
            sender, sent, largest, received, answered = os.urandom(48), 0, 0.0, 0, 0
            for i in range(count):
                args = request_args(FIND_NODE, os.urandom(48)) if form == "SDK request" else [os.urandom(48)]
                data = encode_message(Request(os.urandom(20), sender, FIND_NODE, args))
                sock.sendto(data, ("127.0.0.1", node.port))
                sent += len(data)
                if i % 100 == 99:
                    time.sleep(0.04)
            sock.settimeout(0.5)
            try:
                while True:
                    reply = sock.recv(2048)
                    if isinstance(decode_message(reply), Response):  # (not the node's ping back)
                        answered += 1
                        received += len(reply)
                        largest = max(largest, len(reply) / len(data))
            except TimeoutError:
                pass
            node.stop()
            sock.close()
            print(f"  {name:>9}, {form:>16} ({len(data)} B): {node.rpc.stats['received']} reached the node, "
                  f"{answered} answered, bytes out/in "
                  f"{received / sent:.2f}, largest answer {largest:.1f}x its request")


def run_tree(tree: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"round failed in {tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-rev", default="1460001", help="the tree to compare with (default: before "
                        "issue 14 item 7)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_round()))
        return 0
    with tempfile.TemporaryDirectory() as baseline:
        archive = subprocess.run(["git", "-C", REPO, "archive", args.baseline_rev, "appliance"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", baseline], input=archive, check=True)
        trees = {"this tree": REPO, f"baseline {args.baseline_rev}": baseline}
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for i in range(args.rounds):
            for name, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
                results[name].append(run_tree(tree))
                print(f"round {i + 1} {name}: " + ", ".join(
                    f"{k} median {statistics.median(results[name][-1][k]):.2f} s" for k in ("live", "first", "later")),
                    file=sys.stderr)
    print(f"DHT lookups through 7 survivors of 10 nodes, 3 dead; medians over {args.rounds} rounds")
    summary = {}
    for name, rounds in results.items():
        live = statistics.median(statistics.median(r["live"]) for r in rounds)
        first = statistics.median(statistics.median(r["first"]) for r in rounds)
        worst = max(max(r["first"]) for r in rounds)
        later = statistics.median(statistics.median(r["later"]) for r in rounds)
        found = [sum(r["found"][j] for r in rounds) for j in range(3)]
        total = sum(r["lookups"] for r in rounds)
        print(f"  {name:>18}: all live {live:.3f} s | right after 3 died {first:.3f} s (worst {worst:.3f} s, "
              f"{first / live:.0f}x live) | after their timeouts {later:.3f} s | found {found[0]}/{found[1]}/"
              f"{found[2]} of {total}")
        summary[name] = (first, later)
    (first, later), (base_first, base_later) = summary.values()
    print(f"  this tree / baseline: right after {first / base_first:.2f}, after the timeouts {later / base_later:.3f}")
    amplification()
    return 0


if __name__ == "__main__":
    sys.exit(main())
