"""The supervisor: plain CPython (no gevent), modelled on gunicorn's arbiter and nginx's master.

It owns the listening sockets (one SO_REUSEPORT socket per port per worker slot, created before any
child starts, so a respawned worker takes over its slot's socket and no queued connection is reset; the
upload port has one socket that every worker accepts from, see SHARED_SERVICES),
the control socket, the scoreboard, :2112 /metrics and sd_notify. Signal handlers and the control
thread only enqueue; one loop reaps children, checks heartbeats, keeps every role at its target count,
and talks to systemd.

Children are started with fork+exec of `python -m workers.main` so each one begins as a fresh
interpreter that monkey-patches before importing anything; their sockets, the scoreboard and the
resolved config are passed as inherited file descriptors.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from appliance import __version__, ipc, logs, metrics
from appliance.cache.crashcheck import check_disk_caches
from appliance.config import MAX_WORKERS, Config, default_workers, worker_count
from appliance.metrics_server import MetricsServer
from appliance.scoreboard import Scoreboard
from appliance.sdnotify import Notifier
from appliance.servers.listening import SHARED_SERVICES, pause_listener, resume_listener

log = logging.getLogger("supervisor")

BOOT_ERROR = 3  # a child exits with this when it cannot start (bad config, missing dependency)
MAX_SLOTS = 128
WORKER_PORTS = ("receiver", "tcp_peer", "http")  # services each gevent worker serves
PORT_SETTING = {"receiver": "receiver_port", "tcp_peer": "tcp_peer_port", "http": "http_peer_port"}
BOOT_FAILURES_BEFORE_HALT = 5
ROLES_ORDER = ("cache-manager", "dht", "http3", "worker")
METRICS_TIMEOUT = 10.0  # seconds a /metrics client has to send its request, and again to take the reply
METRICS_MAX_CONNECTIONS = 256
RELOAD_WAIT = 120.0  # most seconds a control-socket `reload` waits for its outcome
SERVING_ROLES = ("worker", "http3")  # stopped first; the other roles serve them
# Roles the appliance serves without (a cache is only a speed-up): one that cannot start is retried with
# backoff and reported as degraded, never a halt, and readiness does not wait for it once it has failed.
OPTIONAL_ROLES = ("cache-manager",)
OPTIONAL_BOOT_BACKOFF = (1.0, 60.0)  # first and longest delay between boot attempts of an optional role
SLOTTED_ROLES = ("worker", "http3")  # several processes, each in a slot with sockets the supervisor keeps


class SupervisorError(Exception):
    """A condition that stops the appliance with one clear line (port in use, boot failure)."""


class ReloadFailed(ValueError):
    """A reload that was refused or rolled back; its message is the reason, for `appliancectl reload`."""


class _Reply:
    """The outcome of a command the main loop carries out, for the control thread that waits on it."""

    def __init__(self):
        self.event = threading.Event()
        self.error: str | None = None

    def set(self, error: str | None) -> None:
        self.error = error
        self.event.set()


@dataclass
class Child:
    role: str
    index: int  # worker slot (socket set); 0 for single-instance roles
    slot: int  # scoreboard slot
    popen: subprocess.Popen
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False  # asked to stop (HUP replacement, TTOU, shutdown)
    kill_at: float | None = None  # escalate to SIGKILL after this monotonic time
    old: bool = False  # of the generation a reload is replacing
    killed_by: str | None = None  # why the supervisor itself killed it (None: any kill came from outside)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}" if self.role in SLOTTED_ROLES else self.role


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _listen_tcp(host: str, port: int, reuseport: bool, backlog: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _bind_udp(host: str, port: int) -> socket.socket:
    """One HTTP/3 slot's UDP socket. With SO_REUSEPORT the kernel hashes each client's address and port to
    one socket of the group, so a QUIC connection stays with one process while the client's address does not
    change; the supervisor keeps every slot's socket open across restarts so that mapping never shifts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def probe_port(host: str, port: int, kind: int = socket.SOCK_STREAM) -> None:
    """Bind without SO_REUSEPORT: fails if anything, including another appliance, holds the port."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise SupervisorError(f"cannot listen on port {port}/{proto}: {reason}") from None
    finally:
        sock.close()


class Supervisor:
    def __init__(self, config: Config, reload_config=None, verbose: list[str] | None = None):
        self.config = config
        self.reload_config = reload_config  # () -> Config, re-reads the file with the same CLI overrides
        self.verbose = verbose or []
        self.runtime_dir = os.path.abspath(config.runtime_dir)
        self.host = config.listen_address or "0.0.0.0"
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.children: dict[int, Child] = {}  # pid -> child
        self.worker_sockets: dict[int, dict[str, socket.socket]] = {}
        self.shared_sockets: dict[str, socket.socket] = {}  # one socket every worker slot accepts from
        self.http3_sockets: dict[int, socket.socket] = {}
        self.target_workers = worker_count(config)
        self.free_slots = list(range(MAX_SLOTS))
        self.scoreboard: Scoreboard | None = None
        self.notifier = Notifier()
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.stop_deadline = 0.0
        self.draining_since: float | None = None  # monotonic time `drain` (or a graceful stop) began
        self.stop_at: float | None = None  # a graceful stop waiting for the drain period to end
        self.exit_code = 0
        self.fatal: str | None = None
        self.ready_sent = False
        self.reloading = False
        self.replace_queue: list[int] = []  # worker indices still to replace during a reload
        self.reload_previous: tuple[Config, int] | None = None  # config and worker count to go back to
        self.reload_role_changes: dict[str, Any] | None = None  # old values: restart roles once a new worker is up
        self.reload_waiters: list[_Reply] = []
        self.rolling_back = False  # a failed reload's new workers are being replaced by the previous config's
        self.last_reload: dict[str, Any] | None = None
        self.boot_failures: dict[str, int] = {}
        self.role_down: dict[str, str] = {}  # optional role -> why it is not serving (status, metrics)
        self.respawn_at: dict[tuple[str, int], float] = {}
        self.backoff: dict[tuple[str, int], float] = {}
        self.last_watchdog = 0.0
        self.last_status = ""
        self.lock = threading.Lock()  # guards self.children for the control thread
        self.config_fd: int | None = None
        self.control_server = None
        self.metrics_server: MetricsServer | None = None
        self.started = time.time()

    # -- roles --------------------------------------------------------------------------------------
    def roles(self) -> dict[str, int]:
        """Target count per role for the current config."""
        c = self.config
        return {
            "cache-manager": 1,
            "dht": 0 if c.disable_dht else 1,
            "http3": 0 if (c.disable_http3 or not c.http3_peer_port) else (c.http3_processes or default_workers()),
            "worker": self.target_workers,
        }

    def worker_services(self) -> list[str]:
        return [s for s in WORKER_PORTS if self.config.values[PORT_SETTING[s]]
                and not (s == "receiver" and self.config.disable_uploads)]

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        os.makedirs(self.runtime_dir, exist_ok=True)
        control = os.path.join(self.runtime_dir, "control.sock")
        if os.path.exists(control):
            try:
                ipc.IpcClient(control, name="control", timeout=2).call("ping")
            except (ipc.IpcError, OSError, TimeoutError):
                os.unlink(control)  # stale socket of a dead appliance
            else:
                raise SupervisorError(f"another appliance is already running (control socket {control})")
        self._prepare_metrics_dir()
        for service in self.worker_services():
            probe_port(self.host, self.config.values[PORT_SETTING[service]])
        if self.config.metrics_port:
            probe_port(self.host, self.config.metrics_port)
        for port_key, kind in (("http3_peer_port", socket.SOCK_DGRAM), ("dht_port", socket.SOCK_DGRAM)):
            role = "http3" if port_key == "http3_peer_port" else "dht"
            if self.roles()[role]:
                probe_port(self.host, self.config.values[port_key], kind)
        check_disk_caches(self.config)  # before any process serves a cache file (appliance/cache/crashcheck.py)
        for index in range(self.target_workers):
            self._open_worker_sockets(index)
        for index in range(self.roles()["http3"]):
            self._open_http3_socket(index)
        self.scoreboard = Scoreboard(MAX_SLOTS)
        self._write_config_fd()
        self._start_control_server(control)
        if self.config.metrics_port:
            self._start_metrics_server()

    def _prepare_metrics_dir(self) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(self.runtime_dir, "prom")
        os.makedirs(directory, exist_ok=True)
        own = f"_{os.getpid()}.db"
        for name in os.listdir(directory):  # counters of a previous run must not add up with ours
            path = os.path.join(directory, name)
            if name.endswith(own):
                continue  # files this process opened at import stay
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        metrics.enable_multiprocess(directory)
        # Export the crash counters at 0 from the start: Prometheus's increase() misses a series' first sample,
        # so a counter that first appears at 1 would never fire the respawn-loop or stalled-child alerts.
        for role in ROLES_ORDER:
            metrics.RESTARTS_TOTAL.labels(role=role)
            for cause in ("signal", "exit", "heartbeat"):
                metrics.CRASHES_TOTAL.labels(role=role, cause=cause)

    def _open_worker_sockets(self, index: int) -> None:
        sockets = {}
        try:
            for service in self.worker_services():
                port = self.config.values[PORT_SETTING[service]]
                if service in SHARED_SERVICES:
                    if service not in self.shared_sockets:
                        self.shared_sockets[service] = _listen_tcp(self.host, port, reuseport=False)
                    sockets[service] = self.shared_sockets[service]
                else:
                    sockets[service] = _listen_tcp(self.host, port, reuseport=True)
        except OSError as exc:
            for service, s in sockets.items():
                if service not in SHARED_SERVICES:
                    s.close()
            raise SupervisorError(f"cannot open the sockets of worker slot {index}: {exc.strerror or exc}") from None
        self.worker_sockets[index] = sockets

    def _open_http3_socket(self, index: int) -> None:
        if index in self.http3_sockets:
            return
        try:
            self.http3_sockets[index] = _bind_udp(self.host, self.config.http3_peer_port)
        except OSError as exc:
            raise SupervisorError(f"cannot open the UDP socket of HTTP/3 slot {index}: {exc.strerror or exc}") from None

    def _close_worker_sockets(self, index: int) -> None:
        for service, sock in self.worker_sockets.pop(index, {}).items():
            if service not in SHARED_SERVICES:
                sock.close()
        if not self.worker_sockets:
            for sock in self.shared_sockets.values():
                sock.close()
            self.shared_sockets.clear()

    def _write_config_fd(self) -> None:
        """The resolved config, for children, in a memfd (not in argv or the environment: it holds secrets)."""
        if self.config_fd is not None:
            os.close(self.config_fd)
        fd = os.memfd_create("appliance-config", 0)
        payload = {"values": self.config.values, "path": self.config.path, "verbose": self.verbose}
        os.write(fd, json.dumps(payload).encode())
        self.config_fd = fd

    # -- control socket and metrics -----------------------------------------------------------------
    def _start_control_server(self, path: str) -> None:
        import socketserver

        supervisor = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                ipc.serve_connection(self.request, supervisor.handle_control, lambda m, p: None,
                                     spawn=lambda fn, *a: fn(*a))

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        old_umask = os.umask(0o117)  # owner and group may talk to the control socket
        try:
            self.control_server = Server(path, Handler)
        finally:
            os.umask(old_umask)
        threading.Thread(target=self.control_server.serve_forever, name="control", daemon=True).start()

    def _start_metrics_server(self) -> None:
        """:2112 on its own bounded selector thread (timeouts, a connection cap), off the main loop."""
        self.metrics_server = MetricsServer(self.host, self.config.metrics_port, metrics.render,
                                            timeout=METRICS_TIMEOUT, max_connections=METRICS_MAX_CONNECTIONS).start()

    def handle_control(self, method: str, params: Any) -> Any:
        """Runs in the control thread: reads state, or enqueues a command for the main loop."""
        if method == "ping":
            return "pong"
        if method == "status":
            return self.status()
        if method == "reload":
            return self._reload_and_wait(params)
        if method in ("stop", "reopen-logs"):
            self.events.put(("command", method, params))
            return "ok"
        if method in ("drain", "undrain"):
            if method == "undrain" and (self.stopping or self.stop_at is not None):
                raise ValueError("the appliance is stopping; it cannot be undrained")
            done = threading.Event()  # answer once the flag is set: /health fails when `drain` returns
            self.events.put(("command", method, done))
            if not done.wait(10):
                raise TimeoutError(f"{method}: the supervisor did not act within 10s")
            return "draining" if method == "drain" else "undrained"
        if method == "workers":
            delta = int(params)
            if delta not in (1, -1):
                raise ValueError("workers takes +1 or -1")
            self.events.put(("command", "workers", delta))
            return "ok"
        raise ValueError(f"unknown control command {method!r}")

    def _reload_and_wait(self, params: Any) -> dict[str, Any]:
        """Control thread: ask the main loop to reload and wait (within a bound) for the outcome."""
        wait = RELOAD_WAIT
        if isinstance(params, dict) and isinstance(params.get("wait"), int | float):
            wait = max(0.0, min(float(params["wait"]), RELOAD_WAIT))
        reply = _Reply()
        self.events.put(("command", "reload", reply))
        if not reply.event.wait(wait):
            return {"result": "in progress", "waited": wait}
        if reply.error:
            raise ReloadFailed(reply.error)
        return {"result": "done", "workers": self.target_workers}

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now, mono = time.time(), time.monotonic()
        processes = []
        cache: dict[str, Any] = {}
        dht: dict[str, Any] = {}
        with self.lock:
            children = sorted(self.children.values(), key=lambda c: (ROLES_ORDER.index(c.role), c.index, c.pid))
        for child in children:
            record = self.scoreboard.read(child.slot) if self.scoreboard else {}
            beat = record.get("heartbeat") or 0.0
            stats = record.get("status", {}) if record.get("pid") == child.pid else {}
            processes.append({
                "role": child.role, "slot": child.index, "pid": child.pid,
                "started": child.started, "age": round(now - child.started, 1),
                "last_heartbeat": round(mono - beat, 2) if beat else None,
                "state": "retiring" if child.retiring else (record.get("state") if stats else "booting"),
                "connections": stats.get("connections", 0), "requests": stats.get("requests", 0),
            })
            if child.role == "cache-manager" and stats:
                cache = stats.get("cache", {})
            if child.role == "dht" and stats:
                dht = stats.get("dht", {})
        if "cache-manager" in self.role_down and not cache:
            cache = {"state": "degraded", "degraded": {"manager": self.role_down["cache-manager"]}, "layers": []}
        ports = {s: self.config.values[PORT_SETTING[s]] for s in self.worker_services()}
        ports["metrics"] = self.config.metrics_port
        if self.roles()["http3"]:
            ports["http3"] = self.config.http3_peer_port
        if self.roles()["dht"]:
            ports["dht"] = self.config.dht_port
        return {
            "version": __version__, "pid": os.getpid(), "started": self.started,
            "state": self.stopping or ("draining" if self.draining_since is not None else ("reloading" if self.reloading
                                       else ("ready" if self.ready_sent else "starting"))),
            "draining": self.draining_since is not None,
            "workers": self.target_workers, "processes": processes, "cache": cache, "dht": dht, "ports": ports,
            "last_reload": self.last_reload,
            "config": {"path": self.config.path, "values": self.config.public()},
        }

    # -- children -----------------------------------------------------------------------------------
    def spawn(self, role: str, index: int = 0) -> Child:
        slot = self.free_slots.pop(0)
        self.scoreboard.clear(slot)
        fds = {"scoreboard": self.scoreboard.fd, "config": self.config_fd}
        if role == "worker":
            fds.update({name: s.fileno() for name, s in self.worker_sockets[index].items()})
        elif role == "http3":
            fds["http3"] = self.http3_sockets[index].fileno()
        env = dict(os.environ)
        env["APPLIANCE_CHILD"] = json.dumps({
            "role": role, "index": index, "slot": slot, "fds": fds, "supervisor_pid": os.getpid(),
            "runtime_dir": self.runtime_dir,
        })
        popen = subprocess.Popen([sys.executable, "-m", "workers.main"], env=env, pass_fds=tuple(fds.values()),
                                 close_fds=True)
        child = Child(role, index, slot, popen)
        with self.lock:
            self.children[popen.pid] = child
        log.info("started %s (pid %d)", child.name, popen.pid)
        return child

    def _count(self, role: str, index: int | None = None, include_retiring: bool = False) -> int:
        return sum(1 for c in self.children.values() if c.role == role and (index is None or c.index == index)
                   and (include_retiring or not c.retiring))

    def stop_child(self, child: Child, graceful: bool) -> None:
        if child.retiring and graceful:
            return
        child.retiring = True
        timeout = self.config.graceful_timeout if graceful else 2.0
        child.kill_at = time.monotonic() + timeout + 2.0
        try:
            os.kill(child.pid, signal.SIGTERM if graceful else signal.SIGQUIT)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        for child in list(self.children.values()):
            code = child.popen.poll()
            if code is None:
                continue
            with self.lock:
                del self.children[child.pid]
            self.free_slots.append(child.slot)
            metrics.mark_process_dead(child.pid)
            self._child_exited(child, code)

    def _child_exited(self, child: Child, code: int) -> None:
        cause = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
        if self.reloading and not self.rolling_back and not child.old and not child.ready and not (
                child.retiring or self.stopping):
            self._reload_failed(child, self._boot_error(child) or cause)
            return
        if child.retiring or self.stopping:
            log.info("%s (pid %d) stopped (%s)", child.name, child.pid, cause)
            if child.role == "worker" and child.index >= self.target_workers and not self._count("worker", child.index,
                                                                                                  True):
                self._close_worker_sockets(child.index)
            if child.role == "http3" and child.index >= self.roles()["http3"] and not self._count("http3", child.index,
                                                                                                   True):
                sock = self.http3_sockets.pop(child.index, None)
                if sock is not None:
                    sock.close()
            return
        key = (child.role, child.index)
        if child.role in OPTIONAL_ROLES:
            self._optional_role_down(child, cause)
            if not child.ready:
                return
        if code == BOOT_ERROR and child.role not in OPTIONAL_ROLES:
            self.halt(f"{child.name} could not start (see its log line above); stopping the appliance")
            return
        if not child.ready:
            self.boot_failures[child.role] = self.boot_failures.get(child.role, 0) + 1
            if self.boot_failures[child.role] >= BOOT_FAILURES_BEFORE_HALT:
                self.halt(f"{child.name} failed {BOOT_FAILURES_BEFORE_HALT} times before becoming ready; "
                          f"stopping the appliance")
                return
        if child.killed_by:  # counted when the supervisor killed it
            log.error("%s (pid %d) %s by the supervisor (%s); respawning", child.name, child.pid, cause,
                      child.killed_by)
        else:  # a signal from outside (an operator, the OOM killer...): its name, no guessed cause
            log.error("%s (pid %d) exited unexpectedly (%s); respawning", child.name, child.pid, cause)
            metrics.CRASHES_TOTAL.labels(role=child.role, cause="signal" if code < 0 else "exit").inc()
        # Backoff grows for children that die young and resets for ones that ran a while.
        lived = time.monotonic() - child.started_mono
        delay = 0.0 if lived > 30 else min(max(self.backoff.get(key, 0.0) * 2, 0.1), 10.0)
        self.backoff[key] = delay
        self.respawn_at[key] = time.monotonic() + delay

    def _optional_role_down(self, child: Child, cause: str) -> None:
        """Serve without an optional role while it comes back; one that fails at boot retries with backoff."""
        record = self.scoreboard.read(child.slot) if self.scoreboard else {}
        error = (record.get("status") or {}).get("error") if record.get("pid") == child.pid else None
        what = "exited" if child.ready else "could not start"
        self.role_down[child.role] = f"the {child.role} {what}: {error or cause}; serving without it"
        metrics.CACHE_DEGRADED.labels(reason="manager").set(1)
        if child.ready:
            return  # a crash after boot: respawned like any child
        key = (child.role, child.index)
        first, longest = OPTIONAL_BOOT_BACKOFF
        delay = min(max(self.backoff.get(key, 0.0) * 2, first), longest)
        self.backoff[key] = delay
        self.respawn_at[key] = time.monotonic() + delay
        metrics.CRASHES_TOTAL.labels(role=child.role, cause="boot").inc()
        log.error("%s (pid %d) %s (%s); serving without it, retrying in %.0fs", child.name, child.pid, what,
                  error or cause, delay)

    def manage(self) -> None:
        """Spawn what is missing, retire what is extra, move a reload forward."""
        if self.stopping:
            return
        now = time.monotonic()
        for role, target in self.roles().items():
            if role == "worker":
                continue
            if role == "http3":
                self._manage_http3(target, now)
                continue
            if self._count(role) < target and now >= self.respawn_at.get((role, 0), 0):
                restarted = (role, 0) in self.respawn_at
                self.spawn(role)
                if restarted:
                    metrics.RESTARTS_TOTAL.labels(role=role).inc()
            elif self._count(role) > target:
                for child in [c for c in self.children.values() if c.role == role and not c.retiring][target:]:
                    self.stop_child(child, graceful=True)
        for index in range(self.target_workers):
            if self._count("worker", index) == 0 and now >= self.respawn_at.get(("worker", index), 0):
                if index not in self.worker_sockets:
                    self._open_worker_sockets(index)
                restarted = ("worker", index) in self.respawn_at
                self.spawn("worker", index)
                if restarted:
                    metrics.RESTARTS_TOTAL.labels(role="worker").inc()
        for child in list(self.children.values()):
            if child.role == "worker" and child.index >= self.target_workers and not child.retiring:
                self.stop_child(child, graceful=True)
        self._advance_reload()

    def _manage_http3(self, target: int, now: float) -> None:
        """One HTTP/3 process per slot, each on its slot's SO_REUSEPORT socket; extra slots retire."""
        for index in range(target):
            if self._count("http3", index) == 0 and now >= self.respawn_at.get(("http3", index), 0):
                self._open_http3_socket(index)
                restarted = ("http3", index) in self.respawn_at
                self.spawn("http3", index)
                if restarted:
                    metrics.RESTARTS_TOTAL.labels(role="http3").inc()
        for child in list(self.children.values()):
            if child.role == "http3" and child.index >= target and not child.retiring:
                self.stop_child(child, graceful=True)

    def _advance_reload(self) -> None:
        """HUP: replace workers one at a time; the old one retires only once its successor is ready."""
        if not self.reloading:
            return
        if self.reload_role_changes is not None and (not self.replace_queue or any(
                c.role == "worker" and c.ready and not c.old for c in self.children.values())):
            # A worker boots with the new config: now the support roles whose settings changed take it.
            self._restart_roles_with_changed_config(self.reload_role_changes)
            self.reload_role_changes = None
        olds = [c for c in self.children.values() if c.role == "worker" and not c.retiring and c.old]
        if self.replace_queue:
            index = self.replace_queue[0]
            current = [c for c in self.children.values() if c.role == "worker" and c.index == index
                       and not c.retiring]
            fresh = [c for c in current if not c.old]
            if not fresh:
                self.spawn("worker", index)
            elif fresh[0].ready:
                for old in (c for c in current if c.old):
                    self.stop_child(old, graceful=True)
                self.replace_queue.pop(0)
            return
        if not olds and self.all_ready():  # the restarted support roles too: one that cannot boot rolls back
            self.reloading = False
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
            if self.rolling_back:
                self.rolling_back = False
                log.info("reload rolled back: every worker runs the previous config")
            else:
                log.info("reload complete")
                self._reload_finished(None)

    def check_heartbeats(self) -> None:
        now = time.monotonic()
        timeout = self.config.heartbeat_timeout
        for child in list(self.children.values()):
            if child.kill_at is not None and now > child.kill_at:
                log.warning("%s (pid %d) did not stop in time; killing it", child.name, child.pid)
                self._kill(child)
                child.kill_at = now + 5
                continue
            record = self.scoreboard.read(child.slot)
            if record["pid"] != child.pid:
                if now - child.started_mono > max(timeout, 60):
                    log.error("%s (pid %d) never reported in; killing it", child.name, child.pid)
                    child.killed_by = f"it never reported in within {max(timeout, 60):.0f}s"
                    self._kill(child)
                continue
            if record["state"] == "ready" and not child.ready:
                child.ready = True
                self.boot_failures[child.role] = 0
                log.info("%s (pid %d) is ready", child.name, child.pid)
                if child.role in self.role_down:
                    metrics.CACHE_DEGRADED.labels(reason="manager").set(0)  # before status stops saying so
                    del self.role_down[child.role]
                    log.info("%s is back", child.name)
            if record["state"] == "failed":
                continue  # it is exiting with a boot error
            age = now - record["heartbeat"]
            if age > timeout and not child.retiring:
                log.error("%s (pid %d) heartbeat stalled for %.0fs; killing and replacing it", child.name,
                          child.pid, age)
                metrics.CRASHES_TOTAL.labels(role=child.role, cause="heartbeat").inc()
                child.killed_by = f"its heartbeat stalled for {age:.0f}s"
                self._kill(child)

    def _boot_error(self, child: Child) -> str | None:
        """The reason a child that failed at boot posted to its scoreboard slot (read before the slot is reused)."""
        record = self.scoreboard.read(child.slot) if self.scoreboard else {}
        if record.get("pid") == child.pid and record.get("state") == "failed":
            return (record.get("status") or {}).get("error")
        return None

    def _kill(self, child: Child) -> None:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def all_ready(self) -> bool:
        for role, target in self.roles().items():
            if role in self.role_down:
                continue  # an optional role that failed: serve without it
            ready = [c for c in self.children.values() if c.role == role and c.ready and not c.retiring]
            if len(ready) < max(target, 1 if role == "worker" else 0):  # never READY with no worker
                return False
        return True

    def heartbeats_fresh(self) -> bool:
        now = time.monotonic()
        for child in self.children.values():
            record = self.scoreboard.read(child.slot)
            if record["pid"] == child.pid and now - record["heartbeat"] > self.config.heartbeat_timeout:
                return False
        return True

    def status_line(self) -> str:
        counts = {}
        for child in self.children.values():
            if not child.retiring:
                counts[child.role] = counts.get(child.role, 0) + 1
        workers = counts.get("worker", 0)
        parts = [f"{workers} worker{'' if workers == 1 else 's'}"]
        parts += [role for role in ("cache-manager", "dht", "http3") if counts.get(role)]
        state = "stopping" if self.stopping else ("draining" if self.draining_since is not None else (
            "reloading" if self.reloading else ("ready" if self.ready_sent else "starting")))
        return f"{state}: " + ", ".join(parts)

    # -- events -------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: self.events.put(("signal", signum, None)))

    def handle_event(self, kind: str, what: Any, params: Any) -> None:
        if kind == "signal":
            if what == signal.SIGCHLD:
                return  # reaping happens every iteration
            what = {signal.SIGTERM: "stop", signal.SIGINT: "fast-stop", signal.SIGQUIT: "fast-stop",
                    signal.SIGHUP: "reload", signal.SIGUSR1: "reopen-logs", signal.SIGTTIN: "ttin",
                    signal.SIGTTOU: "ttou"}[what]
        if what == "stop":
            self.begin_stop(graceful=True)
        elif what == "fast-stop":
            self.begin_stop(graceful=False)
        elif what == "reload":
            self.reload(params if isinstance(params, _Reply) else None)
        elif what in ("drain", "undrain"):
            self.drain() if what == "drain" else self.undrain()
            params.set()
        elif what == "reopen-logs":
            logs.reopen()
            for child in self.children.values():
                if child.ready:  # USR1's default action kills a child that has not installed its handler yet
                    os.kill(child.pid, signal.SIGUSR1)
            log.info("log files reopened")
        elif what in ("ttin", "ttou") or what == "workers":
            delta = params if what == "workers" else (1 if what == "ttin" else -1)
            if self.target_workers + delta < 1:
                log.warning("keeping the last worker (TTOU ignored)")
            elif self.target_workers + delta > MAX_WORKERS:
                log.warning("already at the most workers allowed, %d (TTIN ignored)", MAX_WORKERS)
            elif not self.stopping:
                self.target_workers += delta
                log.info("workers: %d", self.target_workers)

    def drain(self) -> None:
        """/health answers 503 and the TCP ports refuse new connections; everything established is served.

        Workers see the flag within DRAIN_POLL and pause their own slot's TCP sockets; the sockets of a slot
        with no worker right now are paused here (a respawned worker reads the flag at boot)."""
        if self.draining_since is not None:
            return
        self.draining_since = time.monotonic()
        self.scoreboard.draining = True
        manned = {c.index for c in self.children.values() if c.role == "worker"}
        for index, sockets in self.worker_sockets.items():
            if index not in manned:
                for service, sock in sockets.items():
                    if service != "http" and (index == 0 or service not in SHARED_SERVICES):
                        pause_listener(sock)
        log.info("draining: /health answers 503, the TCP ports refuse new connections")

    def undrain(self) -> None:
        if self.draining_since is None or self.stopping or self.stop_at is not None:
            return
        for sockets in self.worker_sockets.values():  # listening again before the workers accept again
            for service, sock in sockets.items():
                if service != "http":
                    resume_listener(sock)
        self.draining_since = None
        self.scoreboard.draining = False
        log.info("undrained: serving normally")

    def reload(self, reply: _Reply | None = None) -> None:
        """HUP or `appliancectl reload`: re-read the config and replace the workers one at a time.

        The support roles whose settings changed restart only once a worker of the new config is ready;
        if a new worker fails at boot, the reload is rolled back (see _reload_failed).
        """
        if self.stopping or self.reloading or self.stop_at is not None:
            if reply is not None:
                reply.set("the appliance is stopping" if self.stopping or self.stop_at is not None
                          else "a reload is already in progress")
            return
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        new = self.config
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except Exception as exc:  # a broken edit must not take the running appliance down
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.error("reload: keeping the running config: %s", message)
                self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
                self._reload_finished(f"the new config was refused: {message}", reply)
                return
            port_keys = ("receiver_port", "tcp_peer_port", "http_peer_port", "metrics_port", "http3_peer_port",
                         "dht_port", "disable_uploads", "runtime_dir")
            changed = [k for k in port_keys if new.values[k] != self.config.values[k]]
            if changed:
                log.warning("reload: %s changed; ports and the runtime directory change only on restart",
                            ", ".join(changed))
                for key in changed:
                    new.values[key] = self.config.values[key]
        self.reload_previous = (self.config, self.target_workers)
        self.reload_role_changes = dict(self.config.values)
        self.config = new
        self._write_config_fd()
        self.target_workers = new.workers if new.workers > 0 else self.target_workers
        log.info("reloading: replacing workers one at a time")
        self.reloading = True
        if reply is not None:
            self.reload_waiters.append(reply)
        for child in self.children.values():
            child.old = True
        self.replace_queue = sorted({c.index for c in self.children.values()
                                     if c.role == "worker" and c.index < self.target_workers})

    def _reload_failed(self, child: Child, reason: str) -> None:
        """A process of the new config failed at boot: go back to the previous config, keep the old workers.

        New workers still booting are stopped; those already serving are replaced one at a time by workers
        of the previous config (a rollback: a failure during it is handled as any other boot failure).
        """
        message = f"{child.name} could not start with the new config: {reason}"
        log.error("reload failed: %s; going back to the previous config (the old workers keep serving)", message)
        new_values = dict(self.config.values)
        self.config, self.target_workers = self.reload_previous
        self._write_config_fd()
        if self.reload_role_changes is None:  # the support roles already took the new config: back they go
            self._restart_roles_with_changed_config(new_values)
        serving = []
        kept = {c.index for c in self.children.values() if c.role == "worker" and c.old and not c.retiring}
        for other in list(self.children.values()):
            if other.role == "worker" and not other.old and not other.retiring:
                if other.ready and other.index < self.target_workers and other.index not in kept:
                    serving.append(other)  # its old worker is gone: it serves until its replacement is ready
                else:
                    self.stop_child(other, graceful=True)
        for other in self.children.values():
            other.old = other in serving
        self.replace_queue = sorted(c.index for c in serving)
        self.reloading = self.rolling_back = bool(serving)
        if not serving:
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        self._reload_finished(message)

    def _reload_finished(self, error: str | None, reply: _Reply | None = None) -> None:
        """Record a reload's outcome (status shows it) and tell whoever waits for it."""
        self.last_reload = {"time": time.time(), "ok": error is None, "error": error}
        self.reload_previous = self.reload_role_changes = None
        waiters, self.reload_waiters = self.reload_waiters + ([reply] if reply else []), []
        for waiter in waiters:
            waiter.set(error)

    def _restart_roles_with_changed_config(self, old: dict[str, Any]) -> None:
        # Which settings each long-lived role reads (workers are always replaced on reload).
        groups = {"cache-manager": ("cache", "origin", "storage", "database", "blocklist"), "dht": ("dht",),
                  "http3": ("http3", "protected", "cache", "origin", "storage", "database", "blocklist")}
        always = ("storage_dir", "cache_dir", "state_dir", "request_queue_size")
        from appliance.config import BY_KEY

        for role, setting_groups in groups.items():
            keys = [k for k, s in BY_KEY.items() if s.group in setting_groups or k in always]
            if any(old.get(k) != self.config.values.get(k) for k in keys):
                for child in [c for c in self.children.values() if c.role == role and not c.retiring]:
                    log.info("reload: restarting %s for its new settings", role)
                    self.stop_child(child, graceful=True)

    def begin_stop(self, graceful: bool) -> None:
        if self.stopping == "fast" or (self.stopping == "graceful" and graceful):
            return
        if graceful and self.config.drain_seconds > 0:
            self.drain()  # a balancer moves traffic away before anything is refused
            stop_at = self.draining_since + self.config.drain_seconds
            if time.monotonic() < stop_at:
                if self.stop_at is None:
                    self.stop_at = stop_at
                    self.notifier.notify("STOPPING=1")
                    log.info("graceful stop: draining for %.1fs first", stop_at - time.monotonic())
                return
        self.stop_at = None
        self.stopping = "graceful" if graceful else "fast"
        self.notifier.notify("STOPPING=1")
        if self.reloading and not self.rolling_back:
            self._reload_finished("the appliance is stopping")
        log.info("%s stop: %d children", "graceful" if graceful else "fast", len(self.children))
        self.stop_deadline = time.monotonic() + (self.config.graceful_timeout if graceful else 2.0) + 3.0
        for child in list(self.children.values()):
            if not graceful or child.role in SERVING_ROLES:
                child.retiring = False
                self.stop_child(child, graceful)
        self._stop_support_roles()

    def _stop_support_roles(self) -> None:
        """The cache manager and the DHT stop once no server is left, so in-flight misses still complete."""
        if any(c.role in SERVING_ROLES for c in self.children.values()):
            return
        for child in list(self.children.values()):
            if not child.retiring:
                self.stop_child(child, self.stopping == "graceful")

    def halt(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            log.error("%s", message)
            self.exit_code = 1
        self.begin_stop(graceful=False)

    # -- main loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        log.info("reflector appliance %s starting (pid %d, %d worker%s, runtime %s)", __version__, os.getpid(),
                 self.target_workers, "" if self.target_workers == 1 else "s", self.runtime_dir)
        self.manage()
        while True:
            try:
                event = self.events.get(timeout=0.25)
            except queue.Empty:
                event = None
            while event is not None:
                self.handle_event(*event)
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    event = None
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                self.begin_stop(graceful=True)  # the drain period is over
            self.reap()
            if self.stopping:
                if not self.children:
                    break
                self._stop_support_roles()
                if time.monotonic() > self.stop_deadline:
                    for child in self.children.values():
                        self._kill(child)
                    self.stop_deadline = time.monotonic() + 5
                self.check_heartbeats()
                continue
            self.check_heartbeats()
            self.manage()
            self._notify_systemd()
        self.shutdown()
        log.info("stopped%s", f": {self.fatal}" if self.fatal else "")
        return self.exit_code

    def _notify_systemd(self) -> None:
        ready = self.all_ready()
        if ready and not self.ready_sent:
            self.ready_sent = True
            log.info("all roles ready: %s", self.status_line())
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        line = self.status_line()
        if line != self.last_status:
            self.last_status = line
            self.notifier.notify(f"STATUS={line}")
        for role in self.roles():
            metrics.PROCESSES.labels(role=role).set(self._count(role))
        self._export_heartbeats()
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() - self.last_watchdog >= interval and self.heartbeats_fresh():
            self.last_watchdog = time.monotonic()
            self.notifier.notify("WATCHDOG=1")

    def _export_heartbeats(self) -> None:
        """appliance_heartbeat_age_seconds: the oldest heartbeat per role (the "stalled child" alert)."""
        now, ages = time.monotonic(), dict.fromkeys(self.roles(), 0.0)
        for child in self.children.values():
            record = self.scoreboard.read(child.slot)
            if record["pid"] == child.pid and record["heartbeat"]:
                ages[child.role] = max(ages.get(child.role, 0.0), now - record["heartbeat"])
        for role, age in ages.items():
            metrics.HEARTBEAT_AGE.labels(role=role).set(round(age, 3))

    def shutdown(self) -> None:
        for server in (self.control_server, self.metrics_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        control = os.path.join(self.runtime_dir, "control.sock")
        if os.path.exists(control):
            os.unlink(control)
        for index in list(self.worker_sockets):
            self._close_worker_sockets(index)
        for sock in self.http3_sockets.values():
            sock.close()
        self.http3_sockets.clear()

