"""appliance/cluster.py: hash-range math, MySQL membership on a real MariaDB, the share keeper."""
from __future__ import annotations

import hashlib
import random
import threading

import pytest

from appliance import cluster
from appliance.cluster import (
    SPACE_END,
    WHOLE_SPACE,
    HashRange,
    Membership,
    NameInUse,
    ShareKeeper,
    View,
    interval,
    parse_hash_range,
    share_range,
)
from appliance.db import Database
from appliance.lbry.claims.base58 import ALPHABET
from tests.appliance_process import poll

HEARTBEAT = 0.2


# --- hash ranges -------------------------------------------------------------------------------------

def test_hash_range_bounds_are_prefixes_padded_on_the_right():
    assert parse_hash_range("0-ffff") == WHOLE_SPACE  # reflector.go pads on the left: a sliver at the bottom
    lower = parse_hash_range("0-7f")
    assert lower.bounds() == ("0" * 96, "7f" + "f" * 94)
    upper = parse_hash_range("80-F")  # upper case accepted
    assert upper.bounds() == ("8" + "0" * 95, "f" * 96)
    assert lower.end + 1 == upper.start
    one = parse_hash_range("ab-ab")
    assert ("ab" + "0" * 94) in one and ("ab" + "f" * 94) in one
    assert ("aa" + "f" * 94) not in one and ("ac" + "0" * 94) not in one
    assert parse_hash_range("1" * 96 + "-" + "2" * 96) == HashRange(int("1" * 96, 16), int("2" * 96, 16))


@pytest.mark.parametrize("text", ["", "ff", "0-1-2", "-ff", "0-", "0x0-ff", "g-ff", "0 -ff", "0-" + "f" * 97,
                                  "f-0", "80-7f"])
def test_malformed_hash_ranges_are_refused_in_one_line(text):
    with pytest.raises(ValueError) as info:
        parse_hash_range(text)
    assert "invalid hash range" in str(info.value) and "\n" not in str(info.value)


def _check_partition(whole: HashRange, total: int) -> list[HashRange]:
    parts = [interval(whole, n, total) for n in range(1, total + 1)]
    assert parts[0].start == whole.start
    assert parts[-1].end == whole.end
    for before, after in zip(parts, parts[1:], strict=False):
        assert after.start == before.end + 1  # no gap, no overlap
    sizes = [p.end - p.start + 1 for p in parts]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1  # near-equal
    assert sum(sizes) == whole.end - whole.start + 1  # covers all
    return parts


@pytest.mark.parametrize("total", list(range(1, 41)) + [97, 1000, 65537])
def test_interval_partitions_the_whole_hash_space(total):
    _check_partition(WHOLE_SPACE, total)


def test_interval_partitions_random_and_tiny_ranges():
    rng = random.Random(7)
    for _ in range(200):
        a, b = sorted(rng.randrange(SPACE_END + 1) for _ in range(2))
        _check_partition(HashRange(a, b), rng.randint(1, 60))
    for total in range(1, 30):  # fewer values than members: some parts are empty, every value has one owner
        whole = HashRange(100, 110)
        parts = _check_partition(whole, total)
        for value in range(100, 111):
            assert sum(1 for p in parts if p.start <= value <= p.end) == 1


def test_interval_rejects_positions_outside_the_count():
    for n, total in ((0, 3), (4, 3), (1, 0)):
        with pytest.raises(ValueError):
            interval(WHOLE_SPACE, n, total)


def test_share_from_database_bounds_reaches_the_ends_of_the_space():
    low, high = "1" + "0" * 95, "e" + "0" * 95
    shares = [share_range(n, 3, bounds=(low, high)) for n in (1, 2, 3)]
    inner = [interval(HashRange(int(low, 16), int(high, 16)), n, 3) for n in (1, 2, 3)]
    assert shares[0] == HashRange(0, inner[0].end)
    assert shares[1] == inner[1]
    assert shares[2] == HashRange(inner[2].start, SPACE_END)
    assert share_range(1, 1, bounds=(low, high)) == WHOLE_SPACE
    assert share_range(0, 3, bounds=(low, high)) is None  # not a member
    assert share_range(1, 3, bounds=(None, None)) is None  # nothing stored


def test_a_configured_range_is_divided_among_the_members():
    configured = parse_hash_range("40-7f")
    parts = [share_range(n, 2, configured) for n in (1, 2)]
    assert parts == [parse_hash_range("40-5f"), parse_hash_range("60-7f")]


def test_random_node_names_are_reflector_go_style():
    names = {cluster.random_node_name() for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) == 12 and set(n) <= set(ALPHABET) for n in names)


# --- membership ---------------------------------------------------------------------------------------

class Recorder:
    """Collects the views a member reports."""

    def __init__(self):
        self.views: list[View] = []
        self.lock = threading.Lock()

    def __call__(self, view: View) -> None:
        with self.lock:
            self.views.append(view)

    def last(self) -> View | None:
        with self.lock:
            return self.views[-1] if self.views else None


def member(db, name: str, recorder: Recorder | None = None, **kwargs) -> Membership:
    return Membership(db.dsn, kwargs.pop("cluster", "test"), name, heartbeat=HEARTBEAT, debounce=0.2,
                      on_change=recorder, **kwargs)


def wait_view(recorder: Recorder, index: int, total: int, timeout: float = 10) -> View:
    return poll(lambda: (v := recorder.last()) is not None and (v.index, v.total) == (index, total) and v, timeout,
                f"view {index} of {total} (last: {recorder.last()})")


def test_members_learn_their_index_on_join_leave_and_crash(mysql_db):
    recorders = {name: Recorder() for name in ("node-a", "node-b", "node-c")}
    members = {name: member(mysql_db, name, recorders[name]) for name in recorders}
    other = member(mysql_db, "node-0", cluster="another")  # another cluster in the same database
    try:
        other.start()
        members["node-b"].start()
        wait_view(recorders["node-b"], 1, 1)
        members["node-a"].start()
        members["node-c"].start()
        for index, name in enumerate(sorted(recorders), 1):
            view = wait_view(recorders[name], index, 3)
            assert view.members == ("node-a", "node-b", "node-c")
        # A clean leave deletes the row: the others re-number at their next read.
        members["node-a"].stop(leave=True)
        wait_view(recorders["node-b"], 1, 2)
        wait_view(recorders["node-c"], 2, 2)
        assert mysql_db.query("SELECT name FROM cluster_member WHERE cluster = 'test' ORDER BY name") == \
            [("node-b",), ("node-c",)]
        # A crash leaves the row behind: the heartbeat times out.
        members["node-b"].stop(leave=False)
        wait_view(recorders["node-c"], 1, 1)
        assert ("node-b",) in mysql_db.query("SELECT name FROM cluster_member WHERE cluster = 'test'")
    finally:
        for m in (*members.values(), other):
            m.stop()


def test_a_live_name_is_refused_and_a_dead_ones_row_is_taken_over(mysql_db):
    first = member(mysql_db, "same")
    first.start()
    try:
        with pytest.raises(NameInUse) as info:
            member(mysql_db, "same").join()
        assert "node name same is used by a live member" in str(info.value)
    finally:
        first.stop(leave=False)  # crashed: its row stays until the heartbeat times out
    recorder = Recorder()
    successor = member(mysql_db, "same", recorder)
    successor.start()  # waits out the dead instance's heartbeat, then takes the row
    try:
        wait_view(recorder, 1, 1)
        assert mysql_db.query("SELECT instance FROM cluster_member WHERE name = 'same'") == [(successor.instance,)]
    finally:
        successor.stop()


def test_a_member_is_live_while_its_heartbeat_is_recent(mysql_db):
    recorder = Recorder()
    me = member(mysql_db, "me", recorder)
    me.start()
    try:
        wait_view(recorder, 1, 1)
        # Rows as other nodes would leave them: a heartbeat a minute old (dead) and a fresh one (live).
        mysql_db.query("INSERT INTO cluster_member VALUES ('test', 'aaa-dead', '0123456789abcdef', '', "
                       "UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE, UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE)")
        mysql_db.query("INSERT INTO cluster_member VALUES ('test', 'zzz-live', '0123456789abcdef', '', "
                       "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE)")
        view = wait_view(recorder, 1, 2)
        assert view.members == ("me", "zzz-live")
    finally:
        me.stop()


def test_membership_survives_a_database_restart(private_mariadb):
    db = private_mariadb.test_db
    recorders = {name: Recorder() for name in ("a", "b")}
    members = {name: member(db, name, recorders[name]) for name in recorders}
    try:
        for m in members.values():
            m.start()
        wait_view(recorders["b"], 2, 2)
        private_mariadb.restart()  # every connection dies; heartbeats fail until it is back
        members["a"].stop(leave=True)
        wait_view(recorders["b"], 1, 1, timeout=30)
    finally:
        for m in members.values():
            m.stop()


# --- the share ------------------------------------------------------------------------------------------

def fake_hashes(n: int, seed: int) -> list[str]:
    return sorted(hashlib.sha384(f"{seed}-{i}".encode()).hexdigest() for i in range(n))


class Dht:
    """Stands in for DhtService.announce / withdraw: the set of hashes the node currently announces."""

    def __init__(self):
        self.announced: set[str] = set()
        self.withdrawn: list[str] = []
        self.lock = threading.Lock()

    def announce(self, hashes: list[str]) -> None:
        with self.lock:
            assert not self.announced & set(hashes), "announced twice"
            self.announced.update(hashes)

    def withdraw(self, hashes: list[str]) -> None:
        with self.lock:
            self.announced.difference_update(hashes)
            self.withdrawn.extend(hashes)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.announced)


def expected_share(stored: list[str], index: int, total: int, configured: HashRange | None = None) -> set[str]:
    share = share_range(index, total, configured, (min(stored), max(stored)))
    return {h for h in stored if h in share}


def test_share_keeper_announces_its_share_and_withdraws_what_it_loses(mysql_db, monkeypatch):
    monkeypatch.setattr(cluster, "SCAN_PAGE", 7)  # several pages
    db = Database.from_dsn(mysql_db.dsn)
    stored = fake_hashes(120, 1)
    db.add_blobs((h, 100) for h in stored)
    for h in fake_hashes(10, 2):
        db.add_blob(h, 100, stored=False)  # known but not stored: never announced
    all_known = sorted(stored + fake_hashes(10, 2))
    dht = Dht()
    keeper = ShareKeeper(db, dht.announce, dht.withdraw, rescan=0)
    keeper.start()
    try:
        def reaches(index: int, total: int) -> None:
            want = expected_share(all_known, index, total) & set(stored)
            poll(lambda: dht.snapshot() == want, 10, f"the share {index} of {total}")
            assert keeper.held() == want

        keeper.update(View(1, 3, ("a", "b", "c")))
        reaches(1, 3)
        assert 0 < len(dht.snapshot()) < len(stored)
        keeper.update(View(1, 2, ("a", "c")))  # a member left: the share grows, nothing is withdrawn
        reaches(1, 2)
        assert dht.withdrawn == []
        keeper.update(View(2, 2, ("0", "a")))  # a new first member: ours is now the upper half
        reaches(2, 2)
        assert dht.withdrawn and all(h in expected_share(all_known, 1, 2) for h in dht.withdrawn)
        # A freshly stored hash is announced only when it falls in the share.
        ours = next(h for h in fake_hashes(50, 3) if h in share_range(2, 2, bounds=(all_known[0], all_known[-1])))
        theirs = next(h for h in fake_hashes(50, 3) if h not in share_range(2, 2, bounds=(all_known[0], all_known[-1])))
        assert keeper.offer([ours, theirs, "not-a-hash"]) == [ours]
        assert ours in dht.snapshot() and theirs not in dht.snapshot()
        keeper.update(View(0, 2, ("0", "a")))  # no longer a member: everything is withdrawn
        poll(lambda: not dht.snapshot(), 10, "every hash withdrawn")
        assert keeper.status()["share"] is None
    finally:
        keeper.stop()


def test_share_keeper_divides_a_configured_range_and_rescans_for_new_blobs(mysql_db):
    db = Database.from_dsn(mysql_db.dsn)
    stored = fake_hashes(200, 4)
    db.add_blobs((h, 100) for h in stored)
    configured = parse_hash_range("0-7f")
    dht = Dht()
    keeper = ShareKeeper(db, dht.announce, dht.withdraw, hash_range=configured, rescan=0.2)
    keeper.start()
    try:
        keeper.update(View(2, 2, ("a", "b")))
        mine = {h for h in stored if "40" <= h[:2] <= "7f"}
        poll(lambda: dht.snapshot() == mine, 10, "the second half of 0-7f")
        later = [h for h in fake_hashes(100, 5) if "40" <= h[:2] <= "7f"]
        db.add_blobs((h, 100) for h in later)
        poll(lambda: dht.snapshot() == mine | set(later), 10, "blobs stored later, found by a rescan")
    finally:
        keeper.stop()
