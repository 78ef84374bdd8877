"""Iterative Kademlia lookups: findNode (the K closest live nodes to a key) and findValue (its peers).

Up to alpha requests are in flight at once; every answer adds the contacts it names to the candidates,
and a freed slot goes to the closest candidate not asked yet. A findNode lookup ends when the K closest
candidates that did not fail have all answered. A findValue lookup goes just as far, so that it
collects the peers every one of those nodes holds (and their further pages), not only the first
node's: two announcers need not have reached exactly the same K nodes.
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
        self.answered: dict[bytes, ContactTriple] = {}
        self.inflight: dict[PendingCall, tuple[ContactTriple, int]] = {}
        self.replies: queue.Queue[PendingCall] = queue.Queue()
        self.peers: dict[tuple[str, int, bytes], Peer] = {}
        self.sent = 0
        for c in node.routing.find_close(key, node.k):
            self._consider(c.triple())
        for c in extra or []:
            self._consider(c)

    def _consider(self, contact: ContactTriple) -> None:
        if contact.node_id == self.node.node_id or contact.node_id in self.candidates:
            return
        if self.node.usable(contact.ip, contact.udp_port):
            self.candidates[contact.node_id] = contact

    def _distance(self, contact: ContactTriple) -> int:
        return id_int(contact.node_id) ^ self.target

    def run(self) -> LookupResult:
        while True:
            self._launch()
            if not self.inflight:
                break
            self._wait_one()
        closest = sorted(self.answered.values(), key=self._distance)[:self.node.k]
        return LookupResult(closest, list(self.peers.values()))

    def _launch(self) -> None:
        live = sorted((c for c in self.candidates.values() if c.node_id not in self.failed), key=self._distance)
        for contact in live[:self.node.k]:
            if len(self.inflight) >= self.node.alpha or self.sent >= MAX_QUERIES:
                return
            if contact.node_id in self.queried:
                continue
            self._send(contact, 0)

    def _send(self, contact: ContactTriple, page: int) -> None:
        self.queried.add(contact.node_id)
        self.sent += 1
        call = self.node.start_find((contact.ip, contact.udp_port), self.key, self.value, page,
                                    callback=self.replies.put)
        self.inflight[call] = (contact, page)

    def _wait_one(self) -> None:
        deadline = min(call.deadline for call in self.inflight)
        try:
            call = self.replies.get(timeout=max(deadline - self.node.clock(), 0) + 0.05)
        except queue.Empty:
            # The socket's sweep expires calls too; this covers a receive thread that is busy.
            for call in [c for c in self.inflight if c.deadline <= self.node.clock()]:
                self.node.rpc.expire(call)
            return
        contact, page = self.inflight.pop(call)  # every call completes exactly once
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
