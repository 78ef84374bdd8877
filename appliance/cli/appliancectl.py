"""`appliancectl`: talk to a running appliance over its control socket, <runtime_dir>/control.sock.

Where the appliance is found: see SEARCH_ORDER (also shown by `appliancectl --help`).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time

from appliance import config as cfg
from appliance import ipc
from appliance.cli.parsing import harden, parse

SERVICE_CONFIG = "/etc/reflector-appliance/config.toml"
RUNTIME_DIR_ENV = "REFLECTOR_RUNTIME_DIR"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
TIMEOUT = 10.0  # seconds to wait for an answer
RELOAD_TIMEOUT = 120.0  # a reload answers once every worker is replaced, or the reload failed

SEARCH_ORDER = f"""\
Finding the appliance (its runtime directory, which holds control.sock), first match wins:
  1. --runtime-dir DIR
  2. --conf FILE: that config's runtime_dir
  3. ${RUNTIME_DIR_ENV}
  4. the first of these that holds a control socket:
     the installed service's runtime_dir (from {SERVICE_CONFIG}),
     the quick start's (scripts/run of the checkout this appliancectl runs from: <checkout>/run),
     ./run (the built-in default, relative to the current directory)
"""


class NotFound(Exception):
    """No control socket in any of the places searched; the message lists them."""


def _config_runtime_dir(path: str, base: str | None = None) -> str:
    """runtime_dir of a config file, made absolute (relative to `base`, default the current directory)."""
    runtime = cfg.resolve(cfg.load_file(path)).runtime_dir
    return os.path.abspath(os.path.join(base or os.getcwd(), runtime))


def _implicit_runtime_dirs() -> list[str]:
    """Where an appliance runs when nobody said: the installed service, this checkout's quick start, ./run."""
    from appliance import configfile

    found = []
    if os.path.exists(SERVICE_CONFIG):
        found.append(_config_runtime_dir(SERVICE_CONFIG))
    if configfile.DIST_QUICK_START.exists():  # appliancectl runs from a checkout: scripts/run runs from its root
        found.append(_config_runtime_dir(str(configfile.DIST_QUICK_START), str(configfile.REPO_ROOT)))
    found.append(os.path.abspath(cfg.BY_KEY["runtime_dir"].default))
    return list(dict.fromkeys(found))


def control_socket(args: argparse.Namespace, environ: dict | None = None) -> str:
    """The control socket to use, by SEARCH_ORDER (NotFound when no implicit place has one)."""
    environ = os.environ if environ is None else environ
    if args.runtime_dir:
        runtime = os.path.abspath(args.runtime_dir)
    elif args.conf:
        runtime = _config_runtime_dir(args.conf)
    elif environ.get(RUNTIME_DIR_ENV):
        runtime = os.path.abspath(environ[RUNTIME_DIR_ENV])
    else:
        candidates = [os.path.join(d, "control.sock") for d in _implicit_runtime_dirs()]
        for path in candidates:
            if os.path.exists(path):
                return path
        raise NotFound("no appliance is running: no control socket at " + ", ".join(candidates)
                       + f" (give its runtime directory with --runtime-dir DIR or ${RUNTIME_DIR_ENV})")
    return os.path.join(runtime, "control.sock")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def render_status(status: dict) -> str:
    lines = [f"reflector appliance {status['version']}  pid {status['pid']}  "
             f"up {_duration(time.time() - status['started'])}  {status['state']}  "
             f"config {status['config'].get('path') or '(built-in defaults)'}", ""]
    rows = [("PROCESS", "PID", "AGE", "HEARTBEAT", "STATE", "CONNS", "REQUESTS")]
    for p in status["processes"]:
        name = f"{p['role']}-{p['slot']}" if p["role"] in ("worker", "http3") else p["role"]
        rows.append((name, str(p["pid"]), _duration(p["age"]),
                     f"{_duration(p['last_heartbeat'])} ago" if p["last_heartbeat"] is not None else "-",
                     str(p["state"]), str(p["connections"]), str(p["requests"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    cache = status.get("cache") or {}
    if cache.get("layers"):
        capacity = cache.get("capacity_bytes") or 0
        used = cache.get("used_bytes") or 0
        ratio = cache.get("hit_ratio")
        share = f" ({100 * used / capacity:.1f}%)" if capacity else ""
        hits = "-" if ratio is None else f"{100 * ratio:.1f}%"
        lines += ["", f"cache   {_bytes(used)} / {_bytes(capacity)}{share}  blobs {cache.get('blobs', 0)}  "
                      f"hit ratio {hits}  evictions {cache.get('evictions', 0)}  "
                      f"origin fetches {cache.get('origin_fetches', 0)}"]
        for layer in cache["layers"]:
            lines.append(f"        {layer.get('path')} ({layer.get('manager')}): {_bytes(layer.get('used_bytes'))}"
                         f" / {_bytes(layer.get('capacity'))}, {layer.get('blobs', 0)} blobs")
    elif not cache.get("degraded"):
        lines += ["", "cache   none (serving from local storage)"]
    else:
        lines.append("")
    for reason, message in (cache.get("degraded") or {}).items():
        lines.append(f"cache   degraded ({reason}): {message}")
    dht = status.get("dht") or {}
    if dht:
        lines.append("dht     " + "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in dht.items()
                                            if isinstance(v, int | float | str) and k != "node_id"))
    elif "dht" not in status.get("ports", {}):
        lines.append("dht     disabled")
    udp = {"http3", "dht"}
    lines.append("ports   " + "  ".join(f"{name} {port}/{'udp' if name in udp else 'tcp'}"
                                         for name, port in status.get("ports", {}).items()))
    reload = status.get("last_reload")
    if reload:
        ago = _duration(time.time() - reload["time"])
        lines.append(f"reload  {'done' if reload['ok'] else 'FAILED'} {ago} ago"
                     + ("" if reload["ok"] else f": {reload['error']} (the previous config is running)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliancectl", description="Control a running reflector appliance.",
                                     epilog=SEARCH_ORDER, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--runtime-dir", help="the appliance's runtime directory (holds control.sock)")
    parser.add_argument("--conf", help="read runtime_dir from this config file")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds to wait for an answer (default: {TIMEOUT:g}; reload: {RELOAD_TIMEOUT:g})")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    status = sub.add_parser("status", help="processes, cache, DHT, ports, version and config")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("reload", help="re-read the config and replace workers one by one (like SIGHUP)")
    sub.add_parser("stop", help="graceful stop (like SIGTERM)")
    workers = sub.add_parser("workers", help="one worker more or less (like SIGTTIN / SIGTTOU)")
    workers.add_argument("delta", choices=["+1", "-1"])
    sub.add_parser("reopen-logs", help="reopen log files (like SIGUSR1)")
    sub.add_parser("drain", help="fail health checks (/health 503, TCP ports refuse) while still serving")
    sub.add_parser("undrain", help="end a drain: pass health checks and accept on every port again")
    args = parse(harden(parser), argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    try:
        path = control_socket(args)
    except cfg.ConfigError as exc:
        print(f"appliancectl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotFound as exc:
        print(f"appliancectl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    timeout = args.timeout if args.timeout is not None else (RELOAD_TIMEOUT if args.verb == "reload" else TIMEOUT)
    client = ipc.IpcClient(path, name="appliance", timeout=timeout)
    try:
        if args.verb == "reload":
            return _reload(client, timeout)
        if args.verb == "status":
            result = client.call("status")
            print(json.dumps(result, indent=2, sort_keys=True) if args.json else render_status(result))
        elif args.verb == "workers":
            client.call("workers", int(args.delta))
            print(f"workers {args.delta}")
        elif args.verb in ("drain", "undrain"):
            print(client.call(args.verb))  # answered once in effect
        else:
            client.call(args.verb)
            print(f"{args.verb}: requested")
    except ipc.IpcUnavailable:
        print(f"appliancectl: {unavailable(path)}", file=sys.stderr)
        return EXIT_FAILURE
    except (ipc.IpcError, TimeoutError) as exc:
        print(f"appliancectl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        client.close()
    return EXIT_OK


def _reload(client: ipc.IpcClient, timeout: float) -> int:
    """Ask for a reload and wait for its outcome: exit 0 only when the new workers are serving."""
    wait = max(1.0, timeout - 5.0)  # the supervisor answers "in progress" before our own timeout
    try:
        result = client.call("reload", {"wait": wait}, timeout=timeout)
    except ipc.IpcUnavailable:
        raise
    except ipc.IpcError as exc:
        print(f"appliancectl: reload failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not isinstance(result, dict):  # a supervisor of an older version only says "ok": requested
        print("reload: requested")
        return EXIT_OK
    if result.get("result") != "done":
        print(f"appliancectl: reload still in progress after {result.get('waited', wait):g}s; "
              "see `appliancectl status`", file=sys.stderr)
        return EXIT_FAILURE
    print(f"reload: done ({result.get('workers')} workers running the new config)")
    return EXIT_OK


def unavailable(path: str) -> str:
    """Why nothing answers on the control socket, in the operator's words."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        code = exc.errno
    else:
        code = None
    finally:
        probe.close()
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path} (run as root or as a member of the appliance's group)"
    if code in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return f"no appliance is running (nothing answers on {path})"
    if code is None:
        return f"the appliance at {path} closed the connection"
    return f"cannot reach the appliance at {path}: {os.strerror(code)}"


if __name__ == "__main__":
    sys.exit(main())
