"""Build the origin and the disk-cache layers from the settings, as reflector.go composes them (spec §4.13).

Origin, first match wins:
  --upstream-reflector        an upstream reflector/blobcache over tcp, http or http3
  --origin-endpoint(+fallback) CloudFront-style endpoints; read-write with S3 when S3 is configured
  S3 in the config            bucket_name set
  otherwise                   local storage (--storage-dir): the embedded default, never evicted
With a database (use_db and db_conn), the origin is wrapped in the DB-backed store.

Disk caches: --disk-cache (default: none in front of local storage, `100GB:<cache_dir>:lru` in front of
a remote origin; '' turns it off) and --optional-disk-cache in front of it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from appliance.cache.spec import DiskCacheSpec, parse_disk_cache
from appliance.config import Config
from appliance.stores.base import BlobStore

log = logging.getLogger("store")

DEFAULT_CACHE_SIZE = "100GB"


class CompositionError(ValueError):
    """Settings that do not make a working store graph; one line for the operator."""


@dataclass
class Origin:
    store: BlobStore  # what uploads write to and misses read from (DB-backed when a database is used)
    local: BlobStore | None  # local storage when it is the origin: read directly, never evicted
    kind: str  # "local", "upstream", "endpoint", "s3"
    database: object | None = None


def origin_kind(config: Config) -> str:
    if config.upstream_reflector:
        return "upstream"
    if config.origin_endpoint:
        return "endpoint"
    if config.bucket_name:
        return "s3"
    return "local"


def uses_database(config: Config) -> bool:
    return bool(config.use_db and config.db_conn)


def build_origin(config: Config) -> Origin:
    """The origin store for this config (no network connection is made here)."""
    kind = origin_kind(config)
    local = None
    if kind == "upstream":
        protocol = config.upstream_protocol
        if protocol == "tcp":
            from appliance.stores.peer import PeerStore

            store: BlobStore = PeerStore(config.upstream_reflector, timeout=config.upstream_idle_timeout,
                                         first_byte_timeout=config.upstream_first_byte_timeout)
        elif protocol == "http":
            from appliance.stores.http import HttpStore

            store = HttpStore(config.upstream_reflector, edge_token=config.upstream_edge_token,
                              timeout=config.upstream_idle_timeout,
                              first_byte_timeout=config.upstream_first_byte_timeout)
        elif protocol == "http3":
            from appliance.stores.http3 import Http3Store

            store = Http3Store(config.upstream_reflector, timeout=30.0)
        else:
            raise CompositionError(f"protocol is not recognized: {protocol}")
    elif kind == "endpoint":
        from appliance.stores.cloudfront import ITTT, CloudFrontRO, CloudFrontRW

        timeouts = {"timeout": config.upstream_idle_timeout, "first_byte_timeout": config.upstream_first_byte_timeout}
        store = CloudFrontRO(config.origin_endpoint, **timeouts)
        if config.origin_endpoint_fallback:
            store = ITTT(store, CloudFrontRO(config.origin_endpoint_fallback, **timeouts))
        if config.bucket_name:
            from appliance.stores.s3 import S3Store

            store = CloudFrontRW(store, S3Store.from_config(config))
    elif kind == "s3":
        from appliance.stores.s3 import S3Store

        store = S3Store.from_config(config)
    else:
        from appliance.stores.disk import DiskStore

        store = local = DiskStore(config.storage_dir)
    database = None
    if uses_database(config):
        from appliance.db import Database
        from appliance.stores.dbbacked import DBBackedStore

        database = Database.from_dsn(config.db_conn, track_access="streams")
        store = DBBackedStore(store, database, delete_on_miss=False)
        local = None  # existence comes from the database, not from the files
    return Origin(store, local, kind, database)


def disk_cache_specs(config: Config) -> list[DiskCacheSpec]:
    """The disk-cache layers, outermost first (--optional-disk-cache, then --disk-cache)."""
    value = config.disk_cache
    if value is None:
        value = "" if origin_kind(config) == "local" else \
            f"{DEFAULT_CACHE_SIZE}:{os.path.abspath(config.cache_dir)}:lru"
    try:
        specs = [parse_disk_cache(config.optional_disk_cache), parse_disk_cache(value)]
    except ValueError as exc:
        raise CompositionError(str(exc)) from None
    specs = [s for s in specs if s is not None]
    if len({s.path for s in specs}) != len(specs):
        raise CompositionError("--disk-cache and --optional-disk-cache must use different directories")
    return specs
