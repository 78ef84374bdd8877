"""An asyncio event loop in a real OS thread, callable from plain threads and from gevent greenlets.

The HTTP/3 upstream store runs inside gevent workers (monkey-patched) and inside the asyncio HTTP/3
role's pool threads and scripts (not patched). Under gevent, `threading.Thread` would make a greenlet
and an asyncio loop in a greenlet would block the hub, so the loop gets a native thread
(`_thread.start_new_thread` as it was before patching) and an unpatched epoll selector. A greenlet
waiting for a result parks on a gevent Event that the loop thread fires through a libev async watcher
(`async_().send()` is gevent's thread-safe wake-up), so the hub keeps serving other greenlets; a plain
thread waits on a threading.Event.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("http3")
T = TypeVar("T")


def gevent_active() -> bool:
    """True in a process whose threading module gevent has monkey-patched."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def original(module: str, name: str) -> Any:
    """`module.name` as it was before gevent patched it (the attribute itself when nothing is patched)."""
    if gevent_active():
        from gevent.monkey import get_original

        return get_original(module, name)
    return getattr(importlib.import_module(module), name)


class _ThreadWaiter:
    def __init__(self):
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def close(self) -> None:
        pass


class _GeventWaiter:
    """Parks the calling greenlet; `wake` may be called from any OS thread."""

    def __init__(self):
        import gevent
        from gevent.event import Event

        self._event = Event()
        self._lock = original("_thread", "allocate_lock")()  # a real lock: wake runs in another OS thread
        self._closed = False
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._event.set)

    def wake(self) -> None:
        with self._lock:
            if not self._closed:
                self._watcher.send()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._watcher.close()


class LoopThread:
    """Runs coroutines on one private event loop; `run(factory)` blocks the caller (thread or greenlet) only."""

    def __init__(self, name: str):
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None or self._loop.is_closed():
                selector = original("selectors", "DefaultSelector")()
                loop = asyncio.SelectorEventLoop(selector)
                original("_thread", "start_new_thread")(self._main, (loop,))
                self._loop = loop
            return self._loop

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]], wait_timeout: float | None = None) -> T:
        """Run `factory()` on the loop and return its result (or raise its exception).

        The coroutine enforces its own deadlines; `wait_timeout` is a safety net that cancels it and
        raises TimeoutError if it overstays anyway.
        """
        loop = self._ensure_loop()
        waiter = _GeventWaiter() if gevent_active() else _ThreadWaiter()
        box: dict[str, asyncio.Task] = {}

        def start() -> None:
            task = loop.create_task(factory())
            box["task"] = task
            task.add_done_callback(lambda _task: waiter.wake())

        def cancel() -> None:
            task = box.get("task")
            if task is not None:
                task.cancel()

        try:
            loop.call_soon_threadsafe(start)
            finished = waiter.wait(wait_timeout)
        except BaseException:  # the caller is being killed: do not leave the work running
            loop.call_soon_threadsafe(cancel)
            raise
        finally:
            waiter.close()
        if not finished:
            loop.call_soon_threadsafe(cancel)
            raise TimeoutError(f"{self.name}: no result within {wait_timeout:g}s")
        return box["task"].result()

    def stop(self) -> None:
        """Stop the loop (pending work is abandoned); a later `run` starts a fresh one."""
        with self._start_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # already closed
                pass
