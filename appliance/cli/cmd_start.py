"""`prism start new|CLUSTER_ADDR`: reflector.go's "prism" (spec §1.10, §8.7) as the appliance's roles.

A supervisor runs the reflector receiver (--reflector-port, 5566) and the TCP peer server (--peer-port,
3333) in its workers, over the DB-backed S3 store, and the DHT process (--dht-port, 4444) in cluster
mode: it joins the cluster of the nodes sharing the database and announces this node's share of the
stored hashes (appliance/cluster.py). HTTP and HTTP/3 are off, as in reflector.go; there is no disk cache
unless --disk-cache asks for one. The ports come from these flags, not from the config file.

CLUSTER_ADDR: reflector.go's nodes join a serf cluster through the address of a running member. Here the
members find each other through the database (db_conn) and `cluster_name`, so the argument is accepted
for compatibility and not used: `prism start new` on the first node and `prism start ADDR` on the others
form one cluster, as they do with reflector.go. --cluster-port is accepted and unused for the same reason.
"""
from __future__ import annotations

import argparse
import logging

from appliance import config as cfg
from appliance.cli.common import EXIT_USAGE, CommandError, load_config, set_up_supervisor

log = logging.getLogger("prism")

SERF_PORT = 17946  # reflector.go's cluster port
KEYS = ["dht_port", "dht_seeds", "hash_range", "cluster_name", "node_name", "cluster_heartbeat", "cluster_rescan",
        "workers", "listen_address", "metrics_port", "runtime_dir", "state_dir", "log_file", "graceful_timeout",
        "heartbeat_timeout", "upload_timeout", "peer_idle_timeout", "dht_node_id", "dht_external_ip",
        "dht_peer_port", "dht_address_policy", "disk_cache", "mem_cache"]


def prism_config(args: argparse.Namespace) -> cfg.Config:
    """The appliance config of a prism node: the file, these flags, and the roles reflector.go's prism runs."""
    overrides = cfg.overrides_from_args(args, KEYS)
    overrides.update(tcp_peer_port=args.peer_port, receiver_port=args.reflector_port, http_peer_port=0,
                     disable_http3=True, disable_dht=False, disable_uploads=False, use_db=True, cluster=True,
                     disable_blocklist=True)  # reflector.go's prism runs its upload server without a blocklist
    overrides.setdefault("disk_cache", "")
    return load_config(args, overrides)


def check(config: cfg.Config) -> None:
    """reflector.go's requirements first (exit 1), then the cluster and store settings (exit 2)."""
    from appliance.cluster import ClusterSettings
    from appliance.stores.compose import CompositionError, disk_cache_specs

    if not config.db_conn:
        raise CommandError("db required in conf")
    if not config.bucket_name:
        raise CommandError("blobs required in conf")
    try:
        ClusterSettings.from_config(config)
        disk_cache_specs(config)
    except (ValueError, CompositionError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    for name, port in (("--peer-port", config.tcp_peer_port), ("--reflector-port", config.receiver_port),
                       ("--dht-port", config.dht_port)):
        if not 0 < port < 65536:
            raise CommandError(f"invalid {name} {port}", EXIT_USAGE)


def run(args: argparse.Namespace) -> int:
    config = prism_config(args)
    check(config)
    from appliance import logs
    from appliance.cli.prism import verbose_components
    from appliance.cluster import ClusterError, ensure_schema

    if config.log_file:
        logs.setup("prism", verbose_components(args), config.log_file)
    if args.cluster_addr != "new":
        log.info("CLUSTER_ADDR %s is not needed: the members of cluster %r find each other through the database",
                 args.cluster_addr, config.cluster_name)
    try:
        ensure_schema(config.db_conn)  # fail here, with one line, when the database cannot be used
    except ClusterError as exc:
        raise CommandError(str(exc)) from None

    def reload_config() -> cfg.Config:
        new = prism_config(args)
        check(new)  # a bad edit is refused by HUP as it is at start, and the running config stays
        return new

    return set_up_supervisor(config, reload_config, verbose_components(args)).run()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "start", help="run a prism node: DHT, TCP peer and reflector receiver over S3, in a MySQL-backed cluster",
        description="Run the DHT, the TCP peer server and the reflector receiver over the DB-backed S3 store "
                    "(db_conn and the S3 keys of the config are required). Nodes sharing the database and "
                    "cluster_name form a cluster and divide the stored hashes between them: each announces its "
                    "share to the DHT and withdraws what it no longer owns when members join, leave or fail.")
    p.add_argument("cluster_addr", metavar="new|CLUSTER_ADDR",
                   help="'new', or the address of a member (accepted for reflector.go compatibility and not used: "
                        "the members find each other through the database)")
    p.add_argument("--cluster-port", type=int, default=SERF_PORT, metavar="PORT",
                   help=f"reflector.go's serf port (default: {SERF_PORT}); accepted and unused: membership goes "
                        "through the database")
    p.add_argument("--peer-port", dest="peer_port", type=int, default=3333, metavar="PORT",
                   help="TCP peer port, also the port announced to the DHT (default: 3333)")
    p.add_argument("--reflector-port", dest="reflector_port", type=int, default=5566, metavar="PORT",
                   help="reflector upload port (default: 5566)")
    cfg.add_flags(p, KEYS)
    p.set_defaults(run=run)
