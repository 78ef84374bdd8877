import random

import pytest

from appliance.blob import MAX_BLOB_SIZE, blob_hash
from appliance.cache.policies import POLICIES, ARCPolicy, LFUDAPolicy, LRUPolicy, SimplePolicy, make_policy

MB = 1024 * 1024
ALL = sorted(POLICIES)


def h(n) -> str:
    return blob_hash(str(n).encode())


def restored(policy):
    """A fresh policy of the same kind loaded from everything `policy` ever reported as changed."""
    rows = {}
    for upserts, deletes in policy.saved:
        for row in upserts:
            rows[row[0]] = row
        for hash_ in deletes:
            rows.pop(hash_, None)
    copy = type(policy)(policy.capacity)
    assert copy.load(sorted(rows.values(), key=lambda r: r[3]), policy.meta()) == []
    return copy


class Recording:
    """Wraps a policy and drains its changes often, as the index does once a second."""

    def __init__(self, policy):
        self.policy = policy
        self.policy.saved = []

    def drain(self):
        self.policy.saved.append(self.policy.drain_changes())


@pytest.mark.parametrize("name", ALL)
def test_a_50mb_cache_fed_200mb_never_exceeds_50mb(name):
    policy = make_policy(name, 50 * MB)
    rng = random.Random(5)
    written = 0
    cached_files = set()
    keys = [h(i) for i in range(120)]
    while written < 200 * MB:
        key = rng.choice(keys)
        if key in policy:
            policy.touch(key)
            continue
        size = rng.randint(1, MAX_BLOB_SIZE)
        evicted = policy.add(key, size)
        written += size
        cached_files.add(key)
        cached_files.difference_update(evicted)
        assert key not in evicted
        assert policy.used_bytes <= 50 * MB
        assert cached_files == set(policy)  # what the manager would keep on disk is what the policy holds
    assert policy.used_bytes == sum(policy.size_of(k) for k in policy)
    assert policy.evictions > 0


def test_lru_keeps_the_most_recently_used():
    policy = LRUPolicy(10 * MB)
    for i in range(10):
        assert policy.add(h(i), MB) == []
    for i in (2, 5, 7):
        policy.touch(h(i))
    evicted = policy.add(h(10), 3 * MB)
    assert evicted == [h(0), h(1), h(3)]
    assert {h(2), h(5), h(7), h(10)} <= set(policy)


def test_lfu_keeps_the_most_frequently_used():
    policy = LFUDAPolicy(10 * MB)
    for i in range(10):
        policy.add(h(i), MB)
    for i in range(10):
        for _ in range(i):  # blob i used i times
            policy.touch(h(i))
    for i in range(100, 105):
        policy.add(h(i), MB)
    # each newcomer evicts the least used; newcomers (1 use) then beat each other in age order
    assert {h(i) for i in range(5, 10)} <= set(policy)
    assert h(0) not in policy and h(1) not in policy


def test_reflector_go_lfu_scenario():
    """spec §4.5: capacity 3 equal blobs, uses 3/2/1; a fourth evicts the one used once."""
    policy = LFUDAPolicy(3 * MB)
    for key, uses in (("0", 3), ("1", 2), ("2", 1)):
        policy.add(h(key), MB)
        for _ in range(uses):
            policy.touch(h(key))
    assert {h("0"), h("1"), h("2")} == set(policy)
    assert policy.add(h("3"), MB) == [h("2")]
    assert set(policy) == {h("0"), h("1"), h("3")}
    for key in ("0", "1", "3"):
        assert policy.remove(h(key))
    assert len(policy) == 0 and policy.used_bytes == 0


def test_lfuda_ages_out_formerly_popular_blobs():
    policy = LFUDAPolicy(4 * MB)
    policy.add(h("old"), MB)
    for _ in range(20):
        policy.touch(h("old"))
    # a long stream of newer blobs, each used a few times: the age rises until "old" loses
    for i in range(200):
        policy.add(h(i), MB)
        for _ in range(3):
            policy.touch(h(i))
        if h("old") not in policy:
            break
    assert h("old") not in policy


def test_simple_is_fifo_and_ignores_uses():
    policy = SimplePolicy(3 * MB)
    for i in range(3):
        policy.add(h(i), MB)
    policy.touch(h(0))
    assert policy.add(h(3), MB) == [h(0)]


def test_arc_protects_frequently_used_blobs_from_a_scan():
    policy = ARCPolicy(10 * MB)
    for i in range(5):
        policy.add(h(i), MB)
        policy.touch(h(i))  # used twice: T2
    for i in range(100, 160):  # a one-pass scan of 60 blobs
        policy.add(h(i), MB)
    assert {h(i) for i in range(5)} <= set(policy)
    assert policy.used_bytes <= 10 * MB


def test_arc_ghost_hit_grows_t1_target_and_ghosts_are_bounded():
    policy = ARCPolicy(4 * MB)
    for i in range(4):
        policy.add(h(i), MB)
        if i < 2:
            policy.touch(h(i))  # T2: h(0), h(1); T1: h(2), h(3)
    policy.add(h(4), MB)  # T1 is over its target (0): its oldest, h(2), becomes a ghost
    assert policy.list_of(h(2)) == "B1"
    assert h(2) not in policy
    before = policy.target
    policy.add(h(2), MB)  # ghost hit in B1: T1 was too small
    assert policy.target > before
    assert policy.list_of(h(2)) == "T2"
    for i in range(1000, 6000):
        policy.add(h(i), 10)  # tiny blobs: the count bound limits the ghosts
    ghosts = sum(1 for i in range(1000, 6000) if policy.list_of(h(i)) in ("B1", "B2"))
    assert ghosts <= 2 * len(policy) + 1024


@pytest.mark.parametrize("name", ALL)
def test_pinned_blobs_are_never_evicted(name):
    policy = make_policy(name, 4 * MB)
    for i in range(4):
        policy.add(h(i), MB)
    policy.pin(h(0))
    policy.pin(h(1))
    evicted = policy.add(h(9), 2 * MB)
    assert h(0) not in evicted and h(1) not in evicted
    assert h(0) in policy and h(1) in policy and h(9) in policy
    assert policy.used_bytes <= 4 * MB


@pytest.mark.parametrize("name", ALL)
def test_refuses_what_cannot_fit(name):
    policy = make_policy(name, 4 * MB)
    assert policy.add(h("huge"), 5 * MB) == [h("huge")]
    assert h("huge") not in policy and policy.used_bytes == 0
    for i in range(4):
        policy.add(h(i), MB)
        policy.pin(h(i))
    assert policy.add(h("x"), MB) == [h("x")]  # everything else is pinned: the newcomer is refused
    assert h("x") not in policy and policy.used_bytes == 4 * MB
    policy.unpin(h(2))
    assert h(2) in policy.add(h("x"), MB)


@pytest.mark.parametrize("name", ALL)
def test_adopt_goes_to_the_eviction_end_and_never_evicts(name):
    policy = make_policy(name, 3 * MB)
    policy.add(h("hot"), MB)
    policy.touch(h("hot"))
    assert policy.adopt(h("found"), MB) == []
    assert policy.adopt(h("found2"), MB) == []
    assert policy.adopt(h("too-many"), MB) == [h("too-many")]
    assert h("too-many") not in policy
    evicted = policy.add(h("new"), MB)
    assert h("hot") not in evicted and len(evicted) == 1 and evicted[0] in (h("found"), h("found2"))


@pytest.mark.parametrize("name", ALL)
def test_re_adding_updates_the_size(name):
    policy = make_policy(name, 4 * MB)
    policy.add(h(1), MB)
    policy.add(h(1), 2 * MB)
    assert policy.used_bytes == 2 * MB and len(policy) == 1 and policy.size_of(h(1)) == 2 * MB


def test_bad_sizes_and_names():
    with pytest.raises(ValueError):
        LRUPolicy(0)
    with pytest.raises(ValueError, match="unknown cache policy"):
        make_policy("lfuda", MB)
    with pytest.raises(ValueError, match="more than 0"):
        LRUPolicy(MB).add(h(1), 0)


@pytest.mark.parametrize("name", ALL)
def test_saved_changes_restore_the_same_eviction_order(name):
    """Rows drained at random moments, replayed into a fresh policy: both then evict identically."""
    policy = make_policy(name, 20 * MB)
    recorder = Recording(policy)
    rng = random.Random(7)
    keys = [h(i) for i in range(60)]
    for step in range(3000):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.05:
            policy.adopt(key, rng.randint(1, MB))
        elif roll < 0.08:
            policy.remove(key)
        elif key in policy and roll < 0.7:
            policy.touch(key)
        else:
            policy.add(key, rng.randint(1, MB))
        if step % 37 == 0:
            recorder.drain()
    recorder.drain()
    copy = restored(policy)
    assert list(copy) == list(policy)
    assert copy.used_bytes == policy.used_bytes
    for i in range(100, 130):
        assert copy.add(h(i), MB) == policy.add(h(i), MB)


@pytest.mark.parametrize("name", ALL)
def test_load_drops_what_exceeds_a_smaller_capacity(name):
    policy = make_policy(name, 10 * MB)
    for i in range(10):
        policy.add(h(i), MB)
    upserts, _ = policy.drain_changes()
    smaller = make_policy(name, 4 * MB)
    dropped = smaller.load(sorted(upserts, key=lambda r: r[3]), policy.meta())
    assert len(dropped) == 6 and smaller.used_bytes == 4 * MB
    assert set(smaller).isdisjoint(dropped)
    _, deletes = smaller.drain_changes()
    assert set(dropped) <= set(deletes)
