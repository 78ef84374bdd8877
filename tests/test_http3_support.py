"""Helpers for the HTTP/3 tests (this module holds no tests).

- H3Probe: an independent HTTP/3 client, sans-io on aioquic's QuicConnection + H3Connection over a blocking
  UDP socket bound to 127.0.0.1. It shares no code with appliance/http3/client.py or Http3Store.
- ServerThread: the HTTP/3 blob server (appliance.http3.server) over any store, on its own event loop
  in a thread, on a free 127.0.0.1 UDP port; restartable on the same port.
- AioquicBlobServer: a minimal `/get/` + `/has/` server on aioquic, the other QUIC stack (ours is qh3), in
  a thread on a free port; it shares no code with appliance/http3/.
- Appliance: `prism reflector` as a subprocess on free ports and a tmp dir, ready when the control
  socket says every process is ready; always stopped (TERM, then KILL).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset

from appliance import ipc
from appliance.http3.quic import server_configuration
from appliance.http3.server import BlobService, start_server
from appliance.http3.tls import load_or_create
from tests.appliance_process import poll as wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class H3Probe:
    """One QUIC connection; `request(path)` -> (status, headers dict, body)."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.addr = ("127.0.0.1", port)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                                   max_stream_data=4 << 20, max_data=64 << 20)
        self.quic = QuicConnection(configuration=config)
        self.h3 = H3Connection(self.quic)
        self.connected = False
        self.closed: str | None = None
        self.responses: dict[int, dict] = {}
        self.largest_datagram = 0  # UDP payload; the server must stay within what a real network carries
        self.quic.connect(self.addr, now=time.monotonic())
        self.pump_until(lambda: self.connected or self.closed)
        if not self.connected:
            raise ConnectionError(f"HTTP/3 handshake with {self.addr} failed: {self.closed}")

    def request(self, path: str, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
        stream_id = self.send(path, method)
        self.pump_until(lambda: self.responses[stream_id]["done"] or self.closed)
        response = self.responses.pop(stream_id)
        if response["reset"]:
            raise ConnectionError(f"the server reset the response to {path} after {len(response['body'])} bytes")
        if not response["done"]:
            raise ConnectionError(f"no complete response to {path}: {self.closed}")
        headers = dict(response["headers"])
        return int(headers[b":status"]), headers, bytes(response["body"])

    def send(self, path: str, method: str = "GET") -> int:
        """Send a request; its response builds up in `responses[stream id]` while `pump_until` runs."""
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(stream_id, [(b":method", method.encode()), (b":scheme", b"https"),
                                         (b":authority", f"127.0.0.1:{self.addr[1]}".encode()),
                                         (b":path", path.encode())], end_stream=True)
        self.responses[stream_id] = {"headers": None, "body": bytearray(), "done": False, "reset": False}
        return stream_id

    def pump_until(self, done) -> None:
        """Exchange datagrams until `done()` (TimeoutError after `timeout`)."""
        deadline = time.monotonic() + self.timeout
        while not done():
            now = time.monotonic()
            for data, addr in self.quic.datagrams_to_send(now=now):
                self.sock.sendto(data, addr)
            if now > deadline:
                raise TimeoutError("H3Probe: no answer in time")
            timer = self.quic.get_timer()
            wait = min(deadline, timer if timer is not None else deadline) - now
            self.sock.settimeout(max(0.001, wait))
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                self.quic.handle_timer(now=time.monotonic())
            else:
                self.largest_datagram = max(self.largest_datagram, len(data))
                self.quic.receive_datagram(data, addr, now=time.monotonic())
            self._events()

    def _events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                self.connected = True
            elif isinstance(event, StreamReset) and event.stream_id in self.responses:
                self.responses[event.stream_id].update(reset=True, done=True)
            elif isinstance(event, ConnectionTerminated):
                self.closed = event.reason_phrase or f"error {event.error_code:#x}"
            for h3_event in self.h3.handle_event(event):
                response = self.responses.get(getattr(h3_event, "stream_id", -1))
                if response is None:
                    continue
                if isinstance(h3_event, HeadersReceived) and response["headers"] is None:
                    response["headers"] = h3_event.headers
                elif isinstance(h3_event, DataReceived):
                    response["body"] += h3_event.data
                if h3_event.stream_ended:
                    response["done"] = True
            event = self.quic.next_event()

    def close(self) -> None:
        self.quic.close()
        for data, addr in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, addr)
        self.sock.close()

    def __enter__(self) -> H3Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServerThread:
    """The HTTP/3 blob server over `store`, on an event loop of its own; `stop()` / `start()` keep the port."""

    def __init__(self, store, cert_dir: str, port: int | None = None, **service_kwargs):
        self.store = store
        self.cert = load_or_create(cert_dir)
        self.port = port or free_udp_port()
        self.service_kwargs = service_kwargs
        self.service: BlobService | None = None
        self.server = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        ready = threading.Event()
        errors: list[BaseException] = []
        self.loop = asyncio.new_event_loop()

        async def boot():
            self.service = BlobService(self.store, **self.service_kwargs)
            config = server_configuration(self.cert.certificate, self.cert.private_key)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", self.port))
            self.server = await start_server(sock, config, self.service)

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(boot())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def call(self, fn):
        """Run `fn()` on the server's loop and return its result."""
        box: list = []
        done = threading.Event()

        def wrapper():
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(wrapper)
        assert done.wait(10)
        return box[0]

    def stop(self) -> None:
        """Drop every connection without a word (as a killed process would) and free the port."""
        if self.loop is None:
            return

        def halt():
            self.server.drop()
            self.service.shutdown_pools()
            for task in list(self.service._tasks):
                task.cancel()
            self.loop.call_later(0.1, self.loop.stop)  # a few more turns let the cancelled tasks finish

        self.loop.call_soon_threadsafe(halt)
        self.thread.join(10)
        self.loop = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class AioquicBlobServer:
    """`/get/{hash}` (200 + bytes, or 404) and `/has/{hash}` over aioquic's server, in a thread; a context manager."""

    def __init__(self, blobs: dict[str, bytes], cert_dir: str):
        self.blobs = blobs
        self.cert = load_or_create(cert_dir)
        self.port = free_udp_port()
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> AioquicBlobServer:
        from aioquic.asyncio import QuicConnectionProtocol, serve

        blobs = self.blobs

        class Protocol(QuicConnectionProtocol):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.h3 = H3Connection(self._quic)

            def quic_event_received(self, event):
                for h3_event in self.h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived):
                        path = dict(h3_event.headers)[b":path"].decode().partition("?")[0]
                        body = blobs.get(path[5:])
                        status = 200 if body is not None else 404
                        body = (body if path.startswith("/get/") else b"{}") if body is not None else b"not found"
                        self.h3.send_headers(h3_event.stream_id, [(b":status", str(status).encode()),
                                                                  (b"content-length", str(len(body)).encode())])
                        self.h3.send_data(h3_event.stream_id, body, end_stream=True)
                        self.transmit()

        config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_size=1452)
        config.certificate, config.private_key = self.cert.certificate, self.cert.private_key
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve("127.0.0.1", self.port, configuration=config,
                                               create_protocol=Protocol))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Appliance:
    """`prism reflector` on free 127.0.0.1 ports under `tmp`; use as a context manager."""

    def __init__(self, tmp: Path, *extra: str, workers: int = 1, blocklist: Path | None = None):
        self.tmp = tmp
        self.ports = {"receiver": free_tcp_port(), "peer": free_tcp_port(), "http": free_tcp_port(),
                      "metrics": free_tcp_port(), "http3": free_udp_port()}
        self.runtime = tmp / "run"
        self.log = tmp / "appliance.log"
        self.args = [sys.executable, "-m", "appliance.cli.prism", "reflector", "--conf", "none", "--disable-dht",
                     "--workers", str(workers), "--listen-address", "127.0.0.1", "--use-db=false",
                     *(["--blocklist-source", str(blocklist)] if blocklist else ["--disable-blocklist"]),
                     "--protected-content-url", "",
                     "--receiver-port", str(self.ports["receiver"]), "--tcp-peer-port", str(self.ports["peer"]),
                     "--http-peer-port", str(self.ports["http"]), "--metrics-port", str(self.ports["metrics"]),
                     "--http3-peer-port", str(self.ports["http3"]), "--runtime-dir", str(self.runtime),
                     "--storage-dir", str(tmp / "blobs"), "--state-dir", str(tmp / "state"),
                     "--cache-dir", str(tmp / "cache"), "--graceful-timeout", "5", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Appliance:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(self.args, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                     env=env)
        if wait:
            wait_for(self.ready, 30, f"the appliance to be ready (log: {self.output()[-2000:]})")
        return self

    def status(self) -> dict | None:
        try:
            return ipc.IpcClient(str(self.runtime / "control.sock"), name="control", timeout=2).call("status")
        except (ipc.IpcError, OSError, TimeoutError):
            return None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the appliance exited ({self.proc.returncode}): {self.output()[-2000:]}")
        status = self.status()
        return bool(status) and status["state"] == "ready" and all(p["state"] == "ready"
                                                                   for p in status["processes"])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def __enter__(self) -> Appliance:
        try:
            return self.start()
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
