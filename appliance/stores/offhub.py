"""Blocking file-system calls (fsync, large writes) off the gevent hub, in gevent's thread pool.

Inside a gevent worker the hub runs every client's greenlet; an fsync there would stall them all. Outside
one (plain threads, scripts, the supervisor) these are plain calls.
"""
from __future__ import annotations

import _thread
import os
import sys
import threading


def in_gevent_worker() -> bool:
    """True in a process whose threading is monkey-patched by gevent."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def on_hub() -> bool:
    """True on a gevent worker's hub thread (its main thread), where a blocking call stalls every greenlet."""
    return in_gevent_worker() and threading.get_native_id() == os.getpid()


def cooperate() -> None:
    """On a gevent worker's hub, let the other ready greenlets run before going on (a plain no-op elsewhere,
    where threads run concurrently anyway)."""
    if on_hub():
        import gevent

        gevent.sleep(0)


def thread_lock():
    """A real OS-thread lock, even in a gevent worker (for code that only ever runs off the hub)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "allocate_lock")()
    return _thread.allocate_lock()


def off_hub(fn, *args):
    """Call `fn(*args)` in gevent's thread pool inside a gevent worker (the caller's greenlet waits, the
    others run); a plain call anywhere else, including in a pool thread. Exceptions are raised in the caller."""
    if not on_hub():
        return fn(*args)
    import gevent

    failed, value = gevent.get_hub().threadpool.apply(_outcome, (fn, args))
    if failed:
        raise value
    return value


def _outcome(fn, args: tuple) -> tuple[bool, object]:
    try:
        return False, fn(*args)
    except Exception as exc:  # raised again in the caller (gevent would also print it as a traceback)
        return True, exc
