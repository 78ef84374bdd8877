"""Incremental reader for "one JSON object, then raw bytes" byte streams (no sockets here).

Both LBRY TCP protocols put a bare JSON object on the wire, sometimes followed directly by raw blob
bytes, with no length prefix and no delimiter. `JsonFramer` keeps one buffer per connection, so bytes
the peer sends ahead (pipelining, or a blob right behind its header in the same chunk) are never lost.

    framer = JsonFramer(max_json=65536, require_brace=True)   # TCP peer protocol
    framer = JsonFramer(require_brace=False)                    # reflector upload protocol
    framer.feed(chunk)            # after every recv(); raises at once on garbage or an oversized message
    framer.next_json() -> dict | None    # one complete object, or None while more bytes are needed
    framer.take_raw(n) -> bytes | None   # exactly n raw bytes, or None until they are all buffered
    framer.take_available(n) -> bytes    # up to n raw bytes already buffered (maybe b"")
    framer.buffered() -> int             # bytes held and not consumed
    framer.peek(n) -> bytes              # up to n buffered bytes, not consumed (error messages)
    framer.finish()                      # at EOF: raises if a message was cut off, returns if clean

The end of an object is found with a small scanner that tracks strings, escapes and bracket nesting,
so a `}` inside a string does not end the message and the buffer is scanned once, not re-parsed per
byte. Only the bytes of a complete object are handed to `json.loads`.

Modes:
- `require_brace=True` (peer protocol, as reflector.go's server): the first byte must be `{`, else
  "Invalid data"; invalid JSON -> "invalid json request: ..."; EOF inside a message is invalid JSON.
- `require_brace=False` (upload protocol, as Go's json.Decoder): whitespace before a message is skipped;
  a message that is not an object or not valid JSON is a json syntax error; EOF inside a message is
  "unexpected EOF".
Either way a message longer than `max_json` raises "request is too large" as soon as that many bytes
are buffered without the object being complete.
"""
from __future__ import annotations

import json
import re

from appliance.errors import ProtocolError, UnexpectedEOF

__all__ = ["JsonFramer", "FramingError", "InvalidData", "RequestTooLarge", "InvalidJson", "MAX_DEPTH"]

# Deeper nesting is refused before json.loads could hit the interpreter's recursion limit.
MAX_DEPTH = 512

_WHITESPACE = b" \t\r\n"
_STRUCTURAL = re.compile(rb'["{}\[\]]')
_IN_STRING = re.compile(rb'["\\]')
_VALUE_STARTS = b'["-0123456789tfn'
_CLOSERS = {ord("}"): ord("{"), ord("]"): ord("[")}


class FramingError(ProtocolError):
    """The byte stream does not hold a well-formed JSON object where one is expected."""


class InvalidData(FramingError):
    def __init__(self, message: str = "Invalid data"):
        super().__init__(message)


class RequestTooLarge(FramingError):
    def __init__(self, message: str = "request is too large"):
        super().__init__(message)


class InvalidJson(FramingError, json.JSONDecodeError):
    """Not valid JSON. Also a JSONDecodeError, so errors.classify() files upload-side ones as json_syntax."""

    def __init__(self, message: str, doc: str = "", pos: int = 0):
        json.JSONDecodeError.__init__(self, message, doc, pos)
        self.args = (message,)


def _reject_constant(name: str) -> None:
    raise ValueError(f"invalid literal {name}")  # NaN/Infinity are not JSON (Go refuses them too)


class JsonFramer:
    """One per connection; see the module docstring."""

    def __init__(self, max_json: int = 65536, require_brace: bool = True):
        self.max_json = max_json
        self.require_brace = require_brace
        self._buf = bytearray()
        self._expecting = True  # scanning for a JSON object (False right after one was returned)
        self._reset_scan()

    # -- public API -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Append received bytes; raises a FramingError as soon as they cannot start a valid message."""
        self._buf += data
        if self._expecting and data:
            self._scan()

    def next_json(self) -> dict | None:
        """Return the next complete JSON object (consuming it), or None while more bytes are needed."""
        self._expecting = True
        end = self._scan()
        if end is None:
            return None
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        self._reset_scan()
        self._expecting = False
        return self._decode(raw)

    def take_raw(self, n: int) -> bytes | None:
        """Consume exactly `n` raw bytes once they are all buffered; None until then."""
        if n < 0:
            raise ValueError("negative length")
        if len(self._buf) < n:
            return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._after_raw()
        return data

    def take_available(self, n: int) -> bytes:
        """Consume up to `n` raw bytes that are already buffered (possibly none)."""
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._after_raw()
        return data

    def buffered(self) -> int:
        return len(self._buf)

    def peek(self, n: int) -> bytes:
        """Up to `n` buffered bytes, not consumed (to quote what a peer sent in an error message)."""
        return bytes(self._buf[:n])

    def finish(self) -> None:
        """Call at EOF: returns when the stream ended cleanly between messages, else raises."""
        if not self._buf:
            return
        if self.require_brace:
            raise self._json_error("unexpected end of data", bytes(self._buf))
        raise UnexpectedEOF()

    # -- scanner --------------------------------------------------------------------------------------
    def _reset_scan(self) -> None:
        self._pos = 0  # next byte to scan
        self._stack = bytearray()  # open brackets
        self._in_string = False
        self._started = False
        self._end: int | None = None  # end offset of a complete object found by a feed()

    def _after_raw(self) -> None:
        self._reset_scan()
        self._expecting = False

    def _scan(self) -> int | None:
        """Advance over new bytes; return the end offset of a complete object, or None."""
        if self._end is not None:
            return self._end
        buf = self._buf
        if not self._started:
            if not self.require_brace:
                # Go's decoder skips whitespace between values; dropping it keeps memory bounded.
                i = 0
                while i < len(buf) and buf[i] in _WHITESPACE:
                    i += 1
                if i:
                    del buf[:i]
            if not buf:
                return None
            first = buf[0]
            if first != ord("{"):
                if self.require_brace:
                    raise InvalidData()
                if first in _VALUE_STARTS:
                    raise self._json_error("top-level value is not an object", bytes(buf[:64]))
                raise self._json_error(f"invalid character {chr(first)!r} looking for beginning of value",
                                       bytes(buf[:64]))
            self._started = True
            self._stack.append(first)
            self._pos = 1
        limit = min(len(buf), self.max_json)
        pos = self._pos
        while pos < limit:
            if self._in_string:
                m = _IN_STRING.search(buf, pos, limit)
                if m is None:
                    pos = limit
                    break
                if buf[m.start()] == ord("\\"):
                    if m.start() + 1 >= limit:
                        pos = m.start()  # the escaped byte has not arrived yet
                        break
                    pos = m.start() + 2
                    continue
                self._in_string = False
                pos = m.end()
                continue
            m = _STRUCTURAL.search(buf, pos, limit)
            if m is None:
                pos = limit
                break
            c = buf[m.start()]
            pos = m.end()
            if c == ord('"'):
                self._in_string = True
            elif c in _CLOSERS:
                if self._stack[-1] != _CLOSERS[c]:
                    raise self._json_error(f"mismatched {chr(c)!r} at offset {m.start()}", bytes(buf[:pos]))
                self._stack.pop()
                if not self._stack:
                    self._pos = self._end = pos
                    return pos
            else:
                if len(self._stack) >= MAX_DEPTH:
                    raise self._json_error("nesting too deep", bytes(buf[:64]))
                self._stack.append(c)
        self._pos = pos
        if len(buf) >= self.max_json:
            raise RequestTooLarge()
        return None

    def _decode(self, raw: bytes) -> dict:
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise self._json_error(str(exc) or type(exc).__name__, raw) from None
        return obj  # a dict: the scanner only lets objects through

    def _json_error(self, detail: str, raw: bytes) -> InvalidJson:
        if self.require_brace:
            # reflector.go's wording: "invalid json request: offset N in data <hex>"
            return InvalidJson(f"invalid json request: {detail} in data {raw[:256].hex()}")
        return InvalidJson(f"invalid json: {detail}")
