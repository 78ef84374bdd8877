"""Blob traces: the hops a blob went through, serialised into the `Via` header as reflector.go does (spec §3f)."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

_hostname: str | None = None


def hostname() -> str:
    global _hostname
    if _hostname is None:
        try:
            _hostname = socket.gethostname() or "unknown"
        except OSError:
            _hostname = "unknown"
    return _hostname


@dataclass
class Hop:
    timing: int  # nanoseconds since the layer started the call
    origin_name: str
    host_name: str = ""


@dataclass
class Trace:
    """Innermost hop (the store that really had the blob) first; every layer appends itself."""

    stacks: list[Hop] = field(default_factory=list)

    @classmethod
    def new(cls, origin_name: str, started_ns: int | None = None) -> Trace:
        return cls().stack(origin_name, started_ns)

    def stack(self, origin_name: str, started_ns: int | None = None) -> Trace:
        """Append a hop; `started_ns` is the layer's time.monotonic_ns() at the start of its call."""
        elapsed = time.monotonic_ns() - started_ns if started_ns is not None else 0
        self.stacks.append(Hop(elapsed, origin_name, hostname()))
        return self

    def to_json(self) -> str:
        hops = [{"timing": h.timing, "origin_name": h.origin_name, "host_name": h.host_name} for h in self.stacks]
        return json.dumps({"stacks": hops}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Trace:
        """Parse a `Via` header; raises ValueError on anything that is not a trace."""
        try:
            obj = json.loads(text)
            hops = [Hop(int(h["timing"]), str(h["origin_name"]), str(h.get("host_name", ""))) for h in obj["stacks"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"invalid blob trace: {exc}") from None
        return cls(hops)

    def __str__(self) -> str:
        lines, previous = [], 0
        for i, hop in enumerate(self.stacks):
            lines.append(f"[{i}]({hop.host_name}) origin: {hop.origin_name} - timing: {hop.timing / 1e9:.6f}s"
                         f" - delta: {(hop.timing - previous) / 1e9:.6f}s")
            previous = hop.timing
        return "\n".join(lines)
