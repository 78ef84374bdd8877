"""Running blob servers in one gevent process without the supervisor (`prism test`, `prism peer`, tests).

The caller monkey-patches first (its own process). `listen` makes the listening sockets the supervisor
would otherwise hand over; `serve` runs servers until SIGINT/SIGTERM, then stops them gracefully.

    python -m appliance.servers.standalone --store memory --receiver-port 0 --peer-port 0 --http-port 0
prints one line `ready {"receiver": PORT, ...}` once listening (used by tests and scripts/bench).
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys

BACKLOG = 1024


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound, listening TCP socket (port 0 = any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def serve(servers: list, graceful_timeout: float = 10.0, on_ready=None) -> int:
    """Start `servers`, block until SIGINT or SIGTERM, stop gracefully; returns the signal number."""
    import gevent
    from gevent.event import AsyncResult

    stopped = AsyncResult()
    handlers = [gevent.signal_handler(sig, stopped.set, sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        for server in servers:
            server.start()
        if on_ready is not None:
            on_ready()
        signum = stopped.get()
    finally:
        for handler in handlers:
            handler.cancel()
    for server in servers:
        server.stop_accepting()
    for server in servers:
        server.wait_idle(graceful_timeout)
    for server in servers:
        server.close()
    return signum


def _store(spec: str):
    from appliance.stores.disk import DiskStore
    from appliance.stores.memory import MemoryStore

    if spec == "memory":
        return MemoryStore()
    if spec.startswith("disk:"):
        return DiskStore(spec[5:])
    if spec.startswith("http:"):
        from appliance.stores.http import HttpStore

        return HttpStore(spec[5:])
    if spec.startswith("peer:"):
        from appliance.stores.peer import PeerStore

        return PeerStore(spec[5:])
    raise SystemExit(f"unknown store {spec!r}")


class _Protected:
    def __init__(self, hashes: list[str]):
        self.hashes = set(hashes)

    def is_protected(self, hash_: str) -> bool:
        return hash_ in self.hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--store", default="memory", help="memory | disk:DIR | http:HOST:PORT | peer:HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--receiver-port", type=int)
    parser.add_argument("--peer-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--edge-token", default="")
    parser.add_argument("--protected", action="append", default=[], metavar="HASH")
    parser.add_argument("--upload-timeout", type=float, default=180.0)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--send-timeout", type=float, default=60.0)
    parser.add_argument("--queue-size", type=int, default=200)
    parser.add_argument("--max-per-ip", type=int, default=0,
                        help="open connections per client IP and port in each process (0 = no cap)")
    parser.add_argument("--disable-uploads", action="store_true")
    parser.add_argument("--blocked", action="append", default=[], metavar="SD_HASH", help="refuse this stream")
    parser.add_argument("--print-metrics", action="store_true", help="print this process's metrics on exit")
    parser.add_argument("--processes", type=int, default=1,
                        help="fork this many servers, each on its own SO_REUSEPORT socket (as the appliance)")
    args = parser.parse_args(argv)

    from gevent import monkey

    monkey.patch_all()
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per client connection

    from appliance import logs

    logs.setup("standalone")
    wanted = {name: port for name, port in (("receiver", args.receiver_port), ("peer", args.peer_port),
                                            ("http", args.http_port)) if port is not None}
    # One socket per port per process slot, made before forking (what the supervisor does).
    first = {name: listen(args.host, port, reuse_port=True) for name, port in wanted.items()}
    ports = {name: sock.getsockname()[1] for name, sock in first.items()}
    slots = [first] + [{name: listen(args.host, ports[name], reuse_port=True) for name in wanted}
                       for _ in range(args.processes - 1)]
    children = []
    for sockets in slots[1:]:
        pid = os.fork()
        if pid == 0:
            import ctypes

            import gevent

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the parent
            gevent.reinit()
            _run(args, sockets)
            os._exit(0)
        children.append(pid)
    print("ready " + json.dumps(ports), flush=True)
    _run(args, slots[0])
    if args.print_metrics:
        from appliance import metrics

        sys.stdout.write(metrics.render().decode())
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    return 0


def _run(args, sockets: dict) -> None:
    store = _store(args.store)
    protected = _Protected(args.protected) if args.protected else None
    servers = []
    if "receiver" in sockets:
        from appliance.servers.receiver import ReceiverServer

        servers.append(ReceiverServer(sockets["receiver"], store, store, timeout=args.upload_timeout,
                                      idle_timeout=args.idle_timeout,
                                      blocked=set(args.blocked).__contains__ if args.blocked else None,
                                      disable_uploads=args.disable_uploads))
    if "peer" in sockets:
        from appliance.servers.peer import PeerServer

        servers.append(PeerServer(sockets["peer"], store, idle_timeout=args.idle_timeout, protected=protected,
                                  send_timeout=args.send_timeout))
    if "http" in sockets:
        from appliance.servers.http import HttpServer

        servers.append(HttpServer(sockets["http"], store, edge_token=args.edge_token, queue_size=args.queue_size,
                                  protected=protected, idle_timeout=args.idle_timeout,
                                  header_timeout=args.header_timeout, send_timeout=args.send_timeout))
    for server in servers:
        server.max_per_ip = args.max_per_ip
    serve(servers)


if __name__ == "__main__":
    sys.exit(main())
