"""Error vocabulary shared by stores, servers and clients, and reflector.go's error classifier (spec §7)."""
from __future__ import annotations

import errno
import json
import socket


class BlobNotFound(Exception):
    """The one not-found exception of every store; its message is reflector.go's sentinel text."""

    def __init__(self, message: str = "blob not found", trace=None):
        super().__init__(message)
        self.trace = trace


class NotImplementedByStore(Exception):
    def __init__(self, message: str = "this store does not implement this method"):
        super().__init__(message)


class ProtocolError(Exception):
    """The peer broke the wire protocol (bad JSON, wrong size, hash mismatch...)."""


class HashMismatch(ProtocolError):
    def __init__(self, message: str = "hash of received blob data does not match hash from send request"):
        super().__init__(message)


class OriginError(Exception):
    """An origin or upstream store failed for a reason other than not-found."""


class FirstByteTimeout(OriginError):
    """The upstream accepted the request and sent no answer within the first-byte timeout."""


class IdleTimeout(OriginError):
    """The upstream stopped sending in the middle of a blob for longer than the idle timeout."""


# (substring, error_type) in reflector.go's order; errno checks are interleaved where the Go code has them.
_SUBSTRINGS_BEFORE_ERRNO = [("i/o timeout", "io_timeout")]
_SUBSTRINGS = [
    ("read: connection reset by peer", "read_conn_reset"),
    ("write: connection reset by peer", "write_conn_reset"),
    ("read: connection timed out", "read_conn_timed_out"),
    ("NO_ERROR: No recent network activity", "no_network_activity"),
    ("write: connection timed out", "write_conn_timed_out"),
    ("unexpected EOF", "unexpected_eof_str"),
    ("write: broken pipe", "write_broken_pipe"),
    ("blob must be at most", "blob_too_big"),
    ("invalid json request", "invalid_peer_json"),
    ("Invalid data", "invalid_peer_data"),
    ("request is too large", "request_too_large"),
    ("Invalid blob hash length", "invalid_blob_hash"),
    ("invalid blob hash", "invalid_blob_hash"),
    ("hash of received blob data does not match hash from send request", "hash_mismatch"),
    ("blob not found", "blob_not_found"),
    ("requested blob is protected", "protected_blob"),
    ("0-byte blob received", "zero_byte_blob"),
    ("PROTOCOL_VIOLATION: tried to retire connection", "quic_protocol_violation"),
    ("invalid character", "invalid_character"),
    ("NO_ERROR", "no_error"),
]


class UnexpectedEOF(ProtocolError):
    """The peer closed the connection in the middle of a message."""

    def __init__(self, message: str = "unexpected EOF"):
        super().__init__(message)


def classify(exc: BaseException) -> str:
    """Map an exception to reflector.go's `error_type` label; `other` means unclassified (log it)."""
    text = str(exc)
    for needle, kind in _SUBSTRINGS_BEFORE_ERRNO:
        if needle in text:
            return kind
    if isinstance(exc, socket.timeout | TimeoutError):
        return "io_timeout"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "conn_reset"
    if getattr(exc, "errno", None) == errno.ETIMEDOUT:
        return "e_timedout"
    if isinstance(exc, UnexpectedEOF):
        return "unexpected_eof"
    if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == errno.EPIPE:
        return "e_pipe"
    if isinstance(exc, BlobNotFound):
        return "blob_not_found"
    for needle, kind in _SUBSTRINGS:
        if needle in text:
            return kind
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return "json_syntax"
    return "other"
