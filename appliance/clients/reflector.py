"""Reflector upload client: push a stream (sd blob first, then the blobs asked for) to a reflector.

    with ReflectorClient("127.0.0.1", 5566, timeout=30) as client:
        stats = client.send_stream(sd_hash, sd_bytes, blob_reader)   # blob_reader(hash) -> bytes
        sent = client.send_blob(h, data)                            # False: the server already has it

The handshake sends version 1 (as the LBRY SDK does) and accepts a server that answers 0 or 1. After the
sd blob the client honours `needed_blobs`: with `send_sd_blob` true, a missing or empty list means
every content blob; with `send_sd_blob` false, a missing or empty list means the server has everything.
Each message and each whole blob must go through within `timeout` seconds.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from appliance.blob import blob_hash, check_hash, check_size
from appliance.clients.connection import Connection, ConnectionClient, ForeignServer
from appliance.errors import ProtocolError
from appliance.protocol import reflector as codec
from appliance.protocol.framing import JsonFramer
from appliance.stream import parse_sd_blob

log = logging.getLogger("reflector")

MAX_REPLY = 2_000_000  # the SDK client's limit on one reply


@dataclass
class UploadStats:
    sd_sent: bool = False
    blobs_sent: int = 0
    blobs_skipped: int = 0  # offered, and the server already had them
    bytes_sent: int = 0


class ReflectorClient(ConnectionClient):
    def __init__(self, host: str, port: int, timeout: float = 30.0, version: int = codec.VERSION_1):
        self.host, self.port, self.timeout, self.version = host, port, timeout, version
        self.server_version: int | None = None

    def connect(self) -> None:
        """Open the connection and handshake (done by the first send when not called explicitly)."""
        if self._conn is not None:
            return
        self._conn = Connection(self.host, self.port, self.timeout, JsonFramer(MAX_REPLY, require_brace=False),
                                "reflector upload")
        try:
            self._conn.send(codec.encode_handshake(self.version), "handshake")
            reply = self._conn.read_json("handshake reply")
            if "version" not in reply:  # a JSON server of another kind (a TCP peer port answers this way)
                raise ForeignServer(self._conn.address, "reflector upload", json.dumps(reply).encode())
            self.server_version = codec.parse_handshake_reply(reply)
        except Exception:
            self.close()
            raise

    def send_sd_blob(self, hash_: str, data: bytes) -> codec.SdReply:
        """Offer an sd blob; send it if wanted. Returns the server's answer (send flag, needed_blobs)."""
        self._check(hash_, data)
        reply = codec.parse_sd_reply(self._offer(codec.encode_sd_request(hash_, len(data)), hash_))
        if reply.send:
            self._upload(hash_, data, is_sd=True)
        return reply

    def send_blob(self, hash_: str, data: bytes) -> bool:
        """Offer a content blob; True if it was sent, False if the server already has it."""
        self._check(hash_, data)
        if not codec.parse_blob_reply(self._offer(codec.encode_blob_request(hash_, len(data)), hash_)):
            return False
        self._upload(hash_, data, is_sd=False)
        return True

    def send_stream(self, sd_hash: str, sd_bytes: bytes, blob_reader: Callable[[str], bytes],
                    on_blob: Callable[[str, int, bool], None] | None = None) -> UploadStats:
        """Reflect a whole stream; `blob_reader(hash)` supplies content blobs only when they are needed.

        `on_blob(hash, size, sent)` is called after each offered blob (for progress reports).
        """
        descriptor = parse_sd_blob(sd_bytes)
        stats = UploadStats()
        reply = self.send_sd_blob(sd_hash, sd_bytes)
        if reply.send:
            stats.sd_sent, stats.bytes_sent = True, len(sd_bytes)
        if on_blob is not None:
            on_blob(sd_hash, len(sd_bytes), reply.send)
        in_stream = [b.blob_hash for b in descriptor.content_blobs]
        if reply.needed_blobs:
            needed = set(reply.needed_blobs)
            unknown = needed - set(in_stream)
            if unknown:
                log.warning("server asked for %d blobs that are not in stream %s; ignoring them",
                            len(unknown), sd_hash[:8])
            todo = [h for h in in_stream if h in needed]
        else:
            todo = in_stream if reply.send else []
        for h in todo:
            data = blob_reader(h)
            sent = self.send_blob(h, data)
            if sent:
                stats.blobs_sent += 1
                stats.bytes_sent += len(data)
            else:
                stats.blobs_skipped += 1
            if on_blob is not None:
                on_blob(h, len(data), sent)
        return stats

    def _check(self, hash_: str, data: bytes) -> None:
        """Validate before anything is written, so a bad blob never desynchronises the connection."""
        check_hash(hash_)
        check_size(len(data))
        if blob_hash(data) != hash_:
            raise ValueError(f"blob {hash_[:8]}: data does not match its hash")

    def _offer(self, request: bytes, hash_: str) -> dict:
        self.connect()
        try:
            self._conn.send(request, f"offer of {hash_[:8]}")
            return self._conn.read_json(f"answer to the offer of {hash_[:8]}")
        except Exception:
            self.close()
            raise

    def _upload(self, hash_: str, data: bytes, is_sd: bool) -> None:
        try:
            self._conn.send(data, f"blob {hash_[:8]}")
            ok = codec.parse_receipt(self._conn.read_json(f"receipt for {hash_[:8]}"), is_sd)
        except Exception:
            self.close()
            raise
        if not ok:
            self.close()
            raise ProtocolError(f"server did not receive {'sd blob' if is_sd else 'blob'} {hash_[:8]}")
