"""A Kademlia node speaking LBRY's DHT: our server side (RequestHandler), our RPC client, maintenance.

Contacts enter the routing table only by answering one of our requests (as SDK nodes do); a request
from a node we do not know gets a ping back, so nodes that contact us end up in our table once they
prove reachable. A maintenance thread rotates the token secret, expires stored peers, pings again
the contacts that failed to answer (an answer restores them, a second failure removes them) and
refreshes buckets nobody touched for an hour.

`rate_limit` (requests a second per source IP, with bursts of `rate_burst`) and `max_amplification`
(the largest answer as a multiple of its request) bound what one source can get out of us; see
RpcSocket. None turns either off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from appliance.dht import addresses, iterative
from appliance.dht.handler import RequestHandler
from appliance.dht.messages import (
    FIND_NODE,
    FIND_VALUE,
    NODE_ID_LEN,
    PING,
    PONG,
    STORE,
    STORED,
    ContactTriple,
    ErrorReply,
    FindValueReply,
    Message,
    Request,
    Response,
    parse_contacts,
    parse_find_value,
    request_args,
)
from appliance.dht.peerstore import DATA_EXPIRATION, PeerStore
from appliance.dht.protocol import PendingCall, RpcError, RpcSocket
from appliance.dht.ratelimit import SourceLimiter
from appliance.dht.routing import RoutingTable
from appliance.dht.tokens import ROTATE_INTERVAL, TokenManager

log = logging.getLogger("dht")

TOKEN_CACHE_TTL = 300.0  # how long we reuse a token another node gave us (the SDK's value)
REFRESH_INTERVAL = 3600.0
MAINTENANCE_INTERVAL = 60.0
PING_BACK_WINDOW = 60.0  # an unknown sender is pinged back at most once in this window
_MAX_PING_BACK = 1024
_MAX_TOKEN_CACHE = 4096


def random_node_id() -> bytes:
    return hashlib.sha384(os.urandom(32)).digest()


def parse_node_id(value: bytes | str | None) -> bytes:
    """A node id from 48 bytes, 96 hex characters, or None/'' for a random one."""
    if not value:
        return random_node_id()
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise ValueError(f"invalid node id {value[:20]!r}: expected 96 hex characters") from None
    else:
        raw = value
    if len(raw) != NODE_ID_LEN:
        raise ValueError(f"invalid node id: {len(raw)} bytes, expected {NODE_ID_LEN}")
    return raw


class Node:
    """external_ip and peer_port describe us as a blob holder; both are needed before findValue answers
    name us (never 0.0.0.0, never port 0)."""

    def __init__(self, node_id: bytes | str | None = None, bind: tuple[str, int] = ("0.0.0.0", 4444), *,
                 peer_port: int | None = None, external_ip: str | None = None, k: int = 8, alpha: int = 5,
                 rpc_timeout: float = 5.0, address_policy: str = "any", peer_ttl: float = DATA_EXPIRATION,
                 max_peers: int = 100_000, max_peers_per_key: int = 128, max_pending: int = 2048,
                 token_interval: float = ROTATE_INTERVAL, refresh_interval: float = REFRESH_INTERVAL,
                 maintenance_interval: float = MAINTENANCE_INTERVAL, rate_limit: float | None = None,
                 rate_burst: float | None = None, max_amplification: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if address_policy not in addresses.POLICIES:
            raise ValueError(f"unknown address policy {address_policy!r}")
        self.node_id = parse_node_id(node_id)
        self.k, self.alpha = k, alpha
        self.address_policy = address_policy
        self.peer_port = peer_port
        self.external_ip = external_ip
        self.refresh_interval = refresh_interval
        self.maintenance_interval = maintenance_interval
        self.clock = clock
        self.routing = RoutingTable(self.node_id, k, clock)
        self.peers = PeerStore(peer_ttl, max_peers_per_key, max_peers, clock)
        self.tokens = TokenManager(interval=token_interval, clock=clock)
        self.held: set[bytes] = set()  # keys we hold ourselves: findValue answers name us for them
        self.handler = RequestHandler(self.node_id, self.routing, self.peers, self.tokens, k=k,
                                      address_policy=address_policy, self_peer=self.self_peer,
                                      holds=self.held.__contains__)
        # One limiter for all our sockets: a source is limited per IP, whichever of our ports it sends to.
        self.limiter = SourceLimiter(rate_limit, rate_burst or rate_limit, clock=clock) if rate_limit else None
        self.max_amplification = max_amplification
        self.rpc = RpcSocket(self.node_id, bind, self._on_request, on_reply=self._on_reply,
                             on_timeout=self._on_timeout, rpc_timeout=rpc_timeout, max_pending=max_pending,
                             limiter=self.limiter, max_amplification=max_amplification, clock=clock)
        self._lock = threading.Lock()
        self._pinged_back: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._token_cache: OrderedDict[tuple[str, int], tuple[bytes, float]] = OrderedDict()
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._also: list[RpcSocket] = []

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (OSError if the port is taken) and start the maintenance thread."""
        self.rpc.start()
        self._maintenance = threading.Thread(target=self._maintain, name=f"dht-maint-{self.port}", daemon=True)
        self._maintenance.start()

    def listen_also(self, port: int) -> int:
        """Answer DHT requests on a second UDP port of the same address too (OSError if taken); returns it.

        SDK downloaders ping a peer found in the DHT at UDP port = its announced TCP port (or 4444 + n for
        TCP 3333 + n) before they connect, and skip peers that do not answer: a node announcing TCP port P
        must answer there.
        """
        extra = RpcSocket(self.node_id, (self.rpc.bind[0], port), self._on_request, rpc_timeout=self.rpc.rpc_timeout,
                          max_pending=1, limiter=self.limiter, max_amplification=self.max_amplification,
                          clock=self.clock)
        extra.start()
        self._also.append(extra)
        return extra.port

    def stop(self) -> None:
        self._stopping.set()
        self.rpc.stop()
        for extra in self._also:
            extra.stop()
        if self._maintenance is not None and self._maintenance is not threading.current_thread():
            self._maintenance.join(timeout=5)

    @property
    def port(self) -> int:
        return self.rpc.port

    def self_peer(self) -> tuple[str, int] | None:
        """Our (external ip, TCP peer port) as a blob holder, or None while either is unknown."""
        if self.external_ip and self.peer_port and addresses.usable(self.external_ip, self.peer_port):
            return (self.external_ip, self.peer_port)
        return None

    def usable(self, ip: str, port: int) -> bool:
        return addresses.usable(ip, port, self.address_policy)

    # --- socket hooks ----------------------------------------------------------------------------------

    def _on_request(self, request: Request, address: tuple[str, int]) -> Message | None:
        reply = self.handler.handle(request, address)
        if reply is not None and not self.routing.touch(request.node_id, *address):
            self._maybe_ping_back(request.node_id, address)
        return reply

    def _on_reply(self, message: Response | ErrorReply, address: tuple[str, int]) -> None:
        if self.usable(*address):
            self.routing.add(message.node_id, *address)

    def _on_timeout(self, call: PendingCall) -> None:
        self.routing.fail(call.address)

    def _maybe_ping_back(self, node_id: bytes, address: tuple[str, int]) -> None:
        """Ping an unknown sender once in a while: its pong puts it in the routing table."""
        if not self.usable(*address) or self.routing.get(node_id) is not None:
            return
        if self.rpc.pending_count() >= self.rpc.max_pending // 2:
            return  # a flood of strangers must not crowd out our own lookups and announces
        now = self.clock()
        with self._lock:
            last = self._pinged_back.get(address)
            if last is not None and now - last < PING_BACK_WINDOW:
                return
            self._pinged_back[address] = now
            self._pinged_back.move_to_end(address)
            while len(self._pinged_back) > _MAX_PING_BACK:
                self._pinged_back.popitem(last=False)
        self.rpc.start_call(address, PING, request_args(PING))

    # --- RPC client ------------------------------------------------------------------------------------

    def ping(self, address: tuple[str, int], timeout: float | None = None) -> bytes:
        """Ping a node; returns its node id (RpcError if it does not answer pong)."""
        call = self.rpc.start_call(address, PING, request_args(PING), timeout=timeout)
        if call.wait() != PONG:
            raise RpcError(f"{address[0]}:{address[1]} did not answer pong")
        return call.responder

    def find_node(self, address: tuple[str, int], key: bytes) -> list[ContactTriple]:
        return parse_contacts(self.rpc.call(address, FIND_NODE, request_args(FIND_NODE, key)))

    def find_value(self, address: tuple[str, int], key: bytes, page: int = 0) -> FindValueReply:
        reply = parse_find_value(self.rpc.call(address, FIND_VALUE, request_args(FIND_VALUE, key, page=page)), key)
        self.cache_token(address, reply.token)
        return reply

    def start_find(self, address: tuple[str, int], key: bytes, value: bool, page: int = 0,
                   callback: Callable[[PendingCall], None] | None = None) -> PendingCall:
        """A findNode / findValue request that does not wait (for iterative lookups)."""
        method = FIND_VALUE if value else FIND_NODE
        args = request_args(method, key, page=page) if value else request_args(method, key)
        return self.rpc.start_call(address, method, args, callback=callback)

    def start_store(self, address: tuple[str, int], key: bytes, token: bytes, tcp_port: int) -> PendingCall:
        """store in the SDK form: [hash, token, tcp port, our id, age 0, {protocolVersion}]; does not wait."""
        return self.rpc.start_call(address, STORE, request_args(STORE, key, token, tcp_port, self.node_id, 0))

    def store(self, address: tuple[str, int], key: bytes, token: bytes, tcp_port: int) -> None:
        """store and wait: RpcError (RemoteError for "Invalid token") unless the node answers OK."""
        result = self.start_store(address, key, token, tcp_port).wait()
        if result != STORED:
            raise RpcError(f"store on {address[0]}:{address[1]} answered {result!r}")

    def cached_token(self, address: tuple[str, int]) -> bytes | None:
        with self._lock:
            entry = self._token_cache.get(address)
            if entry is None or self.clock() - entry[1] > TOKEN_CACHE_TTL:
                return None
            return entry[0]

    def cache_token(self, address: tuple[str, int], token: bytes) -> None:
        with self._lock:
            self._token_cache[address] = (token, self.clock())
            self._token_cache.move_to_end(address)
            while len(self._token_cache) > _MAX_TOKEN_CACHE:
                self._token_cache.popitem(last=False)

    def drop_token(self, address: tuple[str, int]) -> None:
        with self._lock:
            self._token_cache.pop(address, None)

    # --- joining and maintenance -----------------------------------------------------------------------

    def bootstrap(self, seeds: Iterable[tuple[str, int]]) -> int:
        """Ping every seed at once, then look up our own id; returns how many seeds answered."""
        calls = [self.rpc.start_call(seed, PING, request_args(PING)) for seed in seeds]
        answered = 0
        for call in calls:
            try:
                if call.wait() == PONG:
                    answered += 1
            except RpcError:
                pass
        if answered:
            iterative.find_node(self, self.node_id)
        return answered

    def _maintain(self) -> None:
        while not self._stopping.wait(self.maintenance_interval):
            try:
                self.maintain_once()
            except Exception:
                log.exception("DHT maintenance failed")

    def maintain_once(self) -> None:
        """Rotate the token secret when due, expire stored peers, recheck failed contacts, refresh stale
        buckets."""
        self.tokens.maybe_rotate()
        self.peers.expire()
        for contact in self.routing.failed_contacts():
            # the answer (on_reply) restores it; a timeout (on_timeout) removes it
            self.rpc.start_call(contact.address, PING, request_args(PING))
        if len(self.routing) == 0:
            return
        for target in self.routing.stale_ranges(self.refresh_interval):
            if self._stopping.is_set():
                return
            iterative.find_node(self, target)

    def status(self) -> dict:
        return {"node_id": self.node_id.hex(), "port": self.port, "external_ip": self.external_ip,
                "peer_port": self.peer_port, "contacts": len(self.routing), "buckets": self.routing.bucket_count,
                "stored_peers": len(self.peers), "stored_keys": self.peers.key_count(),
                "pending_rpcs": self.rpc.pending_count(), "datagrams": self.datagram_stats()}

    def datagram_stats(self) -> dict:
        """The datagram counters of all our sockets, summed."""
        total = dict(self.rpc.stats)
        for extra in self._also:
            for name, value in extra.stats.items():
                total[name] = total.get(name, 0) + value
        return total

