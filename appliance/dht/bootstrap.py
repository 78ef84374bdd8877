"""reflector.go's bootstrap node (`prism dht bootstrap`): a directory of live nodes, not a full node.

It answers ping (pong) and findNode (up to K random known contacts, whatever the target), and
refuses every other method with an error (reflector.go stays silent; an error spares the asker a
timeout). Every sender it does not know is pinged and kept once it answers; contacts inactive for
`reping_interval` are pinged again and dropped when they do not answer. At most `max_contacts`. Requests
over `rate_limit` per source IP are dropped, and answers stay within `max_amplification` of their request.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from appliance.dht import addresses
from appliance.dht.messages import (
    FIND_NODE,
    PING,
    PONG,
    VALUE_ERROR,
    ErrorReply,
    MessageError,
    Request,
    Response,
    contact_triple,
    parse_key_arg,
    request_args,
)
from appliance.dht.node import parse_node_id
from appliance.dht.protocol import PendingCall, RpcSocket
from appliance.dht.ratelimit import SourceLimiter

log = logging.getLogger("dht")

REPING_INTERVAL = 60.0


class Known(NamedTuple):
    node_id: bytes
    address: tuple[str, int]
    last_active: float


class BootstrapNode:
    def __init__(self, node_id: bytes | str | None = None, bind: tuple[str, int] = ("127.0.0.1", 4567), *,
                 k: int = 8, rpc_timeout: float = 5.0, reping_interval: float = REPING_INTERVAL,
                 max_contacts: int = 10_000, address_policy: str = "any", rate_limit: float | None = None,
                 rate_burst: float | None = None, max_amplification: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.node_id = parse_node_id(node_id)
        self.k = k
        self.reping_interval = reping_interval
        self.max_contacts = max_contacts
        self.address_policy = address_policy
        self.clock = clock
        # The same per-source limits as a full node (appliance.dht.node): a bootstrap node is the most public
        # address of a network, and a findNode answer is the largest one it sends.
        limiter = SourceLimiter(rate_limit, rate_burst or rate_limit, clock=clock) if rate_limit else None
        self.rpc = RpcSocket(self.node_id, bind, self._on_request, rpc_timeout=rpc_timeout, limiter=limiter,
                             max_amplification=max_amplification, clock=clock)
        self._lock = threading.Lock()
        self._known: dict[bytes, Known] = {}
        self._checking: set[tuple[str, int]] = set()  # addresses with a ping in flight
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.rpc.port

    def start(self) -> None:
        self.rpc.start()
        self._thread = threading.Thread(target=self._reping_loop, name="dht-bootstrap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.rpc.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def contacts(self) -> list[Known]:
        with self._lock:
            return list(self._known.values())

    def _on_request(self, request: Request, address: tuple[str, int]) -> Response | ErrorReply | None:
        if request.node_id == self.node_id:
            return None
        self._saw(request.node_id, address)
        if request.method == PING:
            return Response(request.rpc_id, self.node_id, PONG)
        if request.method == FIND_NODE:
            try:
                parse_key_arg(request.args, "findNode")
            except MessageError as exc:
                return ErrorReply(request.rpc_id, self.node_id, VALUE_ERROR, str(exc).encode())
            with self._lock:
                others = [c for c in self._known.values() if c.node_id != request.node_id]
            chosen = random.sample(others, min(self.k, len(others)))
            return Response(request.rpc_id, self.node_id, [contact_triple(c.node_id, *c.address) for c in chosen])
        return ErrorReply(request.rpc_id, self.node_id, VALUE_ERROR,
                          b"bootstrap node: only ping and findNode are supported")

    def _saw(self, node_id: bytes, address: tuple[str, int]) -> None:
        """A request from `node_id`: refresh it if known, else ping it and keep it if it answers."""
        now = self.clock()
        with self._lock:
            known = self._known.get(node_id)
            if known is not None and known.address == address:
                self._known[node_id] = known._replace(last_active=now)
                return
            if (address in self._checking or len(self._known) >= self.max_contacts
                    or not addresses.usable(*address, self.address_policy)):
                return
            self._checking.add(address)
        self._ping(address)

    def _ping(self, address: tuple[str, int], known_id: bytes | None = None) -> None:
        def done(call: PendingCall) -> None:
            with self._lock:
                self._checking.discard(address)
                if call.error is None and call.result == PONG and call.responder:
                    if known_id is not None and known_id != call.responder:
                        self._known.pop(known_id, None)
                    if call.responder in self._known or len(self._known) < self.max_contacts:
                        self._known[call.responder] = Known(call.responder, address, self.clock())
                elif known_id is not None:
                    self._known.pop(known_id, None)
                    log.debug("bootstrap: dropped %s:%d", *address)

        self.rpc.start_call(address, PING, request_args(PING), callback=done)

    def _reping_loop(self) -> None:
        while not self._stopping.wait(self.reping_interval / 5):
            cutoff = self.clock() - self.reping_interval
            with self._lock:
                stale = [c for c in self._known.values() if c.last_active < cutoff and c.address not in self._checking]
                self._checking.update(c.address for c in stale)
            for contact in stale:
                self._ping(contact.address, contact.node_id)
