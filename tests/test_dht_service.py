"""DhtService and the announcer on real loopback sockets: background joining, token retry, re-announce,
persistent node id, argument checks."""
import logging
import os
import socket
import time

import pytest

from appliance.blob import InvalidBlobHash
from appliance.dht.announcer import store_on
from appliance.dht.messages import Peer
from appliance.dht.node import Node
from appliance.dht.protocol import RpcTimeout
from appliance.dht.routing import Contact
from appliance.dht.service import DhtService, parse_seed, persistent_node_id


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def nodes():
    started = []

    def make(**options):
        node = Node(bind=("127.0.0.1", 0), rpc_timeout=1.0, peer_port=3333, **options)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def test_join_retries_in_the_background_and_warns_once(caplog):
    port = free_udp_port()
    service = DhtService(bind=("127.0.0.1", 0), seeds=[f"127.0.0.1:{port}"], rpc_timeout=0.2, join_retry=(0.1, 0.2))
    seed = Node(bind=("127.0.0.1", port), rpc_timeout=1.0)
    caplog.set_level(logging.INFO, logger="dht")
    service.start()
    try:
        wait_for(lambda: service.node.rpc.stats["timeouts"] >= 3)  # three join attempts went unanswered
        assert not service.wait_joined(0) and service.status()["joined"] is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no DHT seed answered" in warnings[0].getMessage()
        seed.start()  # the seed comes up: the next attempt joins
        assert service.wait_joined(10)
        wait_for(lambda: service.node.routing.get(seed.node_id) is not None)
        assert service.status()["contacts"] >= 1
    finally:
        service.stop()
        seed.stop()


def test_store_retries_once_with_a_fresh_token(nodes):
    announcer, holder = nodes(), nodes()
    key = os.urandom(48)
    address = ("127.0.0.1", holder.port)
    announcer.cache_token(address, b"stale" * 8)  # e.g. from before the holder restarted
    contact = Contact(holder.node_id, *address).triple()
    assert store_on(announcer, [contact], key, 4321) == 1
    assert [(p.ip, p.tcp_port, p.node_id) for p in holder.peers.get(key)] == [("127.0.0.1", 4321, announcer.node_id)]
    assert announcer.cached_token(address) == holder.tokens.make("127.0.0.1")


def test_a_contact_that_stops_answering_is_not_handed_out_then_leaves_the_table(nodes):
    node, other = nodes(), nodes()
    address = ("127.0.0.1", other.port)
    assert node.ping(address) == other.node_id
    assert node.routing.get(other.node_id).failures == 0
    other.stop()
    with pytest.raises(RpcTimeout):
        node.ping(address, timeout=0.2)
    assert node.routing.get(other.node_id).failures == 1  # kept, not handed out
    assert node.routing.find_close(other.node_id) == []
    with pytest.raises(RpcTimeout):
        node.ping(address, timeout=0.2)
    assert node.routing.get(other.node_id) is None  # second failure in a row: gone


def test_hashes_are_reannounced_and_withdrawn(nodes):
    other = nodes()
    service = DhtService(bind=("127.0.0.1", 0), seeds=[f"127.0.0.1:{other.port}"], rpc_timeout=1.0,
                         reannounce_interval=0.2, peer_port=5555)
    service.start()
    try:
        assert service.wait_joined(5)
        blob = os.urandom(48).hex()
        assert service.announce([blob, blob]) == 1
        wait_for(lambda: service.status()["announces"]["announces"] >= 3)  # first announce, then again
        assert service.status()["announced"] == 1 and service.status()["queued"] == 0
        assert other.peers.get(bytes.fromhex(blob))[0].tcp_port == 5555
        assert service.withdraw([blob]) == 1
        count = service.status()["announces"]["announces"]
        assert service.status()["held"] == 0
        time.sleep(0.5)  # more than two re-announce intervals: nothing more may happen
        assert service.status()["announces"]["announces"] <= count + 1  # at most the one in flight
        with pytest.raises(InvalidBlobHash):
            service.announce(["nothex"])
    finally:
        service.stop()


def test_persistent_node_id(tmp_path):
    path = tmp_path / "state" / "dht_node_id"
    first = persistent_node_id(str(path))
    assert len(first) == 48 and path.read_text().strip() == first.hex()
    assert persistent_node_id(str(path)) == first
    assert [p.name for p in path.parent.iterdir()] == ["dht_node_id"]  # no temporary file left behind
    path.write_text("garbage")
    with pytest.raises(ValueError, match="invalid node id"):
        persistent_node_id(str(path))


def test_arguments_are_checked():
    assert parse_seed("lbrynet1.lbry.com:4444") == ("lbrynet1.lbry.com", 4444)
    for bad in ("nohost", ":4444", "host:0", "host:x"):
        with pytest.raises(ValueError):
            parse_seed(bad)
    with pytest.raises(ValueError, match="peer port"):
        DhtService(bind=("127.0.0.1", 0), peer_port=0)
    with pytest.raises(ValueError, match="external IP"):
        DhtService(bind=("127.0.0.1", 0), external_ip="0.0.0.0")
    with pytest.raises(ValueError, match="node id"):
        DhtService(node_id="abcd", bind=("127.0.0.1", 0))
    service = DhtService(bind=("0.0.0.0", 0))  # not started: no socket
    assert service.node.external_ip is None and service.node.self_peer() is None


def test_pings_are_answered_on_the_udp_twin_of_the_tcp_peer_port(nodes):
    """SDK downloaders ping UDP <announced TCP port> and skip peers that stay silent there."""
    client = nodes()
    peer_port = free_udp_port()
    service = DhtService(bind=("127.0.0.1", 0), peer_port=peer_port, rpc_timeout=1.0, answer_on_peer_port=True)
    plain = DhtService(bind=("127.0.0.1", 0), peer_port=free_udp_port(), rpc_timeout=1.0)
    service.start()
    plain.start()
    try:
        assert client.ping(("127.0.0.1", peer_port)) == service.node_id
        assert client.ping(("127.0.0.1", service.port)) == service.node_id
        with pytest.raises(RpcTimeout):
            client.ping(("127.0.0.1", plain.node.peer_port), timeout=0.3)
    finally:
        service.stop()
        plain.stop()


def test_maintenance_rotates_tokens_expires_peers_and_refreshes_buckets(nodes):
    other = nodes()
    node = nodes(token_interval=0, peer_ttl=0, refresh_interval=0)
    assert node.ping(("127.0.0.1", other.port)) == other.node_id
    token = node.tokens.make("127.0.0.1")
    node.peers.add(b"k" * 48, Peer("127.0.0.1", 3333, other.node_id))
    sent = node.rpc.stats["sent"]
    node.maintain_once()
    assert node.tokens.verify(token, "127.0.0.1")  # rotated once: the previous secret still counts
    assert len(node.peers) == 0  # ttl 0: expired
    assert node.rpc.stats["sent"] > sent  # a lookup refreshed the stale bucket
    node.maintain_once()
    assert not node.tokens.verify(token, "127.0.0.1")


def test_stop_does_not_wait_for_outstanding_rpcs():
    silent = free_udp_port()  # nothing answers there
    service = DhtService(bind=("127.0.0.1", 0), rpc_timeout=60.0, peer_port=3333)
    service.start()
    service.node.routing.add(os.urandom(48), "127.0.0.1", silent)
    service.announce([os.urandom(48).hex()])
    wait_for(lambda: service.node.rpc.pending_count() > 0)  # the announce waits on the silent contact
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 5  # not the 60 s RPC timeout, nor a 10 s thread-join timeout
    assert service.node.rpc.pending_count() == 0
