"""The DHT process: an LBRY Kademlia node that announces what the appliance holds.

It learns what to announce from three places:
- the announce list <state_dir>/dht/announce.txt, one hash a line, appended as blobs arrive, so a
  restart announces everything again without a scan;
- a one-time background scan of local storage (sd blobs: files that parse as stream descriptors; every
  blob with --dht-announce-all) when that list does not exist yet, e.g. over an adopted storage dir;
- `announce` notifications from the workers when an upload stores an sd blob (or any blob with
  --dht-announce-all), over msgpack IPC on <runtime_dir>/dht.sock.
The node id is kept in <state_dir>/dht/node_id so the appliance keeps its place in the DHT.

In cluster mode (`cluster = true`, which `prism start` sets) the database is the only source instead:
the process joins the cluster of the nodes sharing db_conn (appliance/cluster.py), announces this node's
share of the stored hashes, withdraws what it no longer owns, and announces a worker's notification only
when the hash falls in that share. There is no announce list and no storage scan.
"""
from __future__ import annotations

import logging
import os
import signal
import socket

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from appliance import ipc, logs, metrics
from appliance.blob import is_valid_hash
from appliance.scoreboard import READY, STOPPING
from workers.child import BootError, ChildContext

log = logging.getLogger("dht")

SCAN_BATCH = 500
STATUS_KEYS = ("node_id", "port", "external_ip", "contacts", "buckets", "stored_peers", "stored_keys", "held",
               "announced", "queued", "joined")


def _node_id(config, state: str) -> str | None:
    if config.dht_node_id:
        return config.dht_node_id
    path = os.path.join(state, "node_id")
    try:
        with open(path) as f:
            value = f.read().strip()
            if len(value) == 96:
                return value
    except FileNotFoundError:
        pass
    value = os.urandom(48).hex()
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)
    return value


class AnnounceList:
    """The hashes to announce, persisted as an append-only file (deduplicated in memory)."""

    def __init__(self, path: str):
        self.path = path
        self.hashes: set[str] = set()
        self.existed = os.path.exists(path)
        if self.existed:
            with open(path) as f:
                self.hashes = {line.strip() for line in f if is_valid_hash(line.strip())}
        self._file = open(path, "a")

    def add(self, hashes: list[str]) -> list[str]:
        new = [h for h in hashes if is_valid_hash(h) and h not in self.hashes]
        if new:
            self.hashes.update(new)
            self._file.write("".join(h + "\n" for h in new))
            self._file.flush()
        return new

    def close(self) -> None:
        self._file.close()


def is_sd_blob(path: str) -> bool:
    """A stream descriptor is JSON; content blobs are ciphertext and almost never start with '{'."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"{":
                return False
            data = b"{" + f.read()
    except OSError:
        return False
    from appliance.stream import parse_sd_blob

    try:
        parse_sd_blob(data)
    except ValueError:
        return False
    return True


def scan_storage(root: str, announce_all: bool, found) -> int:
    """Walk local storage in the reflector.go layout and hand what must be announced to `found`."""
    batch, total = [], 0
    if not os.path.isdir(root):
        return 0
    for prefix in sorted(os.listdir(root)):
        directory = os.path.join(root, prefix)
        if len(prefix) != 2 or not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if is_valid_hash(name) and (announce_all or is_sd_blob(os.path.join(directory, name))):
                batch.append(name)
            if len(batch) >= SCAN_BATCH:
                found(batch)
                total += len(batch)
                batch = []
                gevent.sleep(0.01)
    if batch:
        found(batch)
        total += len(batch)
    return total


def _cluster_node(config, service, peer_port: int):
    """The cluster membership and share keeper for this config (BootError for unusable settings)."""
    from appliance.cluster import ClusterNode, ClusterSettings
    from appliance.db import Database

    try:
        settings = ClusterSettings.from_config(config)
    except ValueError as exc:
        raise BootError(f"cluster: {exc}") from None
    address = f"{config.dht_external_ip or config.listen_address or socket.gethostname()}:{peer_port}"
    return ClusterNode(settings, Database(settings.dsn), service.announce, service.withdraw, address)


class _DatagramCounters:
    """Carries the node's datagram counters (dropped over the rate, answers trimmed) into the metrics."""

    def __init__(self, service):
        from appliance import metrics

        self.node = service.node
        self.seen = {"rate_limited": 0, "trimmed": 0}
        self.metrics = {"rate_limited": metrics.DHT_REQUESTS_DROPPED_TOTAL.labels(reason="rate"),
                        "trimmed": metrics.DHT_ANSWERS_TRIMMED_TOTAL}

    def update(self) -> None:
        stats = self.node.datagram_stats()
        for name, counter in self.metrics.items():
            delta = stats.get(name, 0) - self.seen[name]
            if delta > 0:
                counter.inc(delta)
                self.seen[name] += delta


def main(ctx: ChildContext) -> int:
    from appliance.dht.service import DhtService
    from appliance.stores.compose import origin_kind

    config = ctx.config
    state = os.path.join(os.path.abspath(config.state_dir), "dht")
    os.makedirs(state, exist_ok=True)
    peer_port = config.dht_peer_port or config.tcp_peer_port
    try:
        service = DhtService(_node_id(config, state), (config.listen_address or "0.0.0.0", config.dht_port),
                             seeds=config.dht_seeds, peer_port=peer_port,
                             external_ip=config.dht_external_ip or None,
                             address_policy=config.dht_address_policy,
                             rate_limit=config.dht_rate_limit or None, rate_burst=config.dht_rate_burst,
                             max_amplification=config.dht_max_amplification or None,
                             # SDK downloaders ping a peer on UDP <its TCP peer port> before using it
                             answer_on_peer_port=True)
    except ValueError as exc:
        raise BootError(f"DHT: {exc}") from None
    cluster = _cluster_node(config, service, peer_port) if config.cluster else None
    try:
        service.start()
    except OSError as exc:
        raise BootError(f"DHT: cannot bind UDP port {config.dht_port}: {exc.strerror or exc}") from None
    announce_list = scanner = None
    if cluster is not None:
        from appliance.cluster import NameInUse

        try:
            cluster.start()
        except NameInUse as exc:
            service.stop()
            raise BootError(f"cluster: {exc}") from None

        def announce(hashes: list[str]) -> None:
            cluster.offer(hashes)
    else:
        announce_list = AnnounceList(os.path.join(state, "announce.txt"))

        def announce(hashes: list[str]) -> None:
            new = announce_list.add(hashes)
            if new:
                service.announce(new)

        service.announce(sorted(announce_list.hashes))
        if not announce_list.existed and origin_kind(config) == "local":
            scanner = gevent.spawn(scan_storage, os.path.abspath(config.storage_dir), config.dht_announce_all,
                                   announce)

    def handle(sock, _address) -> None:
        def on_request(method: str, params):
            if method == "status":
                return service.status()
            if method == "lookup":
                return [f"{ip}:{port}" for ip, port in service.lookup(params)]
            raise ValueError(f"unknown method {method!r}")

        def on_notify(method: str, params) -> None:
            if method == "announce":
                announce([h for h in params if isinstance(h, str)])
            elif method == "withdraw":
                service.withdraw([h for h in params if is_valid_hash(h)])

        ipc.serve_connection(sock, on_request, on_notify, spawn=gevent.spawn)

    path = ctx.socket_path("dht")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    server = StreamServer(listener, handle)
    server.start()

    counted = _DatagramCounters(service)
    stop = Event()
    handlers = [gevent.signal_handler(s, stop.set) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
    handlers.append(gevent.signal_handler(signal.SIGUSR1, logs.reopen))
    while not stop.is_set() and ctx.parent_alive():
        status = service.status()
        posted = {k: status[k] for k in STATUS_KEYS if k in status}
        metrics.DHT_CONTACTS.set(status.get("contacts", 0))
        metrics.DHT_ANNOUNCED.set(status.get("announced", 0))
        if cluster is not None:
            posted["cluster"] = cluster.status()
        ctx.post(READY, {"dht": posted})
        counted.update()
        stop.wait(1.0)
    ctx.post(STOPPING)
    server.stop(timeout=1)
    if scanner is not None:
        scanner.kill()
    if cluster is not None:
        cluster.stop()  # leaves the cluster: the others take over our share at their next read
    service.stop()
    if announce_list is not None:
        announce_list.close()
    for handler in handlers:
        handler.cancel()
    return 0
