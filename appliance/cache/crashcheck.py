"""Disk-cache copies are written without an fsync per blob; this keeps a power loss from serving a bad one.

A cache copy is renamed into place once its SHA-384 matched, but not fsynced (the origin keeps the durable
copy), so after a power loss a file renamed shortly before may be short or hold wrong bytes. Two halves:

- `checkpoint(root)` (the cache manager, every cache_sync_interval seconds and at a clean stop): note the
  time T, syncfs() the cache's filesystem, then record T as the mtime of `<root>/.synced`. Every blob file
  renamed into place before T is then whole on disk.
- `check(root)` (the supervisor, at boot, before any process serves): re-read the files that may not be:
  those in prefix directories changed since T (a new name changes its directory's mtime; a directory
  entry and its mtime reach the journal together) whose own mtime or ctime (a rename sets it) is not older
  than T. Each is hashed; one that does not match its name is removed, so it is refetched, never served.

After a clean stop nothing is newer than the last checkpoint and the check reads no file. After a crash it
reads what was written in the last interval at most, plus anything modified behind the cache's back since.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from dataclasses import dataclass

from appliance.blob import is_valid_hash

log = logging.getLogger("cache")

MARK = ".synced"
SLACK = 2.0  # seconds: file-system timestamp granularity and clock steps around a checkpoint
_libc = None


@dataclass
class CheckCounts:
    checked: int = 0
    removed: int = 0


def checkpoint(root: str) -> float:
    """syncfs the cache's file system, then mark the time taken before it as safe; returns that time."""
    started = time.time()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)
    mark = os.path.join(root, MARK)
    try:
        os.utime(mark, (started, started))
    except FileNotFoundError:
        with open(mark, "w") as f:
            f.write("written by the reflector appliance: the disk cache was synced at this file's mtime\n")
        os.utime(mark, (started, started))
    return started


def check(root: str) -> CheckCounts:
    """Hash the files written since the last checkpoint; remove those that do not match their names."""
    counts = CheckCounts()
    try:
        since = os.stat(os.path.join(root, MARK)).st_mtime - SLACK
    except FileNotFoundError:
        return counts  # never checkpointed: a new directory, or one adopted as reflector.go left it
    try:
        top = list(os.scandir(root))
    except FileNotFoundError:
        return counts
    for entry in top:
        if len(entry.name) != 2 or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat().st_mtime < since:
                continue
            files = list(os.scandir(entry.path))
        except FileNotFoundError:
            continue
        for item in files:
            if not is_valid_hash(item.name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if max(st.st_mtime, st.st_ctime) < since:
                continue
            counts.checked += 1
            if not _matches(item.path, item.name):
                log.warning("removing %s from the disk cache: its bytes do not match its hash (an unclean stop "
                            "while it was being written, or a change behind the cache's back)", item.path)
                try:
                    os.unlink(item.path)
                    counts.removed += 1
                except FileNotFoundError:
                    pass
    if counts.checked:
        log.info("checked %d cache file(s) written since the last sync of %s: %d removed", counts.checked, root,
                 counts.removed)
    return counts


def _matches(path: str, hash_: str) -> bool:
    sha = hashlib.sha384()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    except OSError:
        return False
    return sha.hexdigest() == hash_


def _syncfs(fd: int) -> None:
    """syncfs(2) on the file system holding fd (os.sync, which flushes every file system, without it)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    if _libc and _libc.syncfs(fd) == 0:
        return
    os.sync()


def check_disk_caches(config) -> None:
    """`check` every configured disk cache (at boot, before any process serves; a bad spec is left to the
    cache manager to report)."""
    from appliance.stores.compose import CompositionError, disk_cache_specs

    try:
        specs = disk_cache_specs(config)
    except CompositionError:
        return
    for spec in specs:
        if os.path.isdir(spec.path):
            check(spec.path)
