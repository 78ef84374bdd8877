"""`prism cluster start|join` (spec §1.11): be a member of a cluster until SIGINT/SIGTERM.

reflector.go starts a serf node (start) or joins one on 127.0.0.1 (join). Here both register this node in
the membership table of the database (db_conn) under `cluster_name`, keep its heartbeat, print one line
`INDEX of TOTAL: NAME NAME ...` each time this node's view changes, and leave cleanly on the signal.
No hashes are announced (as in reflector.go); `prism start` runs a member that does.
"""
from __future__ import annotations

import argparse
import signal
import threading

from appliance import config as cfg
from appliance.cli.common import EXIT_USAGE, CommandError, load_config

KEYS = ["cluster_name", "node_name", "cluster_heartbeat"]


def run(args: argparse.Namespace) -> int:
    from appliance.cluster import ClusterError, ClusterSettings, Membership, View

    config = load_config(args, cfg.overrides_from_args(args, KEYS))
    if not config.db_conn:
        raise CommandError("db required in conf")
    try:
        settings = ClusterSettings.from_config(config)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before joining, so no signal is missed
        signal.signal(signum, lambda *_: stop.set())

    def show(view: View) -> None:
        print(f"{view.index} of {view.total}: {' '.join(view.members)}", flush=True)

    membership = Membership(settings.dsn, settings.cluster, settings.name, heartbeat=settings.heartbeat,
                            on_change=show)
    try:
        membership.start()
    except ClusterError as exc:
        raise CommandError(str(exc)) from None
    print(f"joined cluster {settings.cluster} as {membership.name}", flush=True)
    try:
        while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        membership.stop(leave=True)
    print(f"left cluster {settings.cluster}", flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cluster", help="be a member of a MySQL-backed cluster until SIGINT/SIGTERM",
        description="Register this node in the cluster of the nodes sharing the database (db_conn) and "
                    "cluster_name, keep its heartbeat, and print 'INDEX of TOTAL: MEMBERS' whenever its place "
                    "changes. 'start' and 'join' do the same: the database is how members find each other.")
    p.add_argument("action", choices=("start", "join"), help="start or join (the same with MySQL membership)")
    p.add_argument("--cluster-port", type=int, default=17946, metavar="PORT",
                   help="reflector.go's serf port; accepted and unused: membership goes through the database")
    cfg.add_flags(p, KEYS)
    p.set_defaults(run=run)
