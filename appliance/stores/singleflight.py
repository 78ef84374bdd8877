"""Single flight: concurrent gets (or puts) of one hash share one call to the inner store (spec §4.11).

Only `threading` primitives are used, looked up when needed: with gevent's monkey-patching they become
cooperative, so the same code collapses concurrent greenlets in a worker and plain threads in scripts.
Gets and puts have separate groups (reflector.go shared one key space, §10.12).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from appliance import metrics
from appliance.errors import BlobNotFound
from appliance.stores.base import Blob, BlobStore
from appliance.trace import Hop, Trace


class _Call:
    __slots__ = ("done", "waiters", "results", "error")

    def __init__(self):
        self.done = threading.Event()
        self.waiters = 0
        self.results: list = []  # one result per waiter, handed out by pop()
        self.error: BaseException | None = None


class _Group:
    """Collapses concurrent `fn(key)` calls; `share(result, n)` makes n private copies for the waiters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def do(self, key: str, fn: Callable, share: Callable, on_wait: Callable, on_run: Callable):
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
            else:
                call.waiters += 1
        with on_wait():
            if not leader:
                call.done.wait()
                if call.error is not None:
                    raise call.error
                return call.results.pop()
            try:
                with on_run():
                    result = fn()
            except BaseException as exc:
                with self._lock:
                    del self._calls[key]
                call.error = exc
                call.done.set()
                raise
            with self._lock:
                del self._calls[key]  # later callers start a new flight
                waiters = call.waiters
            try:
                call.results = share(result, waiters) if waiters else []
            except BaseException as exc:
                call.error = exc
                raise
            finally:
                call.done.set()
            return result


class _Gauge:
    """+1 on enter, -1 on exit: a context manager around a gauge child."""

    __slots__ = ("gauge",)

    def __init__(self, gauge):
        self.gauge = gauge

    def __call__(self):
        return self

    def __enter__(self):
        self.gauge.inc()

    def __exit__(self, *exc):
        self.gauge.dec()


class SingleFlightStore(BlobStore):
    """One inner `get` per hash however many callers ask at once; each caller gets its own Blob.

    A file-backed blob is shared by duplicating its descriptor, so every caller can close its copy.
    `has`, `put_sd` and `delete` pass through. Each inner `get` is counted in appliance_origin_fetches_total
    (ok, notfound, error), as the cache manager counts the misses it coordinates.
    """

    def __init__(self, inner: BlobStore, component: str):
        self.inner = inner
        self.component = component
        self.name = f"sf_{inner.name}"
        self._gets = _Group()
        self._puts = _Group()
        labels = {"cache_type": self.name, "component": component}
        self._waiting = _Gauge(metrics.CACHE_WAITING_REQUESTS.labels(**labels))
        self._origin = _Gauge(metrics.CACHE_ORIGIN_REQUESTS.labels(**labels))
        self._speed = metrics.SPEED_MBPS.labels(source="origin", **labels)

    def has(self, hash_: str) -> bool:
        return self.inner.has(hash_)

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        try:
            blob = self._gets.do(hash_, lambda: self._timed_get(hash_), _share_blob, self._waiting, self._origin)
        except BlobNotFound as exc:
            # Waiters share the leader's exception object: each one gets its own trace.
            raise BlobNotFound(str(exc), trace=Trace.new(self.name, started)) from None
        blob.trace.stack(self.name, started)
        return blob

    def _timed_get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        try:
            blob = self.inner.get(hash_)
        except BlobNotFound:
            metrics.ORIGIN_FETCHES_TOTAL.labels(outcome="notfound").inc()
            raise
        except Exception:
            metrics.ORIGIN_FETCHES_TOTAL.labels(outcome="error").inc()
            raise
        metrics.ORIGIN_FETCHES_TOTAL.labels(outcome="ok").inc()
        elapsed = (time.monotonic_ns() - started) / 1e9
        if elapsed > 0:
            self._speed.set(blob.size / 1048576 / elapsed)
        return blob

    def put(self, hash_: str, data: bytes) -> None:
        self._puts.do(hash_, lambda: self.inner.put(hash_, data), lambda _r, n: [None] * n, self._waiting,
                      self._origin)

    def put_sd(self, hash_: str, data: bytes) -> None:
        self.inner.put_sd(hash_, data)

    def delete(self, hash_: str) -> None:
        self.inner.delete(hash_)

    def shutdown(self) -> None:
        self.inner.shutdown()


def _share_blob(blob: Blob, count: int) -> list[Blob]:
    """`count` independent copies of `blob` for the waiters (a dup'ed descriptor per file-backed copy)."""
    copies = []
    for _ in range(count):
        trace = Trace([Hop(h.timing, h.origin_name, h.host_name) for h in blob.trace.stacks])
        if blob.file is not None:
            f = os.fdopen(os.dup(blob.file.fileno()), "rb", buffering=0)
            copies.append(Blob(blob.hash, file=f, size=blob.size, trace=trace))
        else:
            copies.append(Blob(blob.hash, data=blob.data, trace=trace))
    return copies
