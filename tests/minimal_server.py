"""Test helper: a small threaded reflector (upload, TCP peer and HTTP blob servers) on 127.0.0.1.

Built on our protocol codecs with real sockets, so client tests need no gevent and can inject faults
the real servers never produce:

    with MinimalServer() as srv:
        srv.blobs[h] = data                      # the shared in-memory store
        srv.faults[h] = "corrupt" | "truncate" | "silent"
        srv.ports["receiver" | "peer" | "http"]; srv.peer_connections, .peer_requests, .http_connections
"""
from __future__ import annotations

import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from appliance.blob import blob_hash
from appliance.protocol import peer as peer_codec
from appliance.protocol import reflector as upload_codec
from appliance.protocol.framing import JsonFramer
from appliance.stream import InvalidStreamDescriptor, parse_sd_blob
from appliance.trace import Trace


def _read_json(sock: socket.socket, framer: JsonFramer) -> dict | None:
    """The next JSON object, or None at a clean EOF."""
    while True:
        obj = framer.next_json()
        if obj is not None:
            return obj
        data = sock.recv(65536)
        if not data:
            framer.finish()
            return None
        framer.feed(data)


def _read_raw(sock: socket.socket, framer: JsonFramer, n: int) -> bytes:
    out = bytearray(framer.take_available(n))
    while len(out) < n:
        data = sock.recv(min(65536, n - len(out)))
        if not data:
            raise EOFError("client went away")
        out += data
    return bytes(out)


class _Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class MinimalServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.blobs: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}
        self.peer_connections = 0
        self.peer_requests = 0
        self.http_connections = 0
        self.uploads: list[str] = []  # hashes in the order they were received
        self._servers: list[socketserver.BaseServer] = []
        self.ports: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------------------
    def __enter__(self) -> MinimalServer:
        owner = self

        class Receiver(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    owner._receive(self.request)
                except Exception:  # the real receiver closes without a reply on any error, as here
                    pass

        class Peer(socketserver.BaseRequestHandler):
            def handle(self):
                owner.peer_connections += 1
                try:
                    owner._serve_peer(self.request)
                except Exception:
                    pass

        class Http(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                owner.http_connections += 1
                super().setup()

            def do_GET(self):
                owner._serve_http(self, body=True)

            def do_HEAD(self):
                owner._serve_http(self, body=False)

            def log_message(self, *args):
                pass

        for name, server in (("receiver", _Threaded((self.host, 0), Receiver)),
                             ("peer", _Threaded((self.host, 0), Peer)),
                             ("http", ThreadingHTTPServer((self.host, 0), Http))):
            self.ports[name] = server.server_address[1]
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    # -- protocols --------------------------------------------------------------------------------------
    def missing_for(self, sd_hash: str) -> list[str]:
        desc = parse_sd_blob(self.blobs[sd_hash])
        return [b.blob_hash for b in desc.content_blobs if b.blob_hash not in self.blobs]

    def _receive(self, sock: socket.socket) -> None:
        framer = JsonFramer(require_brace=False)
        hello = _read_json(sock, framer)
        if hello is None:
            return
        sock.sendall(upload_codec.encode_handshake_response(upload_codec.parse_handshake(hello)))
        while (obj := _read_json(sock, framer)) is not None:
            req = upload_codec.parse_send_request(obj)
            if req.hash in self.blobs:
                if req.is_sd:
                    sock.sendall(upload_codec.encode_sd_response(False, self.missing_for(req.hash)))
                else:
                    sock.sendall(upload_codec.encode_blob_response(False))
                continue
            sock.sendall(upload_codec.encode_sd_response(True) if req.is_sd
                         else upload_codec.encode_blob_response(True))
            data = _read_raw(sock, framer, req.size)
            ok = blob_hash(data) == req.hash
            if ok and req.is_sd:
                try:
                    parse_sd_blob(data)
                except InvalidStreamDescriptor:
                    ok = False
            if ok:
                self.blobs[req.hash] = data
                self.uploads.append(req.hash)
            sock.sendall(upload_codec.encode_receipt(req.is_sd, ok))
            if not ok:
                return

    def _serve_peer(self, sock: socket.socket) -> None:
        framer = JsonFramer(max_json=65536, require_brace=True)
        while (obj := _read_json(sock, framer)) is not None:
            self.peer_requests += 1
            req = peer_codec.parse_request(obj)
            available = [h for h in req.requested_blobs or [] if h in self.blobs]
            incoming, payload, fault = None, b"", None
            if req.requested_blob:
                h = peer_codec.check_requested_blob(req.requested_blob)
                fault = self.faults.get(h)
                if fault == "silent":
                    while sock.recv(65536):  # never answer; wait for the client to give up
                        pass
                    return
                if h in self.blobs:
                    payload = self.blobs[h]
                    incoming = peer_codec.incoming_found(h, len(payload))
                else:
                    incoming = peer_codec.INCOMING_NOT_FOUND
            header = peer_codec.encode_response(available_blobs=available,
                                                payment_rate=peer_codec.rate_reply(req.blob_data_payment_rate),
                                                incoming_blob=incoming)
            if fault == "corrupt" and payload:
                payload = bytes([payload[0] ^ 1]) + payload[1:]
            if fault == "truncate" and payload:
                sock.sendall(header + payload[: len(payload) // 2])
                return
            sock.sendall(header + payload)

    def _serve_http(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlparse(handler.path)
        h = parse_qs(url.query).get("hash", [""])[0]
        if url.path != "/blob":
            status, data = 404, b""
        elif h in self.blobs:
            data = self.blobs[h]
            if self.faults.get(h) == "corrupt":
                data = bytes([data[0] ^ 1]) + data[1:]
            status = 200 if body else 204
        else:
            status, data = 404, b""
        handler.send_response(status)
        handler.send_header("Via", Trace.new("mem").to_json())
        if status == 200:
            handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) if body else 0))
        handler.end_headers()
        if body and status == 200:
            if self.faults.get(h) == "truncate":
                handler.wfile.write(data[: len(data) // 2])
                handler.close_connection = True
                return
            handler.wfile.write(data)
