"""The blocklist: blocked streams are refused on upload, not served, and (optionally) deleted.

Blocked sd hashes come from a pluggable source (`fetch() -> set[str]`, raising on failure), chosen by
`blocklist_source`: `lbry` (LBRY's outpoint list resolved through wallet servers,
appliance.lbry.blocklist), an http(s) URL, or a file path. A URL or file holds sd hashes, one per line
(blank lines and `#` comments ignored) or as a JSON list.

They are kept where reflector.go keeps them, the `blocked` table, when a database is used; otherwise
in `<state_dir>/blocked.txt` (rewritten atomically). The list only grows, as in reflector.go: a hash
dropped by the source stays blocked until an operator removes it there. So a restart blocks everything
at once, before the source answers.

`is_blocked(hash)` knows the content blobs of blocked streams too: they are read from the database's
stream tables, or from the stored sd blob, once per stream and process.

One process runs `run(stop)` (refresh at start, then every `blocklist_interval` seconds); with
`blocklist_delete` that refresh also deletes every blocked stream's sd and content blobs from the stores
it was given (storage and caches). Other processes call `load()` now and then to pick up the list.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import requests

from appliance.blob import is_valid_hash
from appliance.db import Database, DatabaseError
from appliance.errors import BlobNotFound
from appliance.protected import describe_request_error
from appliance.stores.base import BlobStore
from appliance.stream import InvalidStreamDescriptor, parse_sd_blob

log = logging.getLogger("blocklist")
STATE_FILE = "blocked.txt"


class BlocklistError(Exception):
    """A source that cannot be read or parsed; one line."""


def parse_hash_list(text: str, origin: str) -> set[str]:
    """sd hashes from a JSON list, or from lines (blank lines and # comments skipped)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise BlocklistError(f"{origin}: invalid JSON list: {exc}") from None
        numbered = list(enumerate(items, 1))
    else:
        numbered = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1)]
        numbered = [(n, item) for n, item in numbered if item]
    hashes = set()
    for n, item in numbered:
        value = item.lower() if isinstance(item, str) else item
        if not is_valid_hash(value):
            raise BlocklistError(f"{origin}: entry {n} is not an sd hash: {str(item)[:100]!r}")
        hashes.add(value)
    return hashes


class FileListSource:
    name = "file"

    def __init__(self, path: str):
        self.path = path

    def fetch(self) -> set[str]:
        try:
            text = Path(self.path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BlocklistError(f"cannot read blocklist {self.path}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        return parse_hash_list(text, self.path)


class UrlListSource:
    name = "url"

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url
        self.timeout = timeout

    def fetch(self) -> set[str]:
        try:
            response = requests.get(self.url, timeout=self.timeout)
        except requests.Timeout:
            raise BlocklistError(f"blocklist {self.url}: i/o timeout after {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise BlocklistError(f"blocklist {self.url}: {describe_request_error(exc)}") from None
        if response.status_code != 200:
            raise BlocklistError(f"blocklist {self.url}: unexpected status code {response.status_code}")
        return parse_hash_list(response.text, self.url)


def source_from_config(config):
    """The configured source: 'lbry', an http(s) URL or a file path."""
    source = (config.blocklist_source or "").strip()
    if source == "lbry":
        from appliance.lbry.blocklist import LbryBlocklistSource

        return LbryBlocklistSource.from_config(config)
    if source.startswith(("http://", "https://")):
        return UrlListSource(source)
    if not source:
        raise BlocklistError("blocklist_source is empty: use 'lbry', an http(s) URL or a file path")
    return FileListSource(source)


class Blocklist:
    """The blocked sd hashes and their content blobs; see the module docstring."""

    def __init__(self, source, *, db: Database | None = None, state_file: str | None = None,
                 stores: Sequence[BlobStore] = (), delete: bool = False, interval: float = 43200.0):
        if db is None and not state_file:
            raise ValueError("a blocklist is kept in the database or in a state file: give one of them")
        self.source = source
        self.db = db
        self.state_file = state_file
        self.stores = list(stores)
        self.delete = delete
        self.interval = interval
        self._sd: frozenset[str] = frozenset()
        self._all: frozenset[str] = frozenset()
        self._content: dict[str, tuple[str, ...]] = {}  # sd hash -> content hashes, once resolved
        self._purged: set[str] = set()
        self._lock = threading.Lock()  # one load/refresh at a time

    @classmethod
    def from_config(cls, config, *, db: Database | None = None, stores: Sequence[BlobStore] = ()) -> Blocklist:
        state_file = None if db is not None else os.path.join(config.state_dir, STATE_FILE)
        return cls(source_from_config(config), db=db, state_file=state_file, stores=stores,
                   delete=config.blocklist_delete, interval=config.blocklist_interval)

    # --- what the servers ask -------------------------------------------------------------------------
    def is_blocked(self, hash_: str) -> bool:
        return hash_ in self._all

    def blocked_hashes(self) -> frozenset[str]:
        """Blocked sd hashes and the content blobs of those streams."""
        return self._all

    def blocked_streams(self) -> frozenset[str]:
        return self._sd

    # --- keeping it current ---------------------------------------------------------------------------
    def load(self) -> None:
        """Pick up the kept list (database or state file), e.g. blocks made by the refreshing process."""
        with self._lock:
            self._apply(self._read_kept_or_current())

    def refresh(self) -> bool:
        """Fetch the source, keep what is new, apply it; then delete blocked blobs if enabled.

        False when the source or the keeping failed: what is known stays blocked, and what was fetched is
        applied in memory anyway; the next refresh tries again.
        """
        ok = True
        with self._lock:
            try:
                fetched = self.source.fetch()
            except Exception as exc:  # any source failure
                log.warning("blocklist refresh from %s failed, keeping %d blocked streams: %s",
                            getattr(self.source, "name", "source"), len(self._sd), exc)
                fetched, ok = set(), False
            try:
                new = self._keep(fetched)
            except Exception as exc:  # the database or the state directory
                log.warning("keeping the list failed, applying it in memory for now: %s", exc)
                new, ok = fetched - self._sd, False
            self._apply(self._read_kept_or_current() | fetched)
            if ok:
                log.info("%d streams blocked (%d new)", len(self._sd), len(new))
        if self.delete:
            self.purge()
        return ok

    def _apply(self, sd: set[str]) -> None:
        self._resolve(sd - self._content.keys())
        content = {h for s in sd for h in self._content.get(s, ())}
        self._sd, self._all = frozenset(sd), frozenset(sd | content)

    def _read_kept_or_current(self) -> set[str]:
        try:
            return self._read_kept()
        except Exception as exc:
            log.warning("reading the kept list failed, using the one in memory: %s", exc)
            return set(self._sd)

    def _read_kept(self) -> set[str]:
        if self.db is not None:
            return {h for h in self.db.get_blocked() if is_valid_hash(h)}  # reflector.go may have blocked ""
        try:
            return parse_hash_list(Path(self.state_file).read_text(), self.state_file)
        except FileNotFoundError:
            return set()

    def _keep(self, fetched: set[str]) -> set[str]:
        kept = self._read_kept()
        new = fetched - kept
        if not new:
            return new
        if self.db is not None:
            self.db.block_many(new)
        else:
            _write_atomically(self.state_file, "".join(f"{h}\n" for h in sorted(kept | new)))
        return new

    def _resolve(self, sd_hashes: Iterable[str]) -> None:
        """Find the content blobs of these streams: the database's stream tables, else the stored sd blob."""
        todo = set(sd_hashes)
        if not todo:
            return
        known: dict[str, list[str]] = {}
        to_read = todo
        if self.db is not None:
            try:
                known = self.db.stream_blob_hashes(todo)
                unknown = todo - known.keys()
                to_read = self.db.has_blobs(unknown) if unknown else set()  # stored sd blobs, no stream rows
            except DatabaseError as exc:
                log.warning("looking up blocked streams failed, trying again later: %s", exc)
                return
        for sd_hash in to_read:
            content = self._read_sd(sd_hash)
            if content is None:
                todo.discard(sd_hash)  # a store failed: try this stream again next time
            else:
                known[sd_hash] = content
        for sd_hash in todo:
            self._content[sd_hash] = tuple(known.get(sd_hash, ()))

    def _read_sd(self, sd_hash: str) -> list[str] | None:
        """Content hashes from the first store holding the sd blob; [] if none holds it; None if one failed."""
        failed = False
        for store in self.stores:
            try:
                data = store.get_bytes(sd_hash)
            except BlobNotFound:
                continue
            except Exception as exc:
                log.warning("reading sd blob %s from %s failed: %s", sd_hash[:8], store.name, exc)
                failed = True
                continue
            try:
                return [b.blob_hash for b in parse_sd_blob(data).content_blobs]
            except InvalidStreamDescriptor:
                return []  # a blocked hash that is not a stream: only the hash itself is blocked
        return None if failed else []

    # --- the effect -----------------------------------------------------------------------------------
    def purge(self) -> int:
        """Delete the blobs of blocked streams from every store; returns how many blobs were deleted.

        Content blobs go first, and the sd blob only once all of them are gone: the stored sd blob (or its
        database rows) is how a process - a restarted one too - finds the content blobs of a blocked
        stream, so a purge that fails halfway must not lose it. Each stream is done once per process; a
        stream whose deletion failed somewhere is retried at the next refresh.
        """
        deleted = 0
        for sd_hash in sorted(self._sd - self._purged):
            ok = True
            for hash_ in (*self._content.get(sd_hash, ()), sd_hash):
                if not ok and hash_ == sd_hash:
                    break  # keep the sd blob until its content blobs are gone
                for store in self.stores:
                    try:
                        if store.has(hash_):
                            store.delete(hash_)
                            deleted += 1
                    except Exception as exc:
                        ok = False
                        log.warning("deleting %s from %s failed: %s", hash_[:8], store.name, exc)
            if ok:
                self._purged.add(sd_hash)
        if deleted:
            log.info("deleted %d blobs of blocked streams", deleted)
        return deleted

    def run(self, stop: threading.Event) -> None:
        """Refresh now and then every `interval` seconds until `stop` is set (run it in a thread or greenlet)."""
        while not stop.is_set():
            self.refresh()
            stop.wait(self.interval)


def _write_atomically(path: str, text: str) -> None:
    """Write a temp file in the same directory, fsync it, rename it over `path`: never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".blocked-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
