"""`prism test`: the upload receiver and the TCP peer server over one in-memory store (spec §1.17)."""
from __future__ import annotations

import argparse
import logging

from appliance import config as cfg
from appliance.cli.common import CommandError, load_config, plural

log = logging.getLogger("prism")

KEYS = ["receiver_port", "tcp_peer_port", "listen_address", "upload_timeout", "peer_idle_timeout"]


def run(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()  # this command is its own process
    from appliance.servers import standalone
    from appliance.servers.peer import PeerServer
    from appliance.servers.receiver import ReceiverServer
    from appliance.stores.memory import MemoryStore

    config = load_config(args, cfg.overrides_from_args(args, KEYS))
    host = config.listen_address or "0.0.0.0"
    receiver_sock = _listen(standalone, host, config.receiver_port)
    peer_sock = _listen(standalone, host, config.tcp_peer_port)
    store = MemoryStore()
    servers = [ReceiverServer(receiver_sock, store, store, timeout=config.upload_timeout),
               PeerServer(peer_sock, store, idle_timeout=config.peer_idle_timeout)]
    log.info("test servers ready: receiver on %s:%d, tcp peer on %s:%d", host, receiver_sock.getsockname()[1],
             host, peer_sock.getsockname()[1])
    standalone.serve(servers)
    print("Blobs in store")
    for hash_, size in store.items():
        print(f"{hash_}: {plural(size, 'byte')}")
    return 0


def _listen(standalone, host: str, port: int):
    try:
        return standalone.listen(host, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("test", help="run the upload receiver and TCP peer server over a memory store",
                              description="Upload receiver and TCP peer server over one in-memory store; on "
                                          "SIGINT/SIGTERM prints the blobs it holds.")
    cfg.add_flags(p, KEYS)
    p.set_defaults(run=run)
