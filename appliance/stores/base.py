"""The BlobStore interface (DESIGN §5) and the Blob handle that stores return."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from appliance.blob import blob_hash
from appliance.errors import BlobNotFound, NotImplementedByStore, OriginError
from appliance.trace import Trace

__all__ = ["Blob", "BlobStream", "StreamedBlob", "BlobStore", "BlobNotFound", "NotImplementedByStore",
           "NeededBlobsChecker", "Blocklister", "Upload", "BufferedUpload"]


class Blob:
    """A blob returned by a store: bytes in memory, or an open file to os.sendfile from.

    A file-backed blob was opened by the store at `get` time, so eviction (unlink) cannot break the
    reader. Close it (or use it as a context manager) when done.
    """

    __slots__ = ("hash", "size", "trace", "_data", "file")

    def __init__(self, hash_: str, *, data: bytes | None = None, file: BinaryIO | None = None,
                 size: int | None = None, trace: Trace | None = None):
        if data is None and file is None:
            raise ValueError("a Blob needs data or a file")
        self.hash = hash_
        self._data = data
        self.file = file
        self.size = len(data) if data is not None else (size if size is not None else os.fstat(file.fileno()).st_size)
        self.trace = trace if trace is not None else Trace()

    @property
    def data(self) -> bytes:
        """The blob's bytes (read from the file once if file-backed)."""
        if self._data is None:
            self._data = os.pread(self.file.fileno(), self.size, 0)
            if len(self._data) != self.size:
                raise OSError(f"short read of blob {self.hash[:8]}: {len(self._data)} of {self.size} bytes")
        return self._data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> Blob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BlobStream:
    """One blob as an origin sends it: the announced `size`, then its bytes in chunks as they arrive.

    Iterating yields exactly `size` bytes or raises (a short or overlong body, a stalled transfer); the
    SHA-384 is the reader's to check. Close it when done (a connection that was not read to the end is
    not reused).
    """

    __slots__ = ("size", "trace", "_chunks", "_close")

    def __init__(self, size: int, chunks: Iterator[bytes], trace: Trace | None = None,
                 close: Callable[[], None] | None = None):
        self.size = size
        self.trace = trace if trace is not None else Trace()
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            close()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_verified(self, hash_: str, source: str) -> Blob:
        """The whole stream as a Blob; OriginError naming `source` when the bytes do not match the hash."""
        with self:
            data = b"".join(self)
        if blob_hash(data) != hash_:
            raise OriginError(f"{source} sent {len(data)} bytes for {hash_[:8]} that do not match its hash")
        return Blob(hash_, data=data, trace=self.trace)

    @classmethod
    def of_blob(cls, blob: Blob) -> BlobStream:
        """A whole blob as a one-chunk stream (stores that cannot stream)."""
        def chunks() -> Iterator[bytes]:
            with blob:
                yield blob.data
        return cls(blob.size, chunks(), blob.trace, blob.close)


class StreamedBlob(Blob):
    """A blob relayed while it arrives: servers send `chunks` as they come; `data` reads them all.

    The chunks end in an exception (never a complete body) when the bytes fail their check, so a server
    that relays them must close its connection on an error, before the announced size is complete.
    """

    __slots__ = ("chunks", "_on_close")

    def __init__(self, hash_: str, size: int, chunks: Iterator[bytes], trace: Trace,
                 on_close: Callable[[], None]):
        self.hash, self.size, self.trace = hash_, size, trace
        self._data, self.file = None, None
        self.chunks = chunks
        self._on_close = on_close

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = b"".join(self.chunks)
        return self._data

    def close(self) -> None:
        self._on_close()


class BlobStore:
    """has / get / put / put_sd / delete; `get` raises BlobNotFound when the blob is absent.

    `stream` is `get` for a reader that relays the bytes as they arrive; stores that cannot stream
    answer with the whole blob in one chunk.
    """

    name = "store"

    def has(self, hash_: str) -> bool:
        raise NotImplementedByStore()

    def get(self, hash_: str) -> Blob:
        raise NotImplementedByStore()

    def stream(self, hash_: str) -> BlobStream:
        """The blob's size and its bytes as they arrive (BlobNotFound when absent; bytes not verified)."""
        return BlobStream.of_blob(self.get(hash_))

    def put(self, hash_: str, data: bytes) -> None:
        raise NotImplementedByStore()

    def put_sd(self, hash_: str, data: bytes) -> None:
        """Store an sd blob; stores that index streams parse it, the rest store it like any blob."""
        self.put(hash_, data)

    def delete(self, hash_: str) -> None:
        raise NotImplementedByStore()

    def upload(self, hash_: str, size: int) -> Upload:
        """A content blob written as it arrives (`write` chunks, then `commit` or `abort`).

        The caller has checked the bytes (size and SHA-384) before `commit`; `commit` returns once the blob
        is stored as `put` stores it. Stores that can write as bytes arrive override this; the rest get
        the bytes in one `put` at commit (so at most one blob in memory per upload).
        """
        return BufferedUpload(self, hash_, size)

    def shutdown(self) -> None:
        pass

    def get_bytes(self, hash_: str) -> bytes:
        with self.get(hash_) as blob:
            return blob.data


class Upload:
    """The interface of `BlobStore.upload`: write, commit, abort; a context manager aborts what was not
    committed."""

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class BufferedUpload(Upload):
    """An upload for stores that take whole blobs: the bytes gather in one buffer, `commit` puts them."""

    def __init__(self, store: BlobStore, hash_: str, size: int):
        self.store = store
        self.hash = hash_
        self._buffer = bytearray()
        self._size = size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if len(self._buffer) + len(chunk) > self._size:
            raise ValueError(f"blob {self.hash[:8]}: more than the {self._size} bytes announced")
        self._buffer += chunk

    def commit(self) -> None:
        self.store.put(self.hash, bytes(self._buffer))
        self._buffer = bytearray()

    def abort(self) -> None:
        self._buffer = bytearray()


class NeededBlobsChecker:
    """Capability: list the content blobs of a known stream that are not stored yet."""

    def missing_blobs_for_known_stream(self, sd_hash: str) -> list[str]:
        raise NotImplementedError


class Blocklister:
    """Capability: refuse uploads of blocked sd hashes."""

    def block(self, hash_: str) -> None:
        raise NotImplementedError

    def is_blocked(self, hash_: str) -> bool:
        raise NotImplementedError
