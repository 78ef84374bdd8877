"""The cache tier's library, used by the cache-manager process (no IPC and no gevent in here).

- spec.py      `--disk-cache SIZE:PATH:MANAGER` parsed as reflector.go does (sizes kept in bytes)
- policies.py  lru, lfu (LFUDA), arc, simple: byte-capacity eviction with pins and adoption
- index.py     the persistent index: a policy saved behind in SQLite inside the cache directory
- scan.py      the loader: adopts an existing cache directory and forgets vanished files, in batches
- localdb.py   the `localdb` manager: access times in MySQL's blob_ table, as reflector.go keeps them

Memory cost (measured on this machine, CPython 3.11, glibc; README figures come from here):

`--mem-cache N` (appliance.stores.memory.LRUMemoryStore, one per worker process): each cached blob costs
its size plus about 250 bytes of Python objects (the 96-character hash key 145 B, the bytes header 33 B,
the OrderedDict slot ~70 B). Blobs of 128 KiB and more are separate mmap allocations rounded up to 4 KiB
pages; after eviction churn the measured resident cost of a 2 MiB blob was 2 MiB + ~7 KiB. So the bound
is about N x (2 MiB + 8 KiB) per worker: `--mem-cache 1000` with 4 workers can hold ~8.2 GB.

Disk-cache index (in the cache manager, per cached blob, hash string included): lru, arc and simple
~270 bytes, lfu ~410 bytes (its heap); 1,000,000 cached blobs (~2 TB of disk) need ~270-410 MB of RAM and
~240 MB of index file. ARC ghosts cost the same per entry and are bounded to twice the cached count.
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
