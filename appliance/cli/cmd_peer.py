"""`prism peer`: reflector.go's standalone TCP peer server (spec §1.4), port 3333 by default."""
from __future__ import annotations

import argparse
import logging

from appliance import config as cfg
from appliance.cli.common import CommandError, load_config
from appliance.stores.base import BlobStore

log = logging.getLogger("prism")

KEYS = ["standalone_peer_port", "listen_address", "storage_dir", "peer_idle_timeout"]


def build_store(config: cfg.Config, args: argparse.Namespace) -> BlobStore:
    """What the peer server reads: S3 (+ MySQL unless --nodb) as reflector.go, else local storage."""
    if config.bucket_name:
        from appliance.stores.s3 import S3Store

        store: BlobStore = S3Store.from_config(config)
        if not getattr(args, "nodb", False):
            if not config.db_conn:
                raise CommandError("db_conn is not set in the config (use --nodb to serve S3 without MySQL)")
            from appliance.db import Database
            from appliance.stores.dbbacked import DBBackedStore

            store = DBBackedStore(store, Database.from_dsn(config.db_conn))
        return store
    from appliance.stores.disk import DiskStore

    try:
        return DiskStore(config.storage_dir)
    except OSError as exc:
        raise CommandError(f"cannot use storage directory {config.storage_dir}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()  # this command is its own process
    from appliance.servers import standalone
    from appliance.servers.peer import PeerServer

    config = load_config(args, cfg.overrides_from_args(args, KEYS))
    host = config.listen_address or "0.0.0.0"
    store = build_store(config, args)
    try:
        sock = standalone.listen(host, config.standalone_peer_port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{config.standalone_peer_port}: {exc.strerror or exc}") from None
    log.info("tcp peer server ready on %s:%d", host, sock.getsockname()[1])
    standalone.serve([PeerServer(sock, store, idle_timeout=config.peer_idle_timeout)])
    store.shutdown()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("peer", help="run a standalone TCP peer server",
                              description="Serve blobs over the LBRY TCP peer protocol (port 3333 unless --port): from "
                                          "S3 (bucket_name in the config), tracked in MySQL (db_conn) unless "
                                          "--nodb, as reflector.go; without S3, from local storage.")
    cfg.add_flags(p, KEYS)
    p.add_argument("--nodb", nargs="?", const=True, default=False, type=cfg.parse_bool, metavar="BOOL",
                   help="serve S3 without MySQL (local storage never uses one)")
    p.set_defaults(run=run)
