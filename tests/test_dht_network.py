"""30 of our DHT nodes on 127.0.0.1 (real UDP sockets, ephemeral ports): announce and find from every
node; `prism dht lookup|connect|bootstrap` as real subprocesses against that network."""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from appliance.dht import iterative
from appliance.dht.bootstrap import BootstrapNode
from appliance.dht.messages import FIND_NODE, Request, Response, decode_message, encode_message, request_args
from appliance.dht.node import Node
from appliance.dht.protocol import RemoteError
from appliance.dht.service import DhtService
from tests.appliance_process import poll

PRISM = [sys.executable, "-m", "appliance.cli.prism"]
NODES = 30
TIMEOUT = 1.0  # per RPC; every node here answers within milliseconds


def random_hash():
    return os.urandom(48).hex()


@pytest.fixture(scope="module")
def network():
    services = []
    try:
        first = DhtService(bind=("127.0.0.1", 0), peer_port=20000, rpc_timeout=TIMEOUT)
        first.start()
        services.append(first)
        for i in range(1, NODES):
            # seeds: the first node and, for some, a later one too (joins need not all go through one node)
            seeds = [f"127.0.0.1:{first.port}"] + ([f"127.0.0.1:{services[-1].port}"] if i % 3 == 0 else [])
            service = DhtService(bind=("127.0.0.1", 0), seeds=seeds, peer_port=20000 + i, rpc_timeout=TIMEOUT)
            service.start()
            assert service.wait_joined(10)
            services.append(service)
        poll(lambda: all(len(s.node.routing) >= 8 for s in services), 15, "every node to know 8 others")
        yield services
    finally:
        for service in services:
            service.stop()


def test_values_announced_from_some_nodes_are_found_from_every_node(network):
    announcers = {random_hash(): [network[3]], random_hash(): [network[11]], random_hash(): [network[29]],
                  random_hash(): [network[7], network[20]]}
    for blob, holders in announcers.items():
        for service in holders:
            assert service.announce([blob]) == 1
    poll(lambda: all(s.status()["announced"] >= 1 for h in announcers.values() for s in h), 15,
         "every announcement")
    assert sum(s.status()["stored_peers"] for s in network) >= 5 * 8 * 0.5  # stores landed on other nodes
    for blob, holders in announcers.items():
        expected = {("127.0.0.1", s.node.peer_port) for s in holders}
        for service in network:
            assert set(service.lookup(blob)) == expected, (blob, service.port)
    assert all(not s.lookup(random_hash()) for s in network[:5])  # nobody holds an unknown hash


def test_announce_stores_on_the_k_closest_nodes_and_withdraw_stops_naming_us(network):
    blob = random_hash()
    announcer = network[5]
    assert announcer.announcer.announce(bytes.fromhex(blob)) == 8
    key = bytes.fromhex(blob)
    holders = [s for s in network if s.node.peers.get(key)]
    closest = sorted(network, key=lambda s: int.from_bytes(s.node_id, "big") ^ int.from_bytes(key, "big"))
    assert {s.port for s in holders} <= {s.port for s in closest[:9]}  # the 8 closest other nodes
    announcer.announce([blob])
    assert announcer.status()["held"] >= 1
    assert announcer.withdraw([blob]) == 1
    assert key not in announcer.node.held
    reply = network[0].node.find_value(("127.0.0.1", announcer.port), key)
    assert all(p.node_id != announcer.node_id for p in reply.peers)


def test_lookups_go_beyond_the_routing_table(network):
    """A fresh node that knows only one contact still finds the K closest nodes to a key."""
    node = Node(bind=("127.0.0.1", 0), rpc_timeout=TIMEOUT)
    node.start()
    try:
        assert node.bootstrap([("127.0.0.1", network[0].port)]) == 1
        key = os.urandom(48)
        found = iterative.find_node(node, key)
        everyone = sorted(network, key=lambda s: int.from_bytes(s.node_id, "big") ^ int.from_bytes(key, "big"))
        assert [c.node_id for c in found] == [s.node_id for s in everyone[:8]]
    finally:
        node.stop()


def run_prism(*args, timeout=30):
    return subprocess.run(PRISM + list(args) + ["--conf", "none"], capture_output=True, text=True, timeout=timeout)


def test_prism_dht_lookup_finds_a_peer_announced_in_the_network(network):
    blob = random_hash()
    network[17].announce([blob])
    poll(lambda: network[17].status()["announced"] >= 1 and not network[17].status()["queued"], 15,
         "node 17 to announce")
    seeds = f"127.0.0.1:{network[4].port},127.0.0.1:{network[9].port}"
    done = run_prism("dht", "lookup", blob, "--seeds", seeds, "--host", "127.0.0.1", "--timeout", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"127.0.0.1:{network[17].node.peer_port}"]

    unknown = run_prism("dht", "lookup", random_hash(), "--seeds", seeds, "--host", "127.0.0.1", "--timeout", "1")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "no peers found" in unknown.stderr.splitlines()[-1]

    bad = run_prism("dht", "lookup", "not-a-hash", "--seeds", seeds)
    assert bad.returncode == 2 and "invalid blob hash" in bad.stderr


def start_prism(args, pattern):
    """Run a long-lived `prism` and wait for its readiness log line; returns (proc, match)."""
    proc = subprocess.Popen(PRISM + args + ["--conf", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline, seen = time.monotonic() + 20, ""
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 0.2)[0]:
            line = proc.stderr.readline()
            seen += line
            match = re.search(pattern, line)
            if match:
                return proc, match
    proc.kill()
    raise AssertionError(f"prism did not start: {seen}{proc.communicate()[1]}")


def stop_prism(proc, signum=signal.SIGTERM):
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_prism_dht_connect_honours_node_id_announces_and_stops_on_sigterm(network):
    node_id, blob = os.urandom(48).hex(), random_hash()
    proc, match = start_prism(["dht", "connect", "--host", "127.0.0.1", "--port", "0", "--nodeID", node_id,
                               "--seeds", f"127.0.0.1:{network[0].port}", "--timeout", "1",
                               "--announce", blob, "--peerPort", "7777"],
                              r"DHT node ([0-9a-f]{96}) on UDP 127\.0\.0\.1:(\d+)")
    try:
        assert match.group(1) == node_id  # reflector.go ignores --nodeID; we do not
        port = int(match.group(2))
        assert network[0].node.ping(("127.0.0.1", port)) == bytes.fromhex(node_id)
        assert ("127.0.0.1", 7777) in poll(lambda: network[12].lookup(blob), 15, "the lookup to find the peer")
    finally:
        assert stop_prism(proc) == 0


def test_prism_dht_bootstrap_introduces_nodes_to_each_other():
    proc, match = start_prism(["dht", "bootstrap", "--port", "0", "--timeout", "1"],
                              r"bootstrap node [0-9a-f]{96} listening on 127\.0\.0\.1:(\d+)")
    seed = ("127.0.0.1", int(match.group(1)))
    first, second = (Node(bind=("127.0.0.1", 0), rpc_timeout=TIMEOUT) for _ in range(2))
    try:
        first.start()
        second.start()
        assert first.bootstrap([seed]) == 1
        # the bootstrap node pings new senders and keeps those that answer: then it hands them out
        poll(lambda: any(c.node_id == first.node_id for c in second.find_node(seed, second.node_id)), 15,
             "the seed to know the first node")
        assert second.bootstrap([seed]) == 1
        assert second.routing.get(first.node_id) is not None
        with pytest.raises(RemoteError):  # a bootstrap node only knows ping and findNode
            second.find_value(seed, os.urandom(48))
    finally:
        first.stop()
        second.stop()
        assert stop_prism(proc, signal.SIGINT) == 0


def test_prism_dht_bootstrap_applies_the_per_source_rate_limit_of_its_config():
    # --conf none: the defaults, dht_rate_limit 100/s after a burst of dht_rate_burst 200
    proc, match = start_prism(["dht", "bootstrap", "--port", "0", "--timeout", "1"],
                              r"bootstrap node [0-9a-f]{96} listening on 127\.0\.0\.1:(\d+)")
    seed = ("127.0.0.1", int(match.group(1)))
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    flooder.bind(("127.0.0.2", 0))
    sender = os.urandom(48)
    try:
        start = time.monotonic()
        for _ in range(10):  # 1,000 findNode requests from one source within about half a second
            for _ in range(100):
                request = Request(os.urandom(20), sender, FIND_NODE, request_args(FIND_NODE, os.urandom(48)))
                flooder.sendto(encode_message(request), seed)
            time.sleep(0.05)
        answers, flooder_quiet = 0, False
        flooder.settimeout(0.5)
        while not flooder_quiet:
            try:
                answers += isinstance(decode_message(flooder.recv(2048)), Response)
            except TimeoutError:
                flooder_quiet = True
        elapsed = time.monotonic() - start
        assert 0 < answers <= 200 + 100 * elapsed + 1
        other = Node(bind=("127.0.0.3", 0), rpc_timeout=TIMEOUT)  # another source is still answered
        other.start()
        try:
            assert other.bootstrap([seed]) == 1
        finally:
            other.stop()
    finally:
        flooder.close()
        assert stop_prism(proc, signal.SIGINT) == 0


def test_bootstrap_node_drops_contacts_that_stop_answering():
    bootstrap = BootstrapNode(bind=("127.0.0.1", 0), rpc_timeout=0.3, reping_interval=0.5)
    node = Node(bind=("127.0.0.1", 0), rpc_timeout=TIMEOUT)
    bootstrap.start()
    node.start()
    try:
        assert node.ping(("127.0.0.1", bootstrap.port))
        poll(lambda: [c.node_id for c in bootstrap.contacts()] == [node.node_id], 15, "the bootstrap node's contact")
        node.stop()
        poll(lambda: not bootstrap.contacts(), 10, "the contact to be dropped")
    finally:
        node.stop()
        bootstrap.stop()


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import os, sys, time
from appliance.dht.service import DhtService

services = [DhtService(bind=("127.0.0.1", 0), peer_port=30000, rpc_timeout=1.0)]
services[0].start()
for i in range(1, 6):
    service = DhtService(bind=("127.0.0.1", 0), seeds=[f"127.0.0.1:{services[0].port}"], peer_port=30000 + i,
                         rpc_timeout=1.0)
    service.start()
    assert service.wait_joined(5)
    services.append(service)
blob = os.urandom(48).hex()
services[3].announce([blob])
deadline = time.monotonic() + 10
while not services[3].status()["announced"] and time.monotonic() < deadline:
    time.sleep(0.05)
print(sorted({port for s in services for _, port in s.lookup(blob)}), len(services[0].node.routing))
for service in services:
    service.stop()
"""


def test_the_service_runs_under_gevent_monkey_patching():
    done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[30003]", "5"]
