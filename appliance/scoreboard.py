"""Shared memory where every child posts its heartbeat and status, and the supervisor reads them.

One memfd-backed mmap, created by the supervisor and inherited by each child (its fd is passed at
spawn). Each child owns one fixed-size slot. Writes use a sequence lock (odd while writing) so a reader
never takes a torn record; no IPC round-trip is needed for heartbeats or `appliancectl status`.
Heartbeats are CLOCK_MONOTONIC seconds, which is one clock for every process of the machine.
After the slots, one byte the supervisor writes and every child reads: the drain flag.
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from typing import Any

import msgpack

SLOT_SIZE = 8192
_HEADER = struct.Struct("<QdIIB")  # seq, heartbeat, pid, payload length, state
STATES = {0: "free", 1: "booting", 2: "ready", 3: "stopping", 4: "failed"}
BOOTING, READY, STOPPING, FAILED = 1, 2, 3, 4


class Scoreboard:
    def __init__(self, slots: int, fd: int | None = None):
        self.slots = slots
        self._flags = slots * SLOT_SIZE
        size = self._flags + 8
        if fd is None:
            fd = os.memfd_create("appliance-scoreboard", 0)  # not inheritable until passed explicitly
            os.ftruncate(fd, size)
        self.fd = fd
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def clear(self, slot: int) -> None:
        off = slot * SLOT_SIZE
        self._map[off:off + _HEADER.size] = _HEADER.pack(0, 0.0, 0, 0, 0)

    def write(self, slot: int, state: int, payload: dict[str, Any] | None = None) -> None:
        """Post a heartbeat (now), the child's state and a small status payload."""
        body = msgpack.packb(payload or {}, use_bin_type=True)
        if len(body) > SLOT_SIZE - _HEADER.size:
            body = msgpack.packb({"error": "status payload too large"})
        off = slot * SLOT_SIZE
        seq = struct.unpack_from("<Q", self._map, off)[0] & ~1  # one writer per slot: always even here
        struct.pack_into("<Q", self._map, off, seq + 1)  # odd while writing
        self._map[off + _HEADER.size: off + _HEADER.size + len(body)] = body
        struct.pack_into("<dIIB", self._map, off + 8, time.monotonic(), os.getpid(), len(body), state)
        struct.pack_into("<Q", self._map, off, seq + 2)

    def read(self, slot: int) -> dict[str, Any]:
        """{'heartbeat', 'pid', 'state', 'status'} of a slot; retries a torn read."""
        off = slot * SLOT_SIZE
        for _ in range(100):
            seq1 = struct.unpack_from("<Q", self._map, off)[0]
            if seq1 % 2:
                time.sleep(0)
                continue
            _, heartbeat, pid, length, state = _HEADER.unpack_from(self._map, off)
            body = bytes(self._map[off + _HEADER.size: off + _HEADER.size + min(length, SLOT_SIZE)])
            if struct.unpack_from("<Q", self._map, off)[0] == seq1:
                try:
                    status = msgpack.unpackb(body, raw=False) if length else {}
                except (ValueError, msgpack.UnpackException):
                    status = {}
                return {"heartbeat": heartbeat, "pid": pid, "state": STATES.get(state, "free"), "status": status}
        return {"heartbeat": 0.0, "pid": 0, "state": "free", "status": {}}

    @property
    def draining(self) -> bool:
        """Set by the supervisor while the appliance drains (health checks fail, TCP ports refuse)."""
        return self._map[self._flags] == 1

    @draining.setter
    def draining(self, value: bool) -> None:
        self._map[self._flags] = 1 if value else 0

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
