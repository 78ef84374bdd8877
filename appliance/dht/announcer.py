"""The announcer: tells the DHT, hash by hash, that we hold a blob.

Each held hash is announced when added and again every `reannounce_interval` (reflector.go: 50 min);
a hash whose announce reached nobody is retried after `retry_interval`. Announces are paced by a token
bucket (10/s, burst 10) and run on several worker threads (an announce mostly waits for answers).
One announce = an iterative findNode for the hash, then on each of the K closest nodes a store with a
token from that node (cached 5 min, fetched with findValue) and one retry with a fresh token on
"Invalid token". Our own findValue answers name us for every held hash, which is how the SDK
announces to itself.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from appliance.dht import iterative
from appliance.dht.messages import INVALID_TOKEN, STORED, ContactTriple, MessageError, parse_find_value
from appliance.dht.protocol import RemoteError, RpcError

if TYPE_CHECKING:
    from appliance.dht.node import Node

log = logging.getLogger("dht")

ANNOUNCE_RATE = 10.0
REANNOUNCE_INTERVAL = 3000.0
RETRY_INTERVAL = 60.0
BACKLOG_WARNING_INTERVAL = 60.0


class RateLimiter:
    """Token bucket: acquire() blocks until a token is available (or `stopping` is set)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self, stopping: threading.Event) -> bool:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) / self.rate
            if stopping.wait(wait):
                return False


def store_on(node: Node, contacts: Iterable[ContactTriple], key: bytes, tcp_port: int) -> int:
    """Store ourselves (tcp_port) for `key` on every contact at once; returns how many accepted."""
    tokens = {(c.ip, c.udp_port): None for c in contacts if c.node_id != node.node_id}
    for address in tokens:
        tokens[address] = node.cached_token(address)
    todo, stored = set(tokens), 0
    for _attempt in (1, 2):
        fetches = {a: node.start_find(a, key, value=True) for a in todo if tokens[a] is None}
        for address, call in fetches.items():
            try:
                tokens[address] = parse_find_value(call.wait(), key).token
                node.cache_token(address, tokens[address])
            except (RpcError, MessageError):
                todo.discard(address)
        stores = {a: node.start_store(a, key, tokens[a], tcp_port) for a in todo}
        todo = set()
        for address, call in stores.items():
            try:
                if call.wait() == STORED:
                    stored += 1
            except RemoteError as exc:
                if INVALID_TOKEN in exc.message:
                    node.drop_token(address)
                    tokens[address] = None
                    todo.add(address)
            except RpcError:
                pass
        if not todo:
            break
    return stored


class Announcer:
    """`ready()` says when announcing makes sense (the node has contacts)."""

    def __init__(self, node: Node, *, rate: float = ANNOUNCE_RATE, burst: int = 10,
                 reannounce_interval: float = REANNOUNCE_INTERVAL, retry_interval: float = RETRY_INTERVAL,
                 workers: int = 10, ready: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.rate = rate
        self.reannounce_interval = reannounce_interval
        self.retry_interval = retry_interval
        self.ready = ready or (lambda: len(node.routing) > 0)
        self.clock = clock
        self._limiter = RateLimiter(rate, burst, clock)
        self._cond = threading.Condition()
        self._due: dict[bytes, float] = {}  # held hash -> next announce time
        self._heap: list[tuple[float, bytes]] = []  # (due, hash); stale entries are skipped
        self._announced: set[bytes] = set()  # held hashes whose last announce reached a node
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"dht-announce-{i}", daemon=True)
                         for i in range(workers)]
        self._last_warning = 0.0
        self.stats = {"announces": 0, "stores": 0, "failed": 0}

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def add(self, keys: Iterable[bytes]) -> int:
        """Hold these hashes (48-byte keys): announce each now and periodically; returns how many were new."""
        now, added = self.clock(), 0
        with self._cond:
            for key in keys:
                if key in self._due:
                    continue
                self._due[key] = now
                heapq.heappush(self._heap, (now, key))
                self.node.held.add(key)
                added += 1
            if added:
                self._cond.notify_all()
        return added

    def remove(self, keys: Iterable[bytes]) -> int:
        """Stop announcing these hashes and stop naming ourselves for them; returns how many were held."""
        removed = 0
        with self._cond:
            for key in keys:
                if self._due.pop(key, None) is not None:
                    removed += 1
                self._announced.discard(key)
                self.node.held.discard(key)
            if len(self._heap) > 2 * len(self._due) + 64:  # drop stale heap entries now and then
                self._heap = [(d, k) for d, k in self._heap if self._due.get(k) == d]
                heapq.heapify(self._heap)
        return removed

    def counts(self) -> dict:
        with self._cond:
            held = len(self._due)
            announced = len(self._announced)
        return {"held": held, "announced": announced, "queued": held - announced}

    def _next(self) -> bytes | None:
        """The next due hash (marked in progress), or None when stopping."""
        with self._cond:
            while not self._stopping.is_set():
                self._warn_backlog()
                wait = 1.0
                if self._heap and self.ready():
                    due, key = self._heap[0]
                    if self._due.get(key) != due:
                        heapq.heappop(self._heap)
                        continue
                    now = self.clock()
                    if due <= now:
                        heapq.heappop(self._heap)
                        self._due[key] = float("inf")  # in progress: no second worker takes it
                        return key
                    wait = min(due - now, 1.0)
                self._cond.wait(wait)
        return None

    def _work(self) -> None:
        while True:
            key = self._next()
            if key is None or not self._limiter.acquire(self._stopping):
                return
            try:
                stored = self.announce(key)
            except Exception:
                log.exception("announce of %s failed", key.hex()[:16])
                stored = 0
            with self._cond:
                if key not in self._due:
                    continue  # removed meanwhile
                if stored:
                    self._announced.add(key)
                else:
                    self._announced.discard(key)
                delay = self.reannounce_interval if stored else self.retry_interval
                self._due[key] = self.clock() + delay
                heapq.heappush(self._heap, (self._due[key], key))

    def announce(self, key: bytes) -> int:
        """Announce one hash now; returns on how many nodes it was stored."""
        port = self.node.peer_port
        if not port:
            raise ValueError("cannot announce without a TCP peer port")
        contacts = iterative.find_node(self.node, key)
        stored = store_on(self.node, contacts, key, port)
        self.stats["announces"] += 1
        self.stats["stores"] += stored
        if not stored:
            self.stats["failed"] += 1
        log.debug("announced %s to %d of %d nodes", key.hex()[:16], stored, len(contacts))
        return stored

    def _warn_backlog(self) -> None:
        now = self.clock()
        if now - self._last_warning < BACKLOG_WARNING_INTERVAL:
            return
        self._last_warning = now
        capacity = self.rate * self.reannounce_interval
        if len(self._due) > capacity:
            log.warning("%d hashes to announce, more than %d can be announced every %d s at %g/s",
                        len(self._due), capacity, self.reannounce_interval, self.rate)
