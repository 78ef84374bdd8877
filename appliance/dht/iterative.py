"""Iterative Kademlia lookups: findNode (the K closest live nodes to a key) and findValue (its peers).

Up to alpha requests are in flight at once; every answer adds the contacts it names to the candidates,
and a freed slot goes to the closest candidate not asked yet. A findNode lookup ends when the K closest
candidates that did not fail have all answered. A findValue lookup goes just as far, so that it
collects the peers every one of those nodes holds (and their further pages), not only the first
node's: two announcers need not have reached exactly the same K nodes.

Dead contacts do not hold a lookup up. Contacts that failed to answer us before are not asked (the
routing table remembers them, also when other nodes still name them). A request unanswered after
STALL_AFTER seconds stops counting: its slot goes to the next candidate, and it no longer keeps the
lookup open once another node has answered (its answer is still used if it comes while the lookup
runs, and its timeout still marks the contact failed). So a lookup right after some of its nodes died
costs about STALL_AFTER, not an RPC timeout per dead node.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.dht.messages import ContactTriple, MessageError, Peer, parse_contacts, parse_find_value
from appliance.dht.protocol import PendingCall
from appliance.dht.routing import id_int

if TYPE_CHECKING:
    from appliance.dht.node import Node

MAX_QUERIES = 200  # a lookup never sends more requests than this, whatever the answers say
MAX_PAGES = 16
STALL_AFTER = 1.0  # seconds; far above a DHT round trip, below the 5 s RPC timeout (the SDK moves on after 2.5 s)


@dataclass
class LookupResult:
    contacts: list[ContactTriple]  # the closest nodes that answered, closest first
    peers: list[Peer] = field(default_factory=list)


def find_node(node: Node, key: bytes, extra: list[ContactTriple] | None = None) -> list[ContactTriple]:
    """The K closest nodes to `key` that answered us."""
    return _Lookup(node, key, value=False, extra=extra).run().contacts


def find_value(node: Node, key: bytes, extra: list[ContactTriple] | None = None) -> LookupResult:
    """Peers holding `key` (empty when nobody has it), and the closest nodes that answered."""
    return _Lookup(node, key, value=True, extra=extra).run()


class _Lookup:
    def __init__(self, node: Node, key: bytes, value: bool, extra: list[ContactTriple] | None):
        self.node, self.key, self.value = node, key, value
        self.target = id_int(key)
        self.candidates: dict[bytes, ContactTriple] = {}
        self.queried: set[bytes] = set()
        self.failed: set[bytes] = set()
        self.stalled: set[PendingCall] = set()
        self.answered: dict[bytes, ContactTriple] = {}
        self.inflight: dict[PendingCall, tuple[ContactTriple, int, float]] = {}  # contact, page, stall time
        self.stall_after = min(STALL_AFTER, node.rpc.rpc_timeout)
        self.replies: queue.Queue[PendingCall] = queue.Queue()
        self.peers: dict[tuple[str, int, bytes], Peer] = {}
        self.sent = 0
        # Contacts that failed are skipped, unless nothing else is left (say, after our own network was
        # down for a while): then they are all we have.
        seeds = node.routing.find_close(key, node.k) or node.routing.find_close(key, node.k, include_failed=True)
        for c in seeds:
            self._consider(c.triple(), trust=True)
        for c in extra or []:
            self._consider(c)

    def _consider(self, contact: ContactTriple, trust: bool = False) -> None:
        if contact.node_id == self.node.node_id or contact.node_id in self.candidates:
            return
        if not trust and self.node.routing.known_failed((contact.ip, contact.udp_port)):
            return
        if self.node.usable(contact.ip, contact.udp_port):
            self.candidates[contact.node_id] = contact

    def _distance(self, contact: ContactTriple) -> int:
        return id_int(contact.node_id) ^ self.target

    def run(self) -> LookupResult:
        while True:
            now = self.node.clock()
            self.stalled.update(c for c, (_, _, stall) in self.inflight.items() if stall <= now)
            self._launch()
            if len(self.inflight) == len(self.stalled) and (not self.inflight or self.answered):
                break  # only stalled requests are left, and somebody answered: do not wait for them
            self._wait_one()
        closest = sorted(self.answered.values(), key=self._distance)[:self.node.k]
        return LookupResult(closest, list(self.peers.values()))

    def _launch(self) -> None:
        slow = {self.inflight[call][0].node_id for call in self.stalled}
        live = sorted((c for c in self.candidates.values() if c.node_id not in self.failed and c.node_id not in slow),
                      key=self._distance)
        for contact in live[:self.node.k]:
            if len(self.inflight) - len(self.stalled) >= self.node.alpha or self.sent >= MAX_QUERIES:
                return
            if contact.node_id in self.queried:
                continue
            self._send(contact, 0)

    def _send(self, contact: ContactTriple, page: int) -> None:
        self.queried.add(contact.node_id)
        self.sent += 1
        call = self.node.start_find((contact.ip, contact.udp_port), self.key, self.value, page,
                                    callback=self.replies.put)
        self.inflight[call] = (contact, page, self.node.clock() + self.stall_after)

    def _wait_one(self) -> None:
        wake = min(call.deadline if call in self.stalled else stall for call, (_, _, stall) in self.inflight.items())
        try:
            call = self.replies.get(timeout=max(wake - self.node.clock(), 0) + 0.01)
        except queue.Empty:
            now = self.node.clock()
            # The socket's sweep expires calls too; this covers a receive thread that is busy.
            for call in [c for c in self.inflight if c.deadline <= now]:
                self.node.rpc.expire(call)
            return
        self.stalled.discard(call)
        contact, page, _ = self.inflight.pop(call)  # every call completes exactly once
        if call.error is not None:
            self.failed.add(contact.node_id)
            return
        try:
            self._absorb(contact, page, call.result)
        except MessageError:
            self.failed.add(contact.node_id)

    def _absorb(self, contact: ContactTriple, page: int, result: object) -> None:
        if not self.value:
            contacts = parse_contacts(result)
        else:
            reply = parse_find_value(result, self.key)
            self.node.cache_token((contact.ip, contact.udp_port), reply.token)
            contacts = reply.contacts
            for peer in reply.peers:
                if self.node.usable(peer.ip, peer.tcp_port):
                    self.peers.setdefault((peer.ip, peer.tcp_port, peer.node_id), peer)
            if page == 0 and reply.peers:
                for extra_page in range(1, min(reply.pages, MAX_PAGES)):
                    self._send(contact, extra_page)
        if page == 0:
            self.answered[contact.node_id] = contact
        for c in contacts:
            self._consider(c)
