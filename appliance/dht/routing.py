"""Kademlia routing table: k-buckets over the 384-bit id space, split around our own id.

Buckets cover contiguous id ranges. A full bucket splits when it holds our own id, or when the newcomer
is closer to us than our K-th closest contact (the SDK's rule); otherwise the newcomer takes the place
of a contact that failed to answer, or waits in the bucket's bounded replacement cache until one fails.

A contact that failed to answer an RPC is not handed out (in findNode answers or to our own lookups)
until it answers again; it gives its place to a replacement at once when there is one, and leaves the
table at its second failure in a row. The LBRY SDK removes a contact at its first failure (its
`peer_is_good` is False once an RPC failed after the last reply); we keep it one more round, not handed
out, so that one lost datagram does not cost a good contact. The addresses that failed are remembered
(bounded, for FAILED_TTL) so that lookups skip them when other nodes still name them. Size is bounded:
at most 384 buckets of K contacts and K replacements each.
"""
from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.dht.messages import NODE_ID_LEN, ContactTriple

ID_BITS = NODE_ID_LEN * 8
ID_SPACE = 1 << ID_BITS
BAD_AFTER = 2  # failed RPCs in a row after which a contact leaves the table
FAILED_TTL = 720.0  # how long a failed address is skipped unless it answers (the SDK: CHECK_REFRESH_INTERVAL)
MAX_FAILED = 4096


def id_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two ids."""
    return id_int(a) ^ id_int(b)


@dataclass
class Contact:
    """A node we talk to; `failures` counts RPCs to it that timed out in a row."""

    node_id: bytes
    ip: str
    udp_port: int
    last_seen: float = 0.0
    failures: int = 0
    key: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = id_int(self.node_id)

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.udp_port)

    @property
    def failed(self) -> bool:
        """It did not answer our last RPC: not handed out until it answers again."""
        return self.failures > 0

    def triple(self) -> ContactTriple:
        return ContactTriple(self.node_id, self.ip, self.udp_port)


@dataclass
class KBucket:
    lo: int  # inclusive
    hi: int  # exclusive
    contacts: list[Contact] = field(default_factory=list)  # least recently seen first
    replacements: list[Contact] = field(default_factory=list)  # most recent last
    last_updated: float = 0.0

    def covers(self, key: int) -> bool:
        return self.lo <= key < self.hi

    def find(self, node_id: bytes) -> Contact | None:
        for contact in self.contacts:
            if contact.node_id == node_id:
                return contact
        return None


class RoutingTable:
    """Thread-safe; every method takes the table's lock."""

    def __init__(self, node_id: bytes, k: int = 8, clock: Callable[[], float] = time.monotonic):
        self.node_id = node_id
        self._own = id_int(node_id)
        self.k = k
        self._clock = clock
        self._lock = threading.RLock()
        self._buckets = [KBucket(0, ID_SPACE, last_updated=clock())]
        self._by_address: dict[tuple[str, int], bytes] = {}
        self._failed: OrderedDict[tuple[str, int], float] = OrderedDict()  # address -> when it last failed

    # --- queries ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b.contacts) for b in self._buckets)

    @property
    def bucket_count(self) -> int:
        with self._lock:
            return len(self._buckets)

    def get(self, node_id: bytes) -> Contact | None:
        with self._lock:
            return self._bucket_for(id_int(node_id)).find(node_id)

    def at(self, address: tuple[str, int]) -> bytes | None:
        """The id of the contact at this (ip, udp_port), if any."""
        with self._lock:
            return self._by_address.get(address)

    def contacts(self) -> list[Contact]:
        with self._lock:
            return [c for b in self._buckets for c in b.contacts]

    def find_close(self, key: bytes, count: int | None = None, exclude: bytes | None = None,
                   include_failed: bool = False) -> list[Contact]:
        """The `count` (default K) contacts closest to `key`, closest first, without `exclude` and, unless
        `include_failed`, without those that failed to answer."""
        target = id_int(key)
        with self._lock:
            candidates = [c for b in self._buckets for c in b.contacts
                          if (include_failed or not c.failed) and c.node_id != exclude]
        candidates.sort(key=lambda c: c.key ^ target)
        return candidates[:count or self.k]

    def failed_contacts(self) -> list[Contact]:
        """Contacts that failed their last RPC and are still in the table (to be checked again)."""
        with self._lock:
            return [c for b in self._buckets for c in b.contacts if c.failed]

    def known_failed(self, address: tuple[str, int]) -> bool:
        """Whether an RPC to this address failed within FAILED_TTL and it has not answered since."""
        with self._lock:
            when = self._failed.get(address)
            if when is None:
                return False
            if self._clock() - when < FAILED_TTL:
                return True
            del self._failed[address]
            return False

    def stale_ranges(self, older_than: float) -> list[bytes]:
        """A random id inside each bucket not updated for `older_than` seconds (to refresh with a lookup)."""
        now = self._clock()
        with self._lock:
            stale = [b for b in self._buckets if now - b.last_updated >= older_than]
            return [random.randrange(b.lo, b.hi).to_bytes(NODE_ID_LEN, "big") for b in stale]

    def snapshot(self) -> list[dict]:
        """Buckets with their ranges and contacts, for status output."""
        with self._lock:
            return [{"start": f"{b.lo:096x}", "end": f"{b.hi - 1:096x}", "contacts": len(b.contacts),
                     "replacements": len(b.replacements)} for b in self._buckets]

    # --- updates ---------------------------------------------------------------------------------------

    def add(self, node_id: bytes, ip: str, udp_port: int) -> bool:
        """Insert or refresh a contact that just answered us; False when there is no room for it."""
        if node_id == self.node_id or len(node_id) != NODE_ID_LEN:
            return False
        now = self._clock()
        key = id_int(node_id)
        with self._lock:
            self._failed.pop((ip, udp_port), None)
            previous = self._by_address.get((ip, udp_port))
            if previous is not None and previous != node_id:
                self._remove(previous)  # the node at this address restarted with a new id
            while True:
                bucket = self._bucket_for(key)
                contact = bucket.find(node_id)
                if contact is not None:
                    self._forget_address(contact)
                    contact.ip, contact.udp_port, contact.last_seen, contact.failures = ip, udp_port, now, 0
                    bucket.contacts.remove(contact)
                    bucket.contacts.append(contact)
                    bucket.last_updated = now
                    self._by_address[(ip, udp_port)] = node_id
                    return True
                if len(bucket.contacts) < self.k:
                    self._insert(bucket, Contact(node_id, ip, udp_port, now), now)
                    return True
                if self._should_split(bucket, key):
                    self._split(bucket)
                    continue
                bad = next((c for c in bucket.contacts if c.failed), None)
                if bad is not None:
                    self._drop(bucket, bad)
                    self._insert(bucket, Contact(node_id, ip, udp_port, now), now)
                    return True
                self._remember_replacement(bucket, Contact(node_id, ip, udp_port, now))
                return False

    def touch(self, node_id: bytes, ip: str, udp_port: int) -> bool:
        """Refresh a contact that sent us a request, only if it is already known at that address."""
        with self._lock:
            contact = self.get(node_id)
            if contact is None or contact.address != (ip, udp_port):
                return False
            return self.add(node_id, ip, udp_port)

    def fail(self, address: tuple[str, int]) -> None:
        """An RPC to this address timed out: remember it, and a contact there stops being handed out; it
        gives its place to the latest replacement, or leaves the table at its BAD_AFTER-th failure."""
        with self._lock:
            self._failed[address] = self._clock()
            self._failed.move_to_end(address)
            while len(self._failed) > MAX_FAILED:
                self._failed.popitem(last=False)
            node_id = self._by_address.get(address)
            if node_id is None:
                return
            bucket = self._bucket_for(id_int(node_id))
            contact = bucket.find(node_id)
            if contact is None:
                return
            contact.failures += 1
            if bucket.replacements:
                self._drop(bucket, contact)
                self._insert(bucket, bucket.replacements.pop(), self._clock())
            elif contact.failures >= BAD_AFTER:
                self._drop(bucket, contact)

    def remove(self, node_id: bytes) -> None:
        with self._lock:
            self._remove(node_id)

    # --- internals (lock held) -------------------------------------------------------------------------

    def _bucket_for(self, key: int) -> KBucket:
        for bucket in self._buckets:
            if bucket.covers(key):
                return bucket
        raise AssertionError("the buckets cover the whole id space")

    def _insert(self, bucket: KBucket, contact: Contact, now: float) -> None:
        bucket.contacts.append(contact)
        bucket.replacements = [r for r in bucket.replacements if r.node_id != contact.node_id]
        bucket.last_updated = now
        self._by_address[contact.address] = contact.node_id

    def _drop(self, bucket: KBucket, contact: Contact) -> None:
        bucket.contacts.remove(contact)
        self._forget_address(contact)

    def _forget_address(self, contact: Contact) -> None:
        if self._by_address.get(contact.address) == contact.node_id:
            del self._by_address[contact.address]

    def _remove(self, node_id: bytes) -> None:
        bucket = self._bucket_for(id_int(node_id))
        contact = bucket.find(node_id)
        if contact is not None:
            self._drop(bucket, contact)
        bucket.replacements = [r for r in bucket.replacements if r.node_id != node_id]

    def _remember_replacement(self, bucket: KBucket, contact: Contact) -> None:
        bucket.replacements = [r for r in bucket.replacements if r.node_id != contact.node_id]
        bucket.replacements.append(contact)
        del bucket.replacements[:-self.k]

    def _should_split(self, bucket: KBucket, key: int) -> bool:
        if bucket.hi - bucket.lo <= 1:
            return False
        if bucket.covers(self._own):
            return True
        known = sorted(c.key ^ self._own for b in self._buckets for c in b.contacts)
        kth = known[self.k - 1] if len(known) >= self.k else known[-1]
        return (key ^ self._own) < kth

    def _split(self, bucket: KBucket) -> None:
        middle = (bucket.lo + bucket.hi) // 2
        low = KBucket(bucket.lo, middle, last_updated=bucket.last_updated)
        high = KBucket(middle, bucket.hi, last_updated=bucket.last_updated)
        for contact in bucket.contacts:
            (low if contact.key < middle else high).contacts.append(contact)
        for contact in bucket.replacements:
            (low if contact.key < middle else high).replacements.append(contact)
        index = self._buckets.index(bucket)
        self._buckets[index:index + 1] = [low, high]

