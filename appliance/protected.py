"""Protected content (spec §6.2): sd hashes that only holders of the edge token may download.

The list is fetched over HTTP (`{"success": bool, "error": str, "data": [{"sd_hash": ..., "claim_id": ...}]}`)
with a timeout (reflector.go has none), kept for `ttl` seconds (2 minutes, as reflector.go), and
refreshed by one caller at a time: the others keep answering from the list they have. Only the very
first fetch is waited for, by everyone, so every caller gets a real answer once it is in.

When the list cannot be fetched, the last list fetched stays in force, and the fetch is retried after
`retry_after` seconds rather than on every request. With no list at all, reflector.go's behaviour is
the default: fail open (nothing is protected). With `fail_closed`, every hash counts as protected until
a list arrives, so downloads need the edge token (the servers check it). An empty URL protects nothing.

The appliance's processes share one list through a file (`shared`, in the runtime directory): a process
whose list is due takes a non-blocking lock, uses the file if another process has just renewed it, and
otherwise fetches and writes it for the others. So the list server sees one request per `ttl` however
many workers download, as with reflector.go's single process.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from typing import IO

import requests

from appliance.blob import is_valid_hash

log = logging.getLogger("protected")

SHARED_RECHECK = 0.5  # seconds before looking again at a list another process is fetching


class ProtectedListError(Exception):
    """The protected list could not be fetched or is not in the expected format."""


class ProtectedContent:
    """is_protected(hash) for the download servers; thread- and gevent-safe."""

    def __init__(self, url: str, fail_closed: bool = False, ttl: float = 120.0, timeout: float = 10.0,
                 retry_after: float = 10.0, shared: str | None = None):
        self.url = url
        self.fail_closed = fail_closed
        self.ttl = ttl
        self.timeout = timeout
        self.retry_after = min(retry_after, ttl)
        self.shared = shared  # the file other processes share the list through (None: this process alone)
        self._hashes: frozenset[str] | None = None  # None: no list fetched yet
        self._next_refresh = float("-inf")
        self._attempted = False
        self._failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config, shared: str | None = None) -> ProtectedContent:
        return cls(config.protected_content_url, fail_closed=config.protected_fail_closed,
                   timeout=config.protected_content_timeout, shared=shared)

    def is_protected(self, hash_: str) -> bool:
        if not self.url:
            return False
        hashes = self._current()
        if hashes is None:
            return self.fail_closed
        return hash_ in hashes

    def _current(self) -> frozenset[str] | None:
        if time.monotonic() >= self._next_refresh:
            # Only the first fetch is waited for; later refreshes are skipped by callers that find one
            # in flight (they answer from the current list).
            if self._lock.acquire(blocking=not self._attempted):
                try:
                    if time.monotonic() >= self._next_refresh:
                        self._refresh()
                finally:
                    self._lock.release()
        return self._hashes

    def _refresh(self) -> None:
        try:
            if self.shared is None:
                self._fetch_and_apply()
            else:
                self._refresh_shared()
        finally:
            self._attempted = True

    def _fetch_and_apply(self) -> float:
        """Fetch the list now and put it (or the failure) in force; returns the seconds it is good for."""
        try:
            hashes = self.fetch()
        except ProtectedListError as exc:
            self._next_refresh = time.monotonic() + self.retry_after
            if not self._failing:
                policy = ("keeping the last list" if self._hashes is not None else
                          "treating every blob as protected" if self.fail_closed else "treating nothing as protected")
                log.warning("protected content list %s: %s; %s until it can be fetched", self.url, exc, policy)
            self._failing = True
            return self.retry_after
        self._hashes = frozenset(hashes)
        self._next_refresh = time.monotonic() + self.ttl
        if self._failing:
            log.info("protected content list %s fetched again (%d sd hashes)", self.url, len(hashes))
        self._failing = False
        return self.ttl

    def _refresh_shared(self) -> None:
        # Only the first refresh waits (up to the fetch timeout) for another process's fetch; later ones
        # answer from the list they have and look again shortly.
        deadline = time.monotonic() + self.timeout + 1.0
        while not self._adopt_shared():
            try:
                lock = _try_lock(self.shared + ".lock")
            except OSError:  # nowhere to share it: this process fetches for itself
                self._fetch_and_apply()
                return
            if lock is not None:
                try:
                    if not self._adopt_shared():  # renewed by another process just before we locked
                        good_for = self._fetch_and_apply()
                        self._write_shared(good_for)
                finally:
                    lock.close()
                return
            if self._attempted or time.monotonic() > deadline:
                self._next_refresh = time.monotonic() + SHARED_RECHECK
                return
            time.sleep(0.05)

    def _adopt_shared(self) -> bool:
        """Take the list from the shared file if it is still good; False when it is missing or due."""
        try:
            with open(self.shared) as f:
                state = json.load(f)
            good_for, hashes = float(state["expires"]) - time.time(), state["hashes"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if good_for <= 0 or state.get("url") != self.url:  # due, or written for another URL (before a reload)
            return False
        if hashes is not None:  # None: the last fetch failed with no list yet; keep ours
            self._hashes = frozenset(hashes)
        self._next_refresh = time.monotonic() + min(good_for, self.ttl)
        return True

    def _write_shared(self, good_for: float) -> None:
        state = {"expires": time.time() + good_for, "url": self.url,
                 "hashes": sorted(self._hashes) if self._hashes is not None else None}
        try:
            fd, tmp = tempfile.mkstemp(prefix=".protected-", dir=os.path.dirname(os.path.abspath(self.shared)))
        except OSError as exc:  # sharing saves requests; a process that cannot share still works alone
            log.warning("cannot share the protected content list through %s: %s", self.shared, exc)
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.shared)  # readers see the old list or the new one, never half of one
        except OSError as exc:
            os.unlink(tmp)
            log.warning("cannot share the protected content list through %s: %s", self.shared, exc)

    def fetch(self) -> set[str]:
        """The protected sd hashes now; ProtectedListError with a one-line reason otherwise."""
        try:
            response = requests.get(self.url, timeout=self.timeout, headers={"Accept": "application/json"})
        except requests.Timeout:
            raise ProtectedListError(f"i/o timeout after {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise ProtectedListError(describe_request_error(exc)) from None
        if response.status_code != 200:
            raise ProtectedListError(f"unexpected status code {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise ProtectedListError("the answer is not JSON") from None
        if not isinstance(body, dict):
            raise ProtectedListError("the answer is not a JSON object")
        if not body.get("success"):
            raise ProtectedListError(f"list_protected API call: {body.get('error') or 'success is false'}")
        entries = body.get("data")
        if not isinstance(entries, list):
            raise ProtectedListError("data is not a list")
        hashes = set()
        for entry in entries:
            sd_hash = entry.get("sd_hash") if isinstance(entry, dict) else None
            sd_hash = sd_hash.lower() if isinstance(sd_hash, str) else sd_hash
            if not is_valid_hash(sd_hash):
                raise ProtectedListError(f"invalid entry {str(entry)[:120]!r}: expected an sd_hash of 96 hex chars")
            hashes.add(sd_hash)
        return hashes


def _try_lock(path: str) -> IO | None:
    """An exclusive lock on `path` if no other holder has it (closing the file releases it), else None."""
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def describe_request_error(exc: BaseException) -> str:
    """`ConnectionError: <innermost cause>`: the root of a requests/urllib3 chain, one short line."""
    inner = exc
    while (inner.__cause__ or inner.__context__) not in (None, inner):
        inner = inner.__cause__ or inner.__context__
    text = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    return f"{type(exc).__name__}: {text[:200]}"
