"""Answers to DHT requests, as the LBRY SDK's request handler gives them.

Pure with respect to the network: `handle(request, (ip, port))` reads and updates the routing table,
peer store and tokens, and returns the reply to send (or None). The node wires it to its socket.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.dht import addresses
from appliance.dht.messages import (
    CONTACTS_KEY,
    FIND_NODE,
    FIND_VALUE,
    INVALID_TOKEN,
    PAGE_KEY,
    PING,
    PONG,
    PROTOCOL_VERSION,
    PV_KEY,
    STORE,
    STORED,
    TOKEN_KEY,
    VALUE_ERROR,
    DatagramTooLarge,
    ErrorReply,
    MessageError,
    Peer,
    Request,
    Response,
    compact_peer,
    contact_triple,
    encode_message,
    parse_key_arg,
    parse_store_args,
)
from appliance.dht.peerstore import PeerStore
from appliance.dht.routing import RoutingTable
from appliance.dht.tokens import TokenManager

log = logging.getLogger("dht")

FIND_NODE_COUNT = 16  # the SDK answers findNode with up to 2*K contacts (vectors: findNode_response)


class RequestHandler:
    """`self_peer()` gives our own (ip, tcp_port) or None; `holds(key)` says whether we hold the blob, in
    which case our own compact peer joins findValue answers (the SDK does this for its completed blobs)."""

    def __init__(self, node_id: bytes, routing: RoutingTable, peers: PeerStore, tokens: TokenManager, *,
                 k: int = 8, address_policy: str = "any",
                 self_peer: Callable[[], tuple[str, int] | None] = lambda: None,
                 holds: Callable[[bytes], bool] = lambda key: False):
        self.node_id = node_id
        self.routing = routing
        self.peers = peers
        self.tokens = tokens
        self.k = k
        self.address_policy = address_policy
        self.self_peer = self_peer
        self.holds = holds

    def handle(self, request: Request, address: tuple[str, int]) -> Response | ErrorReply | None:
        """The reply to `request` received from `address`; None for requests we ignore (our own id)."""
        if request.node_id == self.node_id:
            return None
        try:
            if request.method == PING:
                result = PONG
            elif request.method == FIND_NODE:
                key, _ = parse_key_arg(request.args, "findNode")
                result = self._find_node(key, request.node_id)
            elif request.method == FIND_VALUE:
                return self._fit(request, self._find_value(request, address))
            elif request.method == STORE:
                result = self._store(request, address)
            else:
                return self._error(request, f"unknown rpc method {request.method[:32]!r}")
        except MessageError as exc:
            return self._error(request, str(exc))
        return Response(request.rpc_id, self.node_id, result)

    def _error(self, request: Request, message: str) -> ErrorReply:
        return ErrorReply(request.rpc_id, self.node_id, VALUE_ERROR, message.encode())

    def _find_node(self, key: bytes, requester: bytes, count: int = FIND_NODE_COUNT) -> list:
        return [contact_triple(c.node_id, c.ip, c.udp_port)
                for c in self.routing.find_close(key, count, exclude=requester)]

    def _find_value(self, request: Request, address: tuple[str, int]) -> dict:
        key, options = parse_key_arg(request.args, "findValue")
        page = options.get(PAGE_KEY, 0)
        if not isinstance(page, int) or isinstance(page, bool):
            raise MessageError(f"invalid page {page!r}")
        page = max(page, 0)
        result: dict = {TOKEN_KEY: self.tokens.make(address[0]), PV_KEY: PROTOCOL_VERSION}
        if page == 0:
            result[CONTACTS_KEY] = self._find_node(key, request.node_id, self.k)
        holders = [p for p in self.peers.get(key) if p.node_id != request.node_id]
        own = self.self_peer()
        if own and len(holders) < self.k and self.holds(key) and all(p.node_id != self.node_id for p in holders):
            holders.append(Peer(own[0], own[1], self.node_id))
        result[PAGE_KEY] = -(-len(holders) // self.k)  # pages of K peers
        page_peers = holders[page * self.k:(page + 1) * self.k]
        if page_peers:
            result[key] = [compact_peer(p.ip, p.tcp_port, p.node_id) for p in page_peers]
        return result

    def _fit(self, request: Request, result: dict) -> Response:
        """Shed contacts until the answer fits in one datagram (peers and the token matter most)."""
        while True:
            response = Response(request.rpc_id, self.node_id, result)
            try:
                encode_message(response)
                return response
            except DatagramTooLarge:
                if not result.get(CONTACTS_KEY):
                    raise
                result = {**result, CONTACTS_KEY: result[CONTACTS_KEY][:-1]}

    def _store(self, request: Request, address: tuple[str, int]) -> bytes:
        args = parse_store_args(request.args)
        ip = address[0]
        if not self.tokens.verify(args.token, ip):
            raise MessageError(INVALID_TOKEN.decode())
        if not addresses.usable(ip, args.tcp_port, self.address_policy):
            raise MessageError(f"refusing to store peer address {ip}:{args.tcp_port}")
        # The peer is the sender as we see it: its source IP, the TCP port it names, and its node id
        # (lbry.go's legacy form names the id in the value instead).
        node_id = args.lbryid if args.legacy else request.node_id
        self.peers.add(args.blob_hash, Peer(ip, args.tcp_port, node_id))
        log.debug("stored %s:%d for %s", ip, args.tcp_port, args.blob_hash.hex()[:16])
        return STORED

