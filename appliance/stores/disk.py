"""Local disk storage in reflector.go's layout (`<root>/<h[0:2]>/<h>`), written atomically."""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
import uuid

from appliance.blob import MAX_BLOB_SIZE, check_hash, is_valid_hash
from appliance.errors import BlobNotFound, HashMismatch
from appliance.stores.base import Blob, BlobStore, Upload
from appliance.stores.offhub import off_hub, thread_lock
from appliance.trace import Trace

log = logging.getLogger("store")

# A put holds its temp file for one write + fsync; anything older was left by a crash.
STALE_TEMP_SECONDS = 600.0
# A durable writer asks the kernel to start writing back every WRITEBACK_BYTES as they arrive, so the
# fdatasync before the receipt finds little left to flush.
WRITEBACK_BYTES = 256 * 1024


class DiskStore(BlobStore):
    """Blobs as files; a put writes a unique temp file under `<root>/tmp/`, fsyncs it and renames it in.

    A reader gets an open file, so a concurrent delete (eviction) cannot break a transfer in progress.
    Several processes may share one root: temp names carry the writer's pid and a random part.
    """

    name = "disk"

    def __init__(self, root: str, prefix_len: int = 2):
        self.root = os.path.abspath(root)
        self.prefix_len = prefix_len
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp_dir, exist_ok=True)
        self.dir_sync = DirSync()
        self.durable_dirs: set[str] = set()  # prefix directories whose own entry this process has synced
        self.remove_stale_temp_files()

    def path(self, hash_: str) -> str:
        """The final path of a blob (the hash is validated first: it becomes a file name)."""
        check_hash(hash_)
        if self.prefix_len > 0:
            return os.path.join(self.root, hash_[: self.prefix_len], hash_)
        return os.path.join(self.root, hash_)

    def has(self, hash_: str) -> bool:
        try:
            os.stat(self.path(hash_))
        except FileNotFoundError:
            return False
        return True

    def get(self, hash_: str) -> Blob:
        started = time.monotonic_ns()
        try:
            f = open(self.path(hash_), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFound(trace=Trace.new(self.name, started)) from None
        try:
            return Blob(hash_, file=f, trace=Trace.new(self.name, started))
        except BaseException:
            f.close()
            raise

    def put(self, hash_: str, data: bytes) -> None:
        with self.writer(hash_, verify=False) as writer:  # callers of put have checked the hash
            writer.write(data)
            writer.commit()

    def writer(self, hash_: str, *, durable: bool = True, verify: bool = True) -> BlobWriter:
        """A streaming writer for one blob: bytes go to a temp file as they arrive, hashed as they pass.

        `durable=True` (origin storage) starts writeback as bytes arrive and fsyncs the file and the
        directory before `commit` returns (off the gevent hub, directory fsyncs shared by concurrent
        commits), and then drops the file's pages from memory; `durable=False` (a cache copy of a blob the
        origin keeps, written to be served) skips the fsyncs and keeps its pages. `verify=False`
        skips the SHA-384 for a caller that has checked the bytes itself.
        """
        return BlobWriter(self, hash_, durable, verify)

    def upload(self, hash_: str, size: int) -> BlobWriter:
        """The durable streaming write of an upload (the receiver has checked the hash by then)."""
        return self.writer(hash_, durable=True, verify=False)

    def delete(self, hash_: str) -> None:
        try:
            os.unlink(self.path(hash_))
        except FileNotFoundError:
            pass

    def list(self) -> list[str]:
        """Every stored blob hash (names that are not valid hashes, and `tmp/`, are skipped)."""
        return list(self.iter_hashes())

    def iter_hashes(self):
        """Yield stored hashes without building the whole list (for very large directories)."""
        if self.prefix_len <= 0:
            yield from self._hashes_in(self.root, "")
            return
        with os.scandir(self.root) as top:
            for entry in top:
                if entry.name != "tmp" and len(entry.name) == self.prefix_len and entry.is_dir(follow_symlinks=False):
                    yield from self._hashes_in(entry.path, entry.name)

    @staticmethod
    def _hashes_in(directory: str, prefix: str):
        with os.scandir(directory) as it:
            for entry in it:
                if is_valid_hash(entry.name) and entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    yield entry.name

    def remove_stale_temp_files(self) -> int:
        """Delete temp files left by crashed writers (dead pid, or older than STALE_TEMP_SECONDS)."""
        removed = 0
        now = time.time()
        with os.scandir(self.tmp_dir) as it:
            for entry in it:
                try:
                    stale = not _pid_alive(_temp_owner(entry.name)) or now - entry.stat().st_mtime > STALE_TEMP_SECONDS
                except FileNotFoundError:
                    continue
                if stale and _unlink_quietly(entry.path):
                    removed += 1
        if removed:
            log.info("removed %d unfinished temp file(s) from %s", removed, self.tmp_dir)
        return removed

    def _ensure_dir(self, directory: str) -> None:
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass


class BlobWriter(Upload):
    """One blob written as it arrives: `write` chunks, then `commit` (verify, rename into place) or `abort`.

    Nothing is visible under the blob's name until `commit` has checked the size and SHA-384. Used as a
    context manager, a writer that was not committed is aborted (its temp file removed).
    """

    def __init__(self, store: DiskStore, hash_: str, durable: bool, verify: bool = True):
        self.store = store
        self.hash = hash_
        self.final = store.path(hash_)  # validates the hash before it becomes a file name
        self.durable = durable
        self.size = 0
        self.committed = False
        self._written_back = 0  # bytes handed to the kernel's writeback so far (durable mode)
        self._sha = hashlib.sha384() if verify else None
        self.tmp = os.path.join(store.tmp_dir, f"{hash_}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.size + len(chunk) > MAX_BLOB_SIZE:
            raise ValueError(f"blob {self.hash[:8]} is larger than {MAX_BLOB_SIZE} bytes")
        if self._sha is not None:
            self._sha.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(chunk)
        if self.durable and self.size - self._written_back >= WRITEBACK_BYTES:
            # Only starts the writeback (it does not wait for it), so it is cheap enough on the hub.
            _start_writeback(self._fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def commit(self) -> None:
        """Make the blob visible under its name; HashMismatch (and nothing visible) if the bytes are wrong.

        Durable: returns once the data, the rename and (when new) the prefix directory are on disk.
        """
        if self._sha is not None and self._sha.hexdigest() != self.hash:
            raise HashMismatch(f"blob {self.hash[:8]}: the bytes written do not match the hash")
        if self.durable:
            off_hub(self._publish_durably)
        else:
            self._publish()

    def _publish(self) -> str:
        fd, self._fd = self._fd, None
        os.close(fd)
        parent = os.path.dirname(self.final)
        self.store._ensure_dir(parent)
        os.rename(self.tmp, self.final)  # atomic: readers see nothing or the whole blob
        self.committed = True
        return parent

    def _publish_durably(self) -> None:
        os.fdatasync(self._fd)  # the data first: a rename must never outlive a crash with short data
        # Hand the now clean pages back at once: the next blob's writes reuse them instead of taking pages
        # the kernel has not touched lately. On a VM that returns free memory to its host, such a page
        # faults in the host first: a 256 KiB write took 0.6 ms instead of 0.05 ms here, which halved
        # ingest. An upload is rarely read back soon, and a read finds it on disk.
        if hasattr(os, "posix_fadvise"):  # Linux (and most Unixes); not macOS
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        parent = self._publish()
        self.store.dir_sync.sync(parent)  # then the rename itself
        if parent not in self.store.durable_dirs:
            # The prefix directory's own entry, once per directory and process: another writer (or process)
            # may have created it moments ago and not synced its parent yet.
            self.store.dir_sync.sync(os.path.dirname(parent))
            self.store.durable_dirs.add(parent)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.committed:
            _unlink_quietly(self.tmp)


def _temp_owner(name: str) -> int:
    """The writer pid in `<hash>.<pid>.<random>.tmp`; 0 for names we did not write."""
    parts = name.split(".")
    if len(parts) == 4 and parts[1].isdigit():
        return int(parts[1])
    return 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirSync:
    """Directory fsyncs shared by concurrent commits (a group commit), per directory.

    A commit calls `sync(dir)` after its rename and returns only after an fsync of `dir` that started
    after that rename has finished. Commits that arrive while an fsync of the same directory runs wait for
    it, and then one of them runs the next fsync for all of them. Runs off the gevent hub (in pool threads
    or plain threads), so it uses real thread locks.
    """

    def __init__(self):
        self._pid = 0
        self._dirs: dict[str, _DirState] = {}

    def sync(self, directory: str) -> None:
        if self._pid != os.getpid():  # locks never cross a fork
            self._dirs, self._pid = {}, os.getpid()
        state = self._dirs.get(directory)
        if state is None:
            state = self._dirs.setdefault(directory, _DirState())
        arrived = state.started  # fsyncs numbered after this one start after our rename
        with state.lock:  # one fsync per directory at a time; later commits queue here
            if state.done > arrived:
                return  # an fsync that started after our rename has covered it
            state.started += 1
            number = state.started
            _fsync_dir(directory)
            state.done = number


class _DirState:
    __slots__ = ("lock", "started", "done")

    def __init__(self):
        self.lock = thread_lock()
        self.started = 0
        self.done = 0


def _load_sync_file_range():
    """libc's sync_file_range (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc, without a lookup
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes to disk now (a hint: fdatasync still decides)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
