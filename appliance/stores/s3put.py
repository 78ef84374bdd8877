"""Streamed S3 PUTs over kept-alive connections, outside botocore's request pipeline.

botocore still decides everything S3-specific: it presigns the URL (its endpoint and addressing rules, its
credentials and their refresh, SigV4). What it no longer does is send the request: a botocore API call
costs about 2 ms of CPU and 2 ms of wall time per 2 MiB PUT here beyond sending the bytes, and that was a
sixth of a blob's ingest into S3. A failed PUT raises; S3Upload then puts the blob whole through boto3,
with its retries.
"""
from __future__ import annotations

import http.client
import os
import re
import select
import ssl
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from botocore.httpsession import get_cert_path

from appliance.errors import OriginError

IDLE_REUSE_SECONDS = 10.0  # S3 servers close idle connections (AWS after about 20 s): older ones are not reused
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


class PutConnections:
    """HTTP(S) connections for PUTs to S3, each used by one PUT at a time and kept alive for the next.

    Made in each process (never inherited through a fork). `opened` counts the connections made.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, max_idle: int = 64):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.opened = 0
        self._idle: list[tuple[tuple[str, str, int], float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def put(self, url: str, body: Iterable, size: int, headers: dict[str, str]) -> None:
        """PUT `size` bytes, sent as `body` yields them, to a presigned `url`; OriginError unless S3 says 200."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        conn = self._take(origin)
        try:
            conn.putrequest("PUT", parts.path + (f"?{parts.query}" if parts.query else ""),
                            skip_accept_encoding=True)
            conn.putheader("Content-Length", str(size))
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            for chunk in body:
                conn.send(chunk)
            response = conn.getresponse()
            answer = response.read()
        except BaseException:
            conn.close()
            raise
        if response.status != 200:
            conn.close()
            code = _ERROR_CODE.search(answer)
            raise OriginError(f"s3 put: {response.status} "
                              f"{code.group(1).decode(errors='replace') if code else response.reason}")
        if response.will_close:
            conn.close()
        else:
            self._give_back(origin, conn)

    def _take(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection:
        now = time.monotonic()
        while True:
            with self._lock:
                found = next((i for i, (o, _, _) in enumerate(self._idle) if o == origin), None)
                if found is None:
                    break
                _, since, conn = self._idle.pop(found)
            if now - since < IDLE_REUSE_SECONDS and not _closed_by_peer(conn):
                return conn
            conn.close()
        return self._connect(origin)

    def _give_back(self, origin: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append((origin, time.monotonic(), conn))
                return
        conn.close()

    def _connect(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection:
        scheme, host, port = origin
        if scheme == "https":
            if self._tls is None:
                # The CA bundle botocore uses: AWS_CA_BUNDLE, else its default
                self._tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True))
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        self.opened += 1
        return conn


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read has been closed (or broken) by the server."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()  # not select(): a worker's descriptors go past 1024
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True
