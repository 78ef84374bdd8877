"""Every Prometheus metric, defined once, under reflector.go's names (spec §7), plus `appliance_*`.

In the appliance, PROMETHEUS_MULTIPROC_DIR is set by the supervisor *before* this module is first
imported (prometheus_client picks its value backend at import time), so every process writes its own
files and `render()` sums them. Standalone commands (`prism peer`, `prism test`) use the plain registry.
"""
from __future__ import annotations

import logging
import os

# prometheus_client opens its files at import when this is set: make sure the directory exists.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

from appliance.errors import classify  # noqa: E402

log = logging.getLogger("metrics")
NS = "reflector"
_LIVE = {"multiprocess_mode": "livesum"}

# --- reflector.go's metrics --------------------------------------------------------------------------
ERROR_TOTAL = Counter("error_total", "Total number of errors", ["direction", "error_type"], namespace=NS)
BLOB_DOWNLOAD_TOTAL = Counter("blob_download_total", "Total number of blobs downloaded from reflector",
                              namespace=NS)
PEER_DOWNLOAD_TOTAL = Counter("peer_download_total",
                              "Total number of blobs downloaded from reflector through tcp protocol", namespace=NS)
HTTP3_DOWNLOAD_TOTAL = Counter("http3_blob_download_total",
                               "Total number of blobs downloaded from reflector through QUIC protocol", namespace=NS)
HTTP_DOWNLOAD_TOTAL = Counter("http_blob_download_total",
                              "Total number of blobs downloaded from reflector through HTTP protocol", namespace=NS)
CACHE_HIT_TOTAL = Counter("cache_hit_total", "Total number of blobs retrieved from the cache storage",
                          ["cache_type", "component"], namespace=NS)
CACHE_MISS_TOTAL = Counter("cache_miss_total", "Total number of blobs retrieved from origin rather than cache storage",
                           ["cache_type", "component"], namespace=NS)
ITTT_THIS_HIT_TOTAL = Counter("ittt_this_hit_total", "Total number of blobs retrieved from the this-store of ITTT",
                              namespace=NS)
ITTT_THAT_HIT_TOTAL = Counter("ittt_that_hit_total", "Total number of blobs retrieved from the that-store of ITTT",
                              namespace=NS)
CACHE_ORIGIN_REQUESTS = Gauge("cache_origin_requests_total",
                              "How many Get requests are in flight from the cache to the origin",
                              ["cache_type", "component"], namespace=NS, **_LIVE)
CACHE_WAITING_REQUESTS = Gauge("cache_waiting_requests_total",
                               "How many cache requests are waiting for an in-flight origin request",
                               ["cache_type", "component"], namespace=NS, **_LIVE)
CACHE_EVICT_TOTAL = Counter("cache_evict_total", "Count of blobs evicted from cache", ["cache_type", "component"],
                            namespace=NS)
SPEED_MBPS = Gauge("speed_mbps", "Speed of blob retrieval from cache or from origin",
                   ["cache_type", "component", "source"], namespace=NS, multiprocess_mode="mostrecent")
BLOB_UPLOAD_TOTAL = Counter("blob_upload_total", "Total number of blobs uploaded to reflector", namespace=NS)
SDBLOB_UPLOAD_TOTAL = Counter("sdblob_upload_total",
                              "Total number of SD blobs (and therefore streams) uploaded to reflector", namespace=NS)
TCP_IN_BYTES = Counter("tcp_in_bytes", "Total number of bytes downloaded through TCP", namespace=NS)
TCP_OUT_BYTES = Counter("tcp_out_bytes", "Total number of bytes streamed out through TCP", namespace=NS)
UDP_IN_BYTES = Counter("udp_in_bytes", "Total number of bytes downloaded through UDP", namespace=NS)
UDP_OUT_BYTES = Counter("udp_out_bytes", "Total number of bytes streamed out through UDP", namespace=NS)
HTTP_IN_BYTES = Counter("http_in_bytes", "Total number of bytes downloaded through HTTP", namespace=NS)
HTTP_OUT_BYTES = Counter("http_out_bytes", "Total number of bytes streamed out through HTTP", namespace=NS)
REFLECTOR_IN_BYTES = Counter("reflector_in_bytes", "Total number of incoming bytes (from users)", namespace=NS)
S3_OUT_BYTES = Counter("s3_out_bytes", "Total number of outgoing bytes (to S3)", namespace=NS)
S3_IN_BYTES = Counter("s3_in_bytes", "Total number of incoming bytes (from S3-CF)", namespace=NS)
HTTP3_QUEUE_SIZE = Gauge("http3_blob_request_queue_size", "Blob requests of https queue size", namespace=NS, **_LIVE)
HTTP_QUEUE_SIZE = Gauge("http_blob_request_queue_size", "Blob requests of http queue size", namespace=NS, **_LIVE)
ROUTINES = Gauge("routines", "routines running by type", ["package", "kind"], namespace=NS, **_LIVE)

# --- the appliance's own -----------------------------------------------------------------------------
PROCESSES = Gauge("appliance_processes", "Processes running, by role", ["role"], multiprocess_mode="livesum")
RESTARTS_TOTAL = Counter("appliance_restarts_total", "Children respawned after an unexpected exit", ["role"])
CRASHES_TOTAL = Counter("appliance_crashes_total", "Children that exited unexpectedly, by role and cause",
                        ["role", "cause"])
HEARTBEAT_AGE = Gauge("appliance_heartbeat_age_seconds", "Age of the oldest heartbeat of a role", ["role"],
                      multiprocess_mode="livemax")
CACHE_DEGRADED = Gauge("appliance_cache_degraded", "1 while the disk cache runs degraded, by reason: capacity (its "
                       "filesystem holds less than its size), index (not saved), manager (the cache manager is not "
                       "running)", ["reason"], multiprocess_mode="livemax")
CACHE_WRITE_FAILURES_TOTAL = Counter("appliance_cache_write_failures_total",
                                     "Cache copies not written (the blob is still served), by reason", ["reason"])
IPC_REQUESTS_TOTAL = Counter("appliance_ipc_requests_total", "IPC requests sent, by peer and outcome",
                             ["peer", "outcome"])
IPC_LATENCY = Histogram("appliance_ipc_latency_seconds", "IPC round-trip time", ["peer"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5))
CONNECTIONS = Gauge("appliance_connections", "Open client connections, by server", ["server"],
                    multiprocess_mode="livesum")
DRAINING = Gauge("appliance_draining", "1 while the workers drain (/health 503, TCP ports refuse)",
                 multiprocess_mode="livemax")
CACHE_USED_BYTES = Gauge("appliance_cache_used_bytes", "Bytes held by a disk cache", ["path"],
                         multiprocess_mode="livemax")
CACHE_CAPACITY_BYTES = Gauge("appliance_cache_capacity_bytes", "Configured size of a disk cache", ["path"],
                             multiprocess_mode="livemax")
CACHE_FS_FREE_BYTES = Gauge("appliance_cache_filesystem_free_bytes",
                            "Free bytes on the filesystem of a disk cache", ["path"], multiprocess_mode="livemax")
CACHE_BLOBS = Gauge("appliance_cache_blobs", "Blobs held by a disk cache", ["path"], multiprocess_mode="livemax")
ORIGIN_FETCHES_TOTAL = Counter("appliance_origin_fetches_total",
                               "Cache misses fetched from the origin, by outcome (ok, notfound, error, abandoned)",
                               ["outcome"])
ORIGIN_FETCH_SECONDS = Histogram("appliance_origin_fetch_seconds",
                                 "Time from a miss's lease to the blob written in the disk cache",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DHT_CONTACTS = Gauge("appliance_dht_contacts", "Contacts in the DHT routing table", multiprocess_mode="livemax")
DHT_ANNOUNCED = Gauge("appliance_dht_announced_hashes", "Hashes this node announces in the DHT",
                      multiprocess_mode="livemax")
DOWNLOAD_FAILURES_TOTAL = Counter("appliance_download_failures_total",
                                  "Downloads answered with an error, by server and reason", ["server", "reason"])
ORIGIN_FAILURES_TOTAL = Counter("appliance_origin_failures_total",
                                "Cache misses whose origin fetch failed, by reason (hash_mismatch, "
                                "first_byte_timeout, idle_timeout, error)", ["reason"])
CONNECTIONS_CLOSED_TOTAL = Counter("appliance_connections_closed_total",
                                   "Client connections closed by a limit, by server and reason (per_ip_cap: refused "
                                   "at accept, over the per-IP cap; idle: no message within the idle timeout)",
                                   ["server", "reason"])
DHT_REQUESTS_DROPPED_TOTAL = Counter("appliance_dht_requests_dropped_total",
                                    "DHT requests left unanswered, by reason (rate: over the per-source rate limit)",
                                    ["reason"])
DHT_ANSWERS_TRIMMED_TOTAL = Counter("appliance_dht_answers_trimmed_total",
                                    "DHT answers shed of contacts to stay within the amplification ceiling")


def count_error(direction: str, exc: BaseException) -> str:
    """Count an error with reflector.go's classification; return the error_type ('other' = log it)."""
    kind = classify(exc)
    ERROR_TOTAL.labels(direction=direction, error_type=kind).inc()
    return kind


# --- exposition --------------------------------------------------------------------------------------

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _exposition(families) -> bytes:
    """Prometheus text format 0.0.4, counters under reflector.go's exact names.

    prometheus_client strips `_total` from counter names and re-appends it to every counter, so
    `reflector_tcp_out_bytes` would become `reflector_tcp_out_bytes_total`; the Go client that
    dashboards were built against exports the declared names and no `_created` series.
    """
    lines = []
    for family in families:
        name = family.name
        if family.type == "counter":
            name = family.name if family.name in _BARE_COUNTERS else family.name + "_total"
        lines.append(f"# HELP {name} {_escape(family.documentation)}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = name if family.type == "counter" else sample.name
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{sample_name}{{{labels}}} {floatToGoString(sample.value)}" if labels
                         else f"{sample_name} {floatToGoString(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


# Counters whose reflector.go names do not end in `_total`.
_BARE_COUNTERS = {m._name for m in (TCP_IN_BYTES, TCP_OUT_BYTES, UDP_IN_BYTES, UDP_OUT_BYTES, HTTP_IN_BYTES,
                                    HTTP_OUT_BYTES, REFLECTOR_IN_BYTES, S3_OUT_BYTES, S3_IN_BYTES)}


def render() -> bytes:
    """The text exposition of every process's metrics (multiprocess) or of this process's."""
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    else:
        from prometheus_client import REGISTRY as registry
    return _exposition(registry.collect())


def enable_multiprocess(directory: str) -> None:
    """Write this process's metrics into `directory` from now on (the supervisor calls this at start).

    prometheus_client picks its value backend when first imported; a CLI process may have imported it
    before the multiprocess directory was known. Labelled children created after this call use files.
    """
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()


def mark_process_dead(pid: int) -> None:
    """Drop a dead child's live gauges (counters stay: they must not go backwards)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
