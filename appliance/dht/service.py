"""DhtService: the DHT node as the appliance's DHT process (and `prism dht`) runs it.

start() binds the UDP port (OSError if taken) and joins through the seeds in the background: ping
every seed, then look up our own id. When no seed answers it says so once and keeps retrying with
backoff; it never gives up and never fails the process. announce()/withdraw() manage the hashes we
hold, lookup() finds who holds a hash, status() reports the node's state.

Only stdlib sockets and threading: works in plain threads and under gevent's monkey-patching.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterable

from appliance.blob import check_hash
from appliance.dht import addresses, iterative
from appliance.dht.announcer import ANNOUNCE_RATE, REANNOUNCE_INTERVAL, Announcer
from appliance.dht.node import Node, parse_node_id, random_node_id

log = logging.getLogger("dht")

JOIN_RETRY_MIN = 5.0
JOIN_RETRY_MAX = 300.0
REJOIN_CHECK = 60.0


def parse_seed(value: str | tuple[str, int]) -> tuple[str, int]:
    """`host:port` or (host, port) -> (host, port); ValueError when malformed."""
    if isinstance(value, tuple):
        host, port = value
    else:
        host, sep, port_text = value.strip().rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid DHT seed {value!r}: expected HOST:PORT")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"invalid port in DHT seed {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in DHT seed {host}:{port}")
    return host, port


def resolve(seed: tuple[str, int]) -> list[tuple[str, int]]:
    """IPv4 addresses of a seed (DNS); empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(seed[0], seed[1], socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys((info[4][0], info[4][1]) for info in infos))


def local_ip_towards(address: tuple[str, int]) -> str | None:
    """The local address the kernel would send from to reach `address` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            ip = sock.getsockname()[0]
    except OSError:
        return None
    return ip if addresses.usable(ip, 1) else None


def persistent_node_id(path: str) -> bytes:
    """The node id kept in `path` (96 hex characters); a random one is created there on first use.

    A stable id keeps our place in other nodes' routing tables across restarts. The file is written
    to a temporary name, fsynced and renamed, so a crash never leaves a half-written id behind.
    """
    try:
        with open(path) as f:
            return parse_node_id(f.read().strip())
    except FileNotFoundError:
        pass
    node_id = random_node_id()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dht-node-id.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(node_id.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return node_id


def hash_key(value: str) -> bytes:
    """A blob hash (96 lowercase hex) as a 48-byte DHT key; InvalidBlobHash otherwise."""
    return bytes.fromhex(check_hash(value))


class DhtService:
    """external_ip: the address other nodes reach us at; when None it is the bound address, or else the
    local address facing the first seed that answered. peer_port: the TCP peer port we announce."""

    def __init__(self, node_id: bytes | str | None = None, bind: tuple[str, int] = ("0.0.0.0", 4444),
                 seeds: Iterable[str | tuple[str, int]] = (), peer_port: int = 3333,
                 external_ip: str | None = None, *, rpc_timeout: float = 5.0, address_policy: str = "any",
                 announce_rate: float = ANNOUNCE_RATE, reannounce_interval: float = REANNOUNCE_INTERVAL,
                 join_retry: tuple[float, float] = (JOIN_RETRY_MIN, JOIN_RETRY_MAX), answer_on_peer_port: bool = False,
                 **node_options):
        if not 0 < peer_port < 65536:
            raise ValueError(f"invalid TCP peer port {peer_port}: the DHT must announce a real port")
        if external_ip and not addresses.usable(external_ip, peer_port):
            raise ValueError(f"invalid external IP {external_ip!r}: other nodes could not reach it")
        self.seeds = [parse_seed(s) for s in seeds]
        if not external_ip and addresses.usable(bind[0], peer_port):
            external_ip = bind[0]
        self.node = Node(node_id, bind, peer_port=peer_port, external_ip=external_ip or None,
                         rpc_timeout=rpc_timeout, address_policy=address_policy, **node_options)
        self.announcer = Announcer(self.node, rate=announce_rate, reannounce_interval=reannounce_interval)
        self.join_retry = join_retry
        self.answer_on_peer_port = answer_on_peer_port
        self._joined = threading.Event()
        self._stopping = threading.Event()
        self._joiner: threading.Thread | None = None
        self._started = False

    @property
    def node_id(self) -> bytes:
        return self.node.node_id

    @property
    def port(self) -> int:
        return self.node.port

    def start(self, join: bool = True) -> None:
        """Bind (OSError if the port is taken), then announce, and join in the background unless `join` is
        False (then the caller joins with join_once())."""
        self.node.start()
        self._started = True
        if self.answer_on_peer_port:
            self._listen_on_peer_port()
        self.announcer.start()
        if join:
            self._joiner = threading.Thread(target=self._join_loop, name="dht-join", daemon=True)
            self._joiner.start()
        log.info("DHT node %s on UDP %s:%d", self.node_id.hex(), self.node.rpc.bind[0], self.port)

    def _listen_on_peer_port(self) -> None:
        """SDK downloaders ping UDP <our TCP peer port> before they download from us (see Node.listen_also)."""
        port = self.node.peer_port
        try:
            self.node.listen_also(port)
        except OSError as exc:
            log.warning("cannot answer DHT pings on UDP %s:%d (%s): LBRY SDK clients may not download from us",
                        self.node.rpc.bind[0], port, exc.strerror or exc)

    def stop(self) -> None:
        """Stop the node first: its outstanding RPCs fail at once, so announces and joins end without
        waiting for their timeouts."""
        self._stopping.set()
        if self._started:
            self.node.stop()
        self.announcer.stop()
        if self._joiner is not None:
            self._joiner.join(timeout=10)

    def wait_joined(self, timeout: float | None = None) -> bool:
        """True once a seed answered (immediately true without seeds: we are the first node)."""
        return self._joined.wait(timeout)

    # --- joining ---------------------------------------------------------------------------------------

    def _join_loop(self) -> None:
        if not self.seeds:
            log.info("no DHT seeds: waiting for other nodes to contact us")
            self._joined.set()
            return
        delay, warned = self.join_retry[0], False
        while not self._stopping.is_set():
            if self._joined.is_set() and len(self.node.routing) > 0:
                self._stopping.wait(REJOIN_CHECK)
                continue
            answered = self.join_once()
            if answered:
                if warned:
                    log.info("DHT joined: %d of %d seeds answered", answered, len(self.seeds))
                delay, warned = self.join_retry[0], False
                continue
            if not warned:
                log.warning("no DHT seed answered (%s); retrying in the background",
                            ", ".join(f"{h}:{p}" for h, p in self.seeds))
                warned = True
            self._stopping.wait(delay)
            delay = min(delay * 2, self.join_retry[1])

    def join_once(self) -> int:
        """One join attempt: ping the seeds, look up our own id; returns how many seeds answered."""
        targets = [address for seed in self.seeds for address in resolve(seed)]
        if not targets:
            return 0
        answered = self.node.bootstrap(targets)
        if answered:
            if not self.node.external_ip:
                self.node.external_ip = next(filter(None, (local_ip_towards(t) for t in targets)), None)
            self._joined.set()
            log.debug("DHT join: %d contacts, external address %s", len(self.node.routing), self.node.external_ip)
        return answered

    # --- the appliance's interface ---------------------------------------------------------------------

    def announce(self, hashes: Iterable[str]) -> int:
        """Announce these blob hashes now and periodically; returns how many were new (InvalidBlobHash on a
        malformed one, before any is added)."""
        return self.announcer.add([hash_key(h) for h in hashes])

    def withdraw(self, hashes: Iterable[str]) -> int:
        """Stop announcing these hashes; returns how many were announced."""
        return self.announcer.remove([hash_key(h) for h in hashes])

    def lookup(self, blob_hash: str) -> list[tuple[str, int]]:
        """(ip, tcp_port) of every peer found holding the blob, ourselves included when we hold it."""
        key = hash_key(blob_hash)
        found = [(p.ip, p.tcp_port) for p in iterative.find_value(self.node, key).peers]
        own = self.node.self_peer()
        if own and key in self.node.held:
            found.append(own)
        return list(dict.fromkeys(found))

    def status(self) -> dict:
        """contacts, buckets, stored peers, announced and queued hashes, node id, port, ..."""
        state = self.node.status()
        counts = self.announcer.counts()
        state.update(joined=self._joined.is_set(), seeds=[f"{h}:{p}" for h, p in self.seeds],
                     held=counts["held"], announced=counts["announced"], queued=counts["queued"],
                     announces=dict(self.announcer.stats))
        return state
