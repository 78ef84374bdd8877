"""Streams for tests: random content blobs and a valid sd blob that lists them (appliance.stream)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from appliance.blob import blob_hash
from appliance.stream import BlobInfo, StreamDescriptor


@dataclass(frozen=True)
class TestStream:
    __test__ = False  # not a pytest test class
    sd: StreamDescriptor
    blobs: dict[str, bytes]  # content blobs, hash -> bytes, in stream order

    @property
    def sd_hash(self) -> str:
        return self.sd.sd_hash

    @property
    def sd_blob(self) -> bytes:
        return self.sd.raw

    def db_entries(self) -> list[tuple[str, int, int]]:
        """(hash, length, num) of every content blob, as Database.add_sd_blob takes them."""
        return [(b.blob_hash, b.length, b.blob_num) for b in self.sd.content_blobs]


def make_stream(n_blobs: int, blob_size: int = 64, name: str = "test.bin") -> TestStream:
    """A stream of `n_blobs` random content blobs of `blob_size` bytes (a multiple of 16, like ciphertext)."""
    blobs: dict[str, bytes] = {}
    infos = []
    for num in range(n_blobs):
        data = os.urandom(blob_size)
        blobs[blob_hash(data)] = data
        infos.append(BlobInfo(num, len(data), os.urandom(16).hex(), blob_hash(data)))
    infos.append(BlobInfo(n_blobs, 0, os.urandom(16).hex()))
    return TestStream(StreamDescriptor.build(name, os.urandom(16).hex(), name, infos), blobs)
