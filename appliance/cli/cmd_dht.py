"""`prism dht connect|bootstrap|lookup` (reflector.go §1.9, plus lookup).

- connect: run a DHT node until SIGINT/SIGTERM (`--nodeID` is honoured, unlike reflector.go);
  `--announce` makes it announce hashes with `--peerPort`.
- bootstrap: reflector.go's bootstrap node, on 127.0.0.1 unless `--host` says otherwise.
- lookup HASH: join through the seeds, iterative findValue, one `ip:tcp_port` line per peer; exit 1
  when none is found or no seed answers, 2 for a malformed hash.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from appliance.blob import InvalidBlobHash, check_hash
from appliance.cli.common import EXIT_USAGE, CommandError, load_config

log = logging.getLogger("dht")

DEFAULT_PORT = 4567  # reflector.go's `prism dht` default (the appliance's DHT process uses dht_port, 4444)


def _flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """reflector.go's persistent flags; accepted before and after the subcommand."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--nodeID", dest="node_id", default=default(None), metavar="HEX",
                        help="node id, 96 hex characters (default: random)")
    parser.add_argument("--port", type=int, default=default(None), metavar="PORT",
                        help=f"UDP port (default: {DEFAULT_PORT}; lookup: an ephemeral port)")
    parser.add_argument("--rpcPort", dest="rpc_port", type=int, default=default(0), metavar="PORT",
                        help="reflector.go's JSON-RPC port; accepted for compatibility, 0 = off")
    parser.add_argument("--seeds", default=default(None), metavar="HOST:PORT,...",
                        help="DHT nodes to join through, replacing dht_seeds from the config")
    parser.add_argument("--host", default=default(None), metavar="IP",
                        help="address to bind (default: 0.0.0.0; bootstrap: 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=default(5.0), metavar="SECONDS",
                        help="seconds to wait for each DHT request (default: 5)")
    if suppress:  # prism's global flags, after the subcommand too
        parser.add_argument("--conf", default=argparse.SUPPRESS, metavar="FILE", help="config file")
        parser.add_argument("-v", "--verbose", action="append", default=argparse.SUPPRESS, metavar="COMPONENTS",
                            help="components to log verbosely")


def _seeds(args: argparse.Namespace, config) -> list[str]:
    if args.seeds is not None:
        return [s.strip() for s in args.seeds.split(",") if s.strip()]
    return config.dht_seeds


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM; installed before the node starts, so no signal is missed."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait(stop: threading.Event) -> None:
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass


def _port(args: argparse.Namespace, default: int) -> int:
    port = default if args.port is None else args.port
    if not 0 <= port < 65536:
        raise CommandError(f"invalid --port {port}", EXIT_USAGE)
    return port


def _start(thing, host: str, port: int, **options) -> None:
    try:
        thing.start(**options)
    except OSError as exc:
        raise CommandError(f"cannot listen on UDP {host}:{port}: {exc.strerror or exc}") from None


def _limits(config) -> dict:
    """The config's DHT request limits, as the appliance's DHT process applies them (0 turns one off)."""
    return {"address_policy": config.dht_address_policy, "rate_limit": config.dht_rate_limit or None,
            "rate_burst": config.dht_rate_burst, "max_amplification": config.dht_max_amplification or None}


def _service(args: argparse.Namespace, host: str, port: int, peer_port: int = 3333):
    from appliance.dht.service import DhtService

    config = load_config(args)
    try:
        return DhtService(args.node_id, (host, port), _seeds(args, config), peer_port, rpc_timeout=args.timeout,
                          **_limits(config))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def run_connect(args: argparse.Namespace) -> int:
    host, port = args.host or "0.0.0.0", _port(args, DEFAULT_PORT)
    try:
        hashes = [check_hash(h.strip()) for h in (args.announce or "").split(",") if h.strip()]
    except InvalidBlobHash as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if args.rpc_port:
        log.warning("--rpcPort %d: the JSON-RPC interface is not provided; ignoring it", args.rpc_port)
    service = _service(args, host, port, args.peer_port)
    stop = _stop_on_signals()
    _start(service, host, port)
    try:
        service.announce(hashes)
        _wait(stop)
    finally:
        service.stop()
    return 0


def run_bootstrap(args: argparse.Namespace) -> int:
    from appliance.dht.bootstrap import BootstrapNode

    host, port = args.host or "127.0.0.1", _port(args, DEFAULT_PORT)
    try:
        node = BootstrapNode(args.node_id, (host, port), rpc_timeout=args.timeout, **_limits(load_config(args)))
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    stop = _stop_on_signals()
    _start(node, host, port)
    try:
        log.info("DHT bootstrap node %s listening on %s:%d", node.node_id.hex(), host, node.port)
        _wait(stop)
    finally:
        node.stop()
    return 0


def run_lookup(args: argparse.Namespace) -> int:
    try:
        blob_hash = check_hash(args.hash)
    except InvalidBlobHash as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    host, port = args.host or "0.0.0.0", _port(args, 0)
    service = _service(args, host, port)
    if not service.seeds:
        raise CommandError("no DHT seeds: give --seeds HOST:PORT,...", EXIT_USAGE)
    _start(service, host, port, join=False)
    try:
        if not service.join_once():
            seeds = ", ".join(f"{h}:{p}" for h, p in service.seeds)
            raise CommandError(f"no DHT seed answered ({seeds})")
        peers = service.lookup(blob_hash)
    finally:
        service.stop()
    if not peers:
        raise CommandError(f"no peers found for {blob_hash}")
    for ip, tcp_port in peers:
        print(f"{ip}:{tcp_port}", flush=True)
    return 0


def run_missing(args: argparse.Namespace) -> int:
    raise CommandError("dht: expected one of connect, bootstrap, lookup", EXIT_USAGE)


def register(subparsers) -> None:
    p = subparsers.add_parser("dht", help="run a DHT node or bootstrap node, or find a blob's peers",
                              description="LBRY DHT: connect (run a node), bootstrap (a bootstrap node), "
                                          "lookup HASH (print the peers holding a blob).")
    _flags(p, suppress=False)
    p.set_defaults(run=run_missing, announce=None, peer_port=3333)
    sub = p.add_subparsers(dest="dht_command", metavar="connect|bootstrap|lookup")

    connect = sub.add_parser("connect", help="run a DHT node until SIGINT/SIGTERM",
                             description="Run a DHT node until SIGINT/SIGTERM.")
    _flags(connect, suppress=True)
    connect.add_argument("--announce", metavar="HASH,...", help="blob hashes to announce")
    connect.add_argument("--peerPort", dest="peer_port", type=int, default=3333, metavar="PORT",
                         help="TCP peer port announced with --announce (default: 3333)")
    connect.set_defaults(run=run_connect)

    bootstrap = sub.add_parser("bootstrap", help="run a bootstrap node until SIGINT/SIGTERM",
                               description="Run reflector.go's bootstrap node (ping and findNode only).")
    _flags(bootstrap, suppress=True)
    bootstrap.set_defaults(run=run_bootstrap)

    lookup = sub.add_parser("lookup", help="print the peers holding a blob",
                            description="Join through the seeds, look the hash up, print one ip:tcp_port per "
                                        "peer (exit 1 when none).")
    lookup.add_argument("hash", metavar="HASH", help="blob hash (96 hex characters)")
    _flags(lookup, suppress=True)
    lookup.set_defaults(run=run_lookup)
