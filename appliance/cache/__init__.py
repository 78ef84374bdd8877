"""The cache tier's library, used by the cache-manager process (no IPC and no gevent in here).

- spec.py      `--disk-cache SIZE:PATH:MANAGER` parsed as reflector.go does (sizes kept in bytes)
- policies.py  lru, lfu (LFUDA), arc, simple: byte-capacity eviction with pins and adoption
- slab.py      flat arrays for millions of entries: 48-byte keys, sizes, links, an open-addressing table
- index.py     the persistent index: a policy saved as a snapshot of its arrays plus a journal of changes
- scan.py      the loader: adopts an existing cache directory and forgets vanished files, in batches
- localdb.py   the `localdb` manager: access times in MySQL's blob_ table, as reflector.go keeps them

Memory cost (measured on this machine, CPython 3.11, glibc; README figures come from here):

`--mem-cache N` (appliance.stores.memory.LRUMemoryStore, one per worker process): each cached blob costs
its size plus about 250 bytes of Python objects (the 96-character hash key 145 B, the bytes header 33 B,
the OrderedDict slot ~70 B). Blobs of 128 KiB and more are separate mmap allocations rounded up to 4 KiB
pages; after eviction churn the measured resident cost of a 2 MiB blob was 2 MiB + ~7 KiB. So the bound
is about N x (2 MiB + 8 KiB) per worker: `--mem-cache 1000` with 4 workers can hold ~8.2 GB.

Disk-cache index (in the cache manager, resident memory per cached blob, measured by `scripts/bench cache
--index-only`): lru and simple ~70-80 bytes, arc ~75-95 (its ghosts are bounded to half the cached count),
lfu ~100-110 (its heap); the bound is 128 bytes at 10,000,000 blobs (~20 TB of 2 MiB blobs, ~1 GB of RAM).
The snapshot on disk is about the same size as the arrays in memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.cache.index import CacheIndex, index_path
from appliance.cache.policies import make_policy
from appliance.cache.spec import DiskCacheSpec

if TYPE_CHECKING:
    from appliance.cache.localdb import LocalDBIndex


def open_index(spec: DiskCacheSpec, localdb_conn: str) -> CacheIndex | LocalDBIndex:
    """The index of one disk cache, not loaded yet: call load() and delete the files it returns."""
    if spec.manager == "localdb":
        from appliance.cache.localdb import LocalDB, LocalDBIndex  # pymysql only when localdb is used

        return LocalDBIndex(LocalDB(localdb_conn), spec.size_bytes)
    return CacheIndex(index_path(spec.path), make_policy(spec.manager, spec.size_bytes))
