"""`prism start`: three real nodes (supervisor, worker, DHT process in cluster mode) over one MariaDB
database and one S3 bucket divide the stored hashes; a node killed with SIGKILL is noticed and its share
re-divided; the DHT finds every hash at the node that owns it. Plus the command's one-line errors."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.blob import blob_hash
from appliance.clients.peer import PeerClient
from appliance.clients.reflector import ReflectorClient
from appliance.dht.service import DhtService
from tests.appliance_process import Appliance, child_env, free_ports, poll

PRISM = [sys.executable, "-m", "appliance.cli.prism"]
HEARTBEAT = "0.3"
BLOBS = 60  # enough that every part of every division holds some (a part is empty with p < 1e-4)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_prism(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*PRISM, *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


def write_conf(directory: Path, **values) -> str:
    path = directory / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


class Node:
    """One `prism start` node in its own directory and process group (an Appliance with prism's argv)."""

    def __init__(self, directory: Path, conf: str, name: str, seeds: list[str]):
        self.name = name
        self.app = Appliance(directory, ())
        receiver, peer, metrics = free_ports(3)
        self.peer_port, self.dht_port = peer, free_udp_port()
        self.app.ports = {"receiver": receiver, "tcp_peer": peer, "metrics": metrics}
        self.app.argv = [*PRISM, "start", "new" if not seeds else "127.0.0.1:17946", "--conf", conf,
                         "--listen-address", "127.0.0.1", "--reflector-port", str(receiver), "--peer-port", str(peer),
                         "--metrics-port", str(metrics), "--dht-port", str(self.dht_port),
                         "--dht-seeds", ",".join(seeds), "--node-name", name, "--cluster-heartbeat", HEARTBEAT,
                         "--cluster-rescan", "0.5", "--workers", "1"]

    @property
    def dht_address(self) -> str:
        return f"127.0.0.1:{self.dht_port}"

    def cluster(self) -> dict:
        """The DHT process's cluster status: node, members, index, total, share, held, ..."""
        dht = next(p for p in self.app.status()["processes"] if p["role"] == "dht")
        assert dht["state"] == "ready", dht
        return self.app.status()["dht"].get("cluster", {})

    def kill(self) -> None:
        """SIGKILL the whole node: no clean leave, the others must notice the silent heartbeat."""
        os.killpg(self.app.proc.pid, signal.SIGKILL)
        self.app.proc.wait(10)


@pytest.fixture
def prism_nodes(tmp_path):
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.app.kill_all()


def upload(node: Node, count: int) -> dict[str, bytes]:
    blobs = {}
    with ReflectorClient("127.0.0.1", node.app.ports["receiver"], timeout=30) as client:
        for _ in range(count):
            data = os.urandom(256)
            assert client.send_blob(blob_hash(data), data)
            blobs[blob_hash(data)] = data
    return blobs


def settled(nodes: list[Node], total: int, count: int, announced: bool = True) -> bool:
    """Every node counts `total` members, their shares follow each other from the first hash to the last,
    they hold `count` hashes in all (each node only hashes of its share) and, unless told otherwise, every
    held hash has been announced."""
    states = [node.cluster() for node in nodes]
    if any(s.get("total") != total or not s.get("share") for s in states):
        return False
    bounds = [int(x, 16) for s in states for x in s["share"]]
    if bounds != [0, *[v for e in bounds[1:-1:2] for v in (e, e + 1)], (1 << 384) - 1]:
        return False  # a node still works with another division (e.g. older MIN/MAX of the database)
    if sum(s["held"] for s in states) != count:
        return False
    dhts = [node.app.status()["dht"] for node in nodes]
    return not announced or all(d["announced"] == d["held"] for d in dhts)


def names_itself(client: DhtService, node: Node, hash_: str) -> bool:
    """Whether `node`'s own findValue answer names `node` as a holder of the hash."""
    reply = client.node.find_value(("127.0.0.1", node.dht_port), bytes.fromhex(hash_))
    return any(p.tcp_port == node.peer_port for p in reply.peers)


def owners(client: DhtService, nodes: list[Node], hashes) -> dict[str, Node]:
    """hash -> the one node that says it holds it (fails when none or several do)."""
    owner = {}
    for hash_ in hashes:
        holders = [n for n in nodes if names_itself(client, n, hash_)]
        assert len(holders) == 1, (hash_, [n.name for n in holders])
        owner[hash_] = holders[0]
    return owner


def assert_contiguous_partition(owner: dict[str, Node], order: list[Node]) -> None:
    """In hash order the owners come as one run per node, following the sorted node names."""
    runs = []
    for hash_ in sorted(owner):
        if not runs or runs[-1] is not owner[hash_]:
            runs.append(owner[hash_])
    assert runs == order, [n.name for n in runs]


def test_three_nodes_divide_the_hashes_and_redivide_when_one_is_killed(tmp_path, mysql_db, s3_bucket, prism_nodes):
    # protected_content_url = "": nothing may reach outside this machine.
    conf = write_conf(tmp_path, db_conn=mysql_db.dsn, protected_content_url="", **s3_bucket.config_values())
    first = Node(tmp_path / "a", conf, "node-a", seeds=[])
    prism_nodes.append(first)
    for name in ("node-b", "node-c"):
        prism_nodes.append(Node(tmp_path / name[-1], conf, name, seeds=[first.dht_address]))
    for node in prism_nodes:
        node.app.start(wait=False)
    for node in prism_nodes:
        node.app.wait_ready(60)
    a, b, c = prism_nodes
    poll(lambda: [n.cluster().get("index") for n in prism_nodes] == [1, 2, 3], 20, "indexes 1, 2, 3 of 3")
    assert a.cluster()["members"] == ["node-a", "node-b", "node-c"]

    # Blobs uploaded to one node land in S3 and the database; every node finds its share there.
    blobs = upload(b, BLOBS)
    assert s3_bucket.keys() == set(blobs)
    poll(lambda: settled(prism_nodes, 3, BLOBS), 30, "three shares holding every hash, all announced")

    client = DhtService(bind=("127.0.0.1", 0), seeds=[first.dht_address], rpc_timeout=0.5)
    client.start(join=False)
    try:
        assert client.join_once()
        # Each hash is held by exactly one node, the shares follow the node names, and a DHT lookup
        # finds the owner (stores made while the shares moved during the upload may name others too:
        # DHT entries only expire).
        owner = owners(client, prism_nodes, blobs)
        assert_contiguous_partition(owner, [a, b, c])
        for hash_ in blobs:
            assert ("127.0.0.1", owner[hash_].peer_port) in client.lookup(hash_)
        for node in prism_nodes:  # the owner found in the DHT serves the blob over its TCP peer port
            hash_ = next(h for h, n in owner.items() if n is node)
            with PeerClient("127.0.0.1", node.peer_port, timeout=10) as peer:
                assert peer.get_blob(hash_) == blobs[hash_]
        lookup = run_prism("dht", "lookup", hash_, "--seeds", b.dht_address, "--host", "127.0.0.1",
                           "--timeout", "2", cwd=tmp_path)
        assert lookup.returncode == 0, lookup.stderr
        assert f"127.0.0.1:{c.peer_port}" in lookup.stdout.split()

        # SIGKILL the first node: b and c notice its silent heartbeat and divide everything in two.
        a.kill()
        poll(lambda: [n.cluster().get("index") for n in (b, c)] == [1, 2], 20, "indexes 1, 2 of 2")
        poll(lambda: settled([b, c], 2, BLOBS, announced=False), 20, "two shares holding every hash")
        new_owner = owners(client, [b, c], blobs)
        assert_contiguous_partition(new_owner, [b, c])
        moved = [h for h in blobs if owner[h] is b and new_owner[h] is c]
        assert moved, "b's old share reached past the new middle: some of it went to c"
        # b withdrew those (its answers no longer name it: checked by owners()); lookups find c.
        for hash_ in moved[:3]:
            assert ("127.0.0.1", c.peer_port) in client.lookup(hash_)
    finally:
        client.stop()
    for node in (b, c):
        assert node.app.stop() == 0
    # A clean stop deletes the member's row; the killed node's row stays until it is forgotten.
    assert mysql_db.query("SELECT name FROM cluster_member ORDER BY name") == [("node-a",)]


def test_start_needs_a_database_and_s3_in_the_config(tmp_path, s3_bucket):
    no_db = run_prism("start", "new", "--conf", write_conf(tmp_path, **s3_bucket.config_values()), cwd=tmp_path)
    assert (no_db.returncode, no_db.stderr.strip().splitlines()[-1]) == (1, "prism: db required in conf")
    dsn = "u:p@tcp(127.0.0.1:9)/x"
    no_s3 = run_prism("start", "new", "--conf", write_conf(tmp_path, db_conn=dsn), cwd=tmp_path)
    assert (no_s3.returncode, no_s3.stderr.strip().splitlines()[-1]) == (1, "prism: blobs required in conf")


@pytest.mark.parametrize("value", ["ff", "0-1-2", "0-zz", "f-0"])
def test_start_refuses_a_bad_hash_range_in_one_line(tmp_path, s3_bucket, value):
    conf = write_conf(tmp_path, db_conn="u:p@tcp(127.0.0.1:9)/x", **s3_bucket.config_values())
    done = run_prism("start", "new", "--conf", conf, "--hash-range", value, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"prism: invalid hash range '{value}'")


def test_start_says_so_when_the_database_cannot_be_reached(tmp_path, s3_bucket):
    dead_port = free_ports(1)[0]
    conf = write_conf(tmp_path, db_conn=f"u:p@tcp(127.0.0.1:{dead_port})/x", **s3_bucket.config_values())
    done = run_prism("start", "new", "--conf", conf, "--metrics-port", "0", cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("prism: database u:***@tcp(127.0.0.1:") and "p@" not in last
    assert not (tmp_path / "run").exists()  # nothing was started
