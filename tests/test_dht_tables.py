"""Routing table, peer store and tokens: splitting, bad-contact replacement, refresh, expiry, bounds."""
import os

from appliance.dht.addresses import usable
from appliance.dht.messages import Peer
from appliance.dht.peerstore import PeerStore
from appliance.dht.routing import FAILED_TTL, ID_SPACE, MAX_FAILED, RoutingTable, distance
from appliance.dht.tokens import TokenManager


class Clock:
    """A time source the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def node_id(value: int) -> bytes:
    return value.to_bytes(48, "big")


def test_buckets_split_around_our_own_id_and_far_buckets_stay_bounded():
    own = node_id(0)
    table = RoutingTable(own)
    for i in range(200):  # all in the top half of the id space, far from us
        table.add(node_id(ID_SPACE // 2 + i), "127.0.0.1", 10000 + i)
    assert len(table) == 8  # one far bucket of K; the rest wait as replacements
    for i in range(1, 40):  # close to us: buckets keep splitting
        table.add(node_id(i), "127.0.0.1", 20000 + i)
    assert table.bucket_count > 2
    assert len(table) > 16
    closest = table.find_close(node_id(0), 8)
    assert [c.node_id for c in closest] == [node_id(i) for i in range(1, 9)]
    assert all(b["contacts"] <= 8 and b["replacements"] <= 8 for b in table.snapshot())


def test_random_ids_fill_a_bounded_table():
    own = os.urandom(48)
    table = RoutingTable(own)
    for i in range(5000):
        table.add(os.urandom(48), "127.0.0.1", 1024 + i % 60000)
    assert len(table) <= 8 * table.bucket_count <= 8 * 384
    assert len(table) < 300  # roughly K per distance class, not thousands
    ranked = sorted(table.contacts(), key=lambda c: distance(c.node_id, own))
    assert [c.node_id for c in table.find_close(own, 8)] == [c.node_id for c in ranked[:8]]


def test_a_contact_that_fails_is_not_handed_out_gives_way_to_a_replacement_and_leaves_at_its_second_failure():
    own = node_id(0)
    table = RoutingTable(own)
    far = [node_id(ID_SPACE // 2 + i) for i in range(9)]
    for i, nid in enumerate(far[:8]):
        assert table.add(nid, "127.0.0.1", 3000 + i)
    assert not table.add(far[8], "127.0.0.1", 3008)  # full, cannot split: kept as a replacement
    table.fail(("127.0.0.1", 3000))  # first failure, a replacement waits: it takes the place at once
    assert table.get(far[0]) is None and table.get(far[8]) is not None
    assert table.known_failed(("127.0.0.1", 3000)) and not table.known_failed(("127.0.0.1", 3001))
    table.fail(("127.0.0.1", 3001))  # first failure, no replacement left: kept, but never handed out
    assert table.get(far[1]).failures == 1
    assert far[1] not in [c.node_id for c in table.find_close(far[1], 8)]
    assert far[1] in [c.node_id for c in table.find_close(far[1], 8, include_failed=True)]
    assert [c.node_id for c in table.failed_contacts()] == [far[1]]
    table.fail(("127.0.0.1", 3001))  # second failure in a row: gone
    assert table.get(far[1]) is None and len(table) == 7
    table.fail(("127.0.0.1", 3002))
    assert table.add(node_id(ID_SPACE // 2 + 100), "127.0.0.1", 3100)  # room again for a newcomer
    table.add(far[0], "127.0.0.1", 3000)  # it answered after all: no longer skipped
    assert not table.known_failed(("127.0.0.1", 3000))


def test_failed_addresses_are_forgotten_after_their_ttl_and_bounded():
    now = [0.0]
    table = RoutingTable(node_id(0), clock=lambda: now[0])
    table.fail(("127.0.0.1", 1))  # not a contact: remembered all the same (other nodes may name it)
    assert table.known_failed(("127.0.0.1", 1))
    now[0] += FAILED_TTL
    assert not table.known_failed(("127.0.0.1", 1))
    for port in range(MAX_FAILED + 10):
        table.fail(("127.0.0.2", port))
    assert not table.known_failed(("127.0.0.2", 0)) and table.known_failed(("127.0.0.2", MAX_FAILED + 9))


def test_an_answer_resets_failures_and_a_new_id_at_a_known_address_replaces_the_old():
    table = RoutingTable(node_id(0))
    a = node_id(ID_SPACE // 2)
    table.add(a, "127.0.0.1", 3000)
    table.fail(("127.0.0.1", 3000))
    table.add(a, "127.0.0.1", 3000)
    assert table.get(a).failures == 0
    b = node_id(ID_SPACE // 2 + 1)
    table.add(b, "127.0.0.1", 3000)  # the node at that address restarted with another id
    assert table.get(a) is None and table.get(b) is not None
    assert table.at(("127.0.0.1", 3000)) == b and table.at(("127.0.0.1", 3001)) is None
    assert not table.touch(a, "127.0.0.1", 3000)  # requests never insert


def test_stale_buckets_are_offered_for_refresh():
    clock = Clock()
    table = RoutingTable(node_id(0), clock=clock)
    table.add(node_id(ID_SPACE // 2), "127.0.0.1", 3000)
    assert table.stale_ranges(3600) == []
    clock.now += 3601
    targets = table.stale_ranges(3600)
    assert len(targets) == table.bucket_count == 1 and len(targets[0]) == 48


def test_peer_store_expires_refreshes_and_stays_bounded():
    clock = Clock()
    store = PeerStore(ttl=1800, max_per_key=4, max_total=10, clock=clock)
    key = b"k" * 48
    store.add(key, Peer("127.0.0.1", 3333, b"a" * 48))
    clock.now += 1000
    store.add(key, Peer("127.0.0.2", 3334, b"b" * 48))
    clock.now += 1000  # the first is 2000 s old: expired
    assert [p.ip for p in store.get(key)] == ["127.0.0.2"]
    store.add(key, Peer("127.0.0.1", 3333, b"a" * 48))  # a re-store refreshes it
    assert {p.ip for p in store.get(key)} == {"127.0.0.1", "127.0.0.2"}
    for i in range(10):
        store.add(key, Peer(f"127.0.1.{i}", 4000, bytes([i]) * 48))
    assert len(store.get(key)) == 4
    for i in range(30):
        store.add(bytes([i]) * 48, Peer("127.0.2.1", 4000, b"c" * 48))
    assert len(store) == 10 and store.key_count() <= 10
    clock.now += 1801
    assert store.expire() == 10 and len(store) == 0 and store.key_count() == 0


def test_tokens_rotate_and_the_previous_secret_stays_valid():
    clock = Clock()
    tokens = TokenManager(interval=300, clock=clock)
    token = tokens.make("127.0.0.1")
    assert len(token) == 48 and tokens.verify(token, "127.0.0.1") and not tokens.verify(token, "127.0.0.2")
    clock.now += 299
    assert not tokens.maybe_rotate()
    clock.now += 1
    assert tokens.maybe_rotate()
    assert tokens.verify(token, "127.0.0.1")  # previous secret
    clock.now += 300
    assert tokens.maybe_rotate()
    assert not tokens.verify(token, "127.0.0.1")


def test_address_policies():
    assert usable("127.0.0.1", 4444) and usable("10.1.2.3", 80)
    assert not usable("0.0.0.0", 4444) and not usable("127.0.0.1", 0) and not usable("224.0.0.1", 4444)
    assert not usable("255.255.255.255", 4444) and not usable("not-an-ip", 4444)
    assert usable("1.2.3.4", 4444, "public") and not usable("127.0.0.1", 4444, "public")
    assert not usable("192.168.1.1", 4444, "public") and not usable("1.2.3.4", 80, "public")
