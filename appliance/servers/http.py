"""HTTP/1.1 blob server (:5569): `GET /blob?hash=&edge_token=` and `HEAD /blob?hash=` (spec §3c).

Hand-written keep-alive request parsing (no WSGI: this is the hot path), TCP_NODELAY, body by
os.sendfile. Statuses: 200 blob, 204/404 for HEAD, 400 malformed request or hash, 403 protected blob
without the right edge token, 404 missing (remembered for 5 minutes in a bounded misses cache), 500 with
a generic text when the origin fails (the details go to the log). At most `queue_size` GETs run at once
per server; the rest wait.

`GET|HEAD /health` is for load balancers (reflector.go serves only /blob on this port, so it cannot
clash): 200 "ok" while this worker serves, 503 "draining" once a drain or a graceful stop has begun.
Blob requests are still served while draining, so the balancer moves traffic away before any is refused.
"""
from __future__ import annotations

import hmac
import logging
import socket
import time
from email.utils import formatdate
from urllib.parse import unquote_plus

from gevent.lock import Semaphore

from appliance import metrics
from appliance.blob import is_valid_hash
from appliance.errors import BlobNotFound
from appliance.logs import Throttle
from appliance.misses import MissesCache
from appliance.servers.base import GeventServer
from appliance.servers.sendfile import send_blob
from appliance.trace import Trace

log = logging.getLogger("http")

MAX_HEADER_BYTES = 8192
INTERNAL_ERROR = b"internal server error"  # the 500 body: what failed inside is for the log only

_REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable", 505: b"HTTP Version Not Supported"}


class _Close(Exception):
    """End the connection (after an error response was sent, or without one)."""


class _Date:
    """The Date header value, formatted at most once a second."""

    __slots__ = ("second", "value")

    def __init__(self):
        self.second, self.value = 0, b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, formatdate(now, usegmt=True).encode()
        return self.value


class HttpServer(GeventServer):
    name = "http"
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n"
               b"Connection: close\r\n\r\ntoo many connections from your address\n")

    def __init__(self, listener, store, *, edge_token: str = "", queue_size: int = 200, protected=None,
                 idle_timeout: float = 60.0, header_timeout: float = 10.0, send_timeout: float = 60.0,
                 draining=None):
        super().__init__(listener)
        self.draining = draining  # () -> bool: the appliance is draining (/health answers 503)
        self.store = store
        self.edge_token = edge_token
        self.protected = protected
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.misses = MissesCache(enabled=getattr(store, "misses_worth_remembering", True))
        self._throttle = Throttle()
        self._queue = Semaphore(max(1, queue_size))
        self._queue_gauge = metrics.HTTP_QUEUE_SIZE
        self._date = _Date()

    # -- connection loop ----------------------------------------------------------------------------------
    def handle(self, sock, address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while self.serving(sock):
            head, buf = self._read_head(sock, buf)
            if head is None:
                return
            with self.begin(sock):
                try:
                    if not self._respond(sock, head):
                        return
                except _Close:
                    return
                except OSError as exc:  # the client went away or stopped reading mid-response
                    self._count_send_error(exc, address)
                    return

    def _read_head(self, sock, buf: bytes) -> tuple[bytes | None, bytes]:
        """The next request's header block (without the blank line), and what follows it."""
        end = buf.find(b"\r\n\r\n")
        deadline = time.monotonic() + self.header_timeout if buf else None
        while end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self._reject(sock, 431, b"request header too large")
                return None, b""
            if deadline is None:
                sock.settimeout(self.idle_timeout)
            else:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if buf:  # slowloris: a header that takes too long; idle keep-alives close silently
                    self._reject(sock, 408, b"request timeout")
                return None, b""
            except OSError:
                return None, b""
            if not chunk:
                return None, b""
            if deadline is None:
                deadline = time.monotonic() + self.header_timeout
            start = max(0, len(buf) - 3)
            buf += chunk
            end = buf.find(b"\r\n\r\n", start)
        if end > MAX_HEADER_BYTES:
            self._reject(sock, 431, b"request header too large")
            return None, b""
        return buf[:end], buf[end + 4:]

    # -- one request --------------------------------------------------------------------------------------
    def _respond(self, sock, head: bytes) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self._error(sock, 400, b"malformed request line")
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        else:
            self._error(sock, 505, b"HTTP/1.0 or HTTP/1.1 only")
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._error(sock, 400, b"malformed header")
            name = name.lower()
            if name == b"connection":
                value = value.lower()
                if b"close" in value:
                    keep_alive = False
                elif b"keep-alive" in value:
                    keep_alive = True
            elif name == b"content-length":
                if value.strip() not in (b"0", b""):
                    self._error(sock, 400, b"request bodies are not accepted")
            elif name == b"transfer-encoding":
                self._error(sock, 400, b"request bodies are not accepted")
        if self.stopping:
            keep_alive = False
        conn = b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n"
        if version == b"HTTP/1.1" and keep_alive:
            conn = b""  # the default
        path, _, query = target.partition(b"?")
        if path == b"/health":
            self._health(sock, method, conn)
            return keep_alive
        if path != b"/blob":
            self._send_simple(sock, 404, b"404 page not found", conn)
            return keep_alive
        if method != b"GET" and method != b"HEAD":
            self._send_simple(sock, 405, b"method not allowed", conn, b"Allow: GET, HEAD\r\n")
            return keep_alive
        hash_, token = _query(query)
        if not is_valid_hash(hash_):
            metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http", reason="invalid_blob_hash").inc()
            self._send_simple(sock, 400, b"invalid blob hash", conn)
            return keep_alive
        if method == b"HEAD":
            self._head(sock, hash_, conn)
        else:
            self._get(sock, hash_, token, conn)
        return keep_alive

    def _health(self, sock, method: bytes, conn: bytes) -> None:
        if method != b"GET" and method != b"HEAD":
            self._send_simple(sock, 405, b"method not allowed", conn, b"Allow: GET, HEAD\r\n")
        elif self.stopping or (self.draining is not None and self.draining()):
            self._send_simple(sock, 503, b"draining\n", conn, head=method == b"HEAD")
        else:
            self._send_simple(sock, 200, b"ok\n", conn, head=method == b"HEAD")

    def _head(self, sock, hash_: str, conn: bytes) -> None:
        try:
            present = self.store.has(hash_)
        except Exception as exc:
            self._origin_error(sock, exc, conn)
            return
        status = b"204 No Content" if present else b"404 Not Found"
        length = b"" if present else b"Content-Length: 0\r\n"
        sock.settimeout(self.send_timeout)
        sock.sendall(b"HTTP/1.1 %s\r\nDate: %s\r\n%s%s\r\n" % (status, self._date.get(), length, conn))

    def _get(self, sock, hash_: str, token: str, conn: bytes) -> None:
        if self.protected is not None and self.protected.is_protected(hash_) and not self._token_ok(token):
            metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http", reason="protected_blob").inc()
            self._send_simple(sock, 403, b"requested blob is protected", conn)
            return
        if hash_ in self.misses:
            self._not_found(sock, Trace.new("http"), conn)
            return
        stamp = self.misses.stamp(hash_)  # a blob stored while we look is not remembered as missing
        self._queue_gauge.inc()
        try:
            with self._queue:
                started = time.monotonic_ns()
                try:
                    blob = self.store.get(hash_)
                except BlobNotFound as exc:
                    self.misses.add(hash_, stamp)
                    self._not_found(sock, exc.trace or Trace(), conn)
                    return
                except Exception as exc:
                    self._origin_error(sock, exc, conn)
                    return
                with blob:
                    via = blob.trace.stack(self.name, started).to_json().encode()
                    header = (b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: application/octet-stream\r\n"
                              b"Content-Disposition: filename=%s\r\nVia: %s\r\nContent-Length: %d\r\n%s\r\n"
                              % (self._date.get(), hash_.encode(), via, blob.size, conn))
                    sock.settimeout(self.send_timeout)
                    try:
                        send_blob(sock, header, blob, self.send_timeout)
                    except OSError:
                        raise
                    except Exception as exc:  # a streamed miss failed (bad bytes, stalled origin) mid-body:
                        # close before the announced length, so the client cannot take it for a blob
                        kind = metrics.count_error("download", exc)
                        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http", reason=kind).inc()
                        raise _Close() from exc
                    size = blob.size
            metrics.HTTP_OUT_BYTES.inc(size)
            metrics.BLOB_DOWNLOAD_TOTAL.inc()
            metrics.HTTP_DOWNLOAD_TOTAL.inc()
        finally:
            self._queue_gauge.dec()

    def _token_ok(self, token: str) -> bool:
        # Protected blobs need the configured edge token; with none configured nobody gets them
        # (reflector.go let everyone through then, spec §10 item 2).
        return bool(self.edge_token) and hmac.compare_digest(token.encode(), self.edge_token.encode())

    # -- responses ----------------------------------------------------------------------------------------
    def _not_found(self, sock, trace: Trace, conn: bytes) -> None:
        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http", reason="blob_not_found").inc()
        via = trace.stack(self.name).to_json().encode()
        self._send_simple(sock, 404, b"", conn, b"Via: %s\r\n" % via)

    def _origin_error(self, sock, exc: Exception, conn: bytes) -> None:
        kind = metrics.count_error("download", exc)
        metrics.DOWNLOAD_FAILURES_TOTAL.labels(server="http", reason=kind).inc()
        suffix = self._throttle(kind)
        if suffix is not None:  # the details (endpoints, buckets) go to the log, never to the client
            log.log(logging.ERROR if kind == "other" else logging.WARNING, "http: store error (%s): %s%s", kind,
                    exc, suffix)
        self._send_simple(sock, 500, INTERNAL_ERROR, conn)

    def _reject(self, sock, status: int, text: bytes) -> None:
        """Answer a request we cannot parse; the connection closes after it."""
        try:
            self._send_simple(sock, status, text, b"Connection: close\r\n")
        except OSError:
            pass

    def _error(self, sock, status: int, text: bytes) -> None:
        """Answer a malformed request and end the connection (raises _Close)."""
        self._reject(sock, status, text)
        raise _Close()

    def _send_simple(self, sock, status: int, body: bytes, conn: bytes, extra: bytes = b"", head: bool = False) -> None:
        content_type = b"Content-Type: text/plain; charset=utf-8\r\n" if body else b""
        sock.settimeout(self.send_timeout)
        sock.sendall(b"HTTP/1.1 %d %s\r\nDate: %s\r\n%s%sContent-Length: %d\r\n%s\r\n%s"
                     % (status, _REASONS[status], self._date.get(), content_type, extra, len(body), conn,
                        b"" if head else body))

    def _count_send_error(self, exc: OSError, address) -> None:
        kind = metrics.count_error("download", exc)
        if kind == "other":
            log.warning("http: sending to %s failed: %s", address[0], exc)


def _query(query: bytes) -> tuple[str, str]:
    """`hash` and `edge_token` from a query string (empty strings when absent)."""
    hash_ = token = ""
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if key == b"hash":
            hash_ = _text(value)
        elif key == b"edge_token":
            token = _text(value)
    return hash_, token


def _text(value: bytes) -> str:
    text = value.decode("latin-1")
    return unquote_plus(text) if "%" in text or "+" in text else text
