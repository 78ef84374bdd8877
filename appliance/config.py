"""Every setting of the appliance in one table: flag, config key, type, default, help.

The command-line parsers, the commented default config file (`config/reflector-appliance.toml`) and the
README's settings table are all generated from SETTINGS. reflector.go's config.json keys are settings
too, so an existing config.json keeps working. Precedence: defaults < config file < command line.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance import redact

LBRY_DHT_SEEDS = ["lbrynet1.lbry.com:4444", "lbrynet2.lbry.com:4444", "lbrynet3.lbry.com:4444",
                  "lbrynet4.lbry.com:4444"]
LBRY_WALLET_SERVERS = ["spv25.lbry.com:50001", "spv26.lbry.com:50001", "spv19.lbry.com:50001",
                       "spv14.lbry.com:50001"]
LOCALDB_DSN = "reflector:reflector@tcp(localhost:3306)/reflector"
MAX_WORKERS = 100  # the supervisor's scoreboard has 128 slots: workers, their replacements and the other roles


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: `low` to `high` inclusive (None = unbounded); `above` refuses low itself."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"{self.low:g} to {self.high:g}"
        elif self.low is not None:
            text = f"{'>' if self.above else '>='} {self.low:g}"
        else:
            text = f"<= {self.high:g}"
        return f"{text} ({self.note})" if self.note else text


PORT = Range(0, 65535)
PORT_OR_OFF = Range(0, 65535, note="0 = off")
POSITIVE = Range(0, above=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)


def _ipv4_or_empty(value: str) -> str | None:
    if value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return "an IPv4 address such as 127.0.0.1, or empty"
    return None


def _node_id_or_empty(value: str) -> str | None:
    return "96 hex characters, or empty" if value and not re.fullmatch(r"[0-9a-fA-F]{96}", value) else None


@dataclass(frozen=True)
class Setting:
    key: str  # config-file key; the flag is the same with dashes unless `flag` says otherwise
    type: str  # str | int | float | bool | list
    default: Any
    help: str
    group: str = "appliance"
    flag: str | None = None  # None: --<key with dashes>; "" : config file only
    secret: bool = False
    choices: tuple = ()
    range: Range | None = None  # numbers: what is allowed (checked at start and on reload)
    check: Callable[[Any], str | None] | None = None  # other values: None if fine, else what is allowed

    @property
    def flag_name(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.key.replace("_", "-")


S = Setting
SETTINGS: list[Setting] = [
    # --- reflector.go config.json keys -------------------------------------------------------------
    S("aws_id", "str", "", "S3 access key id", "storage", flag="", secret=True),
    S("aws_secret", "str", "", "S3 secret key", "storage", flag="", secret=True),
    S("bucket_region", "str", "", "S3 region", "storage", flag=""),
    S("bucket_name", "str", "", "S3 bucket holding the blobs (object key = blob hash)", "storage", flag=""),
    S("s3_endpoint", "str", "", "custom S3 endpoint URL; empty = AWS", "storage", flag=""),
    S("db_conn", "str", "", "MySQL DSN, reflector.go form USER:PASSWORD@tcp(HOST:PORT)/DBNAME", "database",
      flag="", secret=True),
    S("slack_hook_url", "str", "", "Slack incoming-webhook URL: log records of level INFO and above are posted",
      "logging", flag="", secret=True),
    S("slack_channel", "str", "", "Slack channel for slack_hook_url", "logging", flag=""),
    S("update_bin_url", "str", "", "reflector.go self-update URL; ignored: the appliance is updated by its package",
      "compat", flag=""),
    S("update_cmd", "str", "", "reflector.go self-update command; ignored", "compat", flag=""),
    # --- ports (reflector.go's flags) -----------------------------------------------------------------
    S("receiver_port", "int", 5566, "reflector upload port (TCP)", "ports", range=PORT_OR_OFF),
    S("tcp_peer_port", "int", 5567, "LBRY TCP peer protocol port", "ports", range=PORT_OR_OFF),
    S("http3_peer_port", "int", 5568, "HTTP/3 blob port (UDP); 0 disables HTTP/3", "ports", range=PORT_OR_OFF),
    S("http_peer_port", "int", 5569, "HTTP blob port", "ports", range=PORT_OR_OFF),
    S("metrics_port", "int", 2112, "Prometheus /metrics port", "ports", range=PORT_OR_OFF),
    S("listen_address", "str", "", "IPv4 address every listener (TCP, UDP, metrics) binds; empty = all interfaces "
      "(reflector.go)", "ports", check=_ipv4_or_empty),
    S("standalone_peer_port", "int", 3333, "TCP peer port of `prism peer` (reflector.go: always 3333)", "ports",
      flag="--port", range=PORT),
    # --- behaviour (reflector.go's flags) -------------------------------------------------------------
    S("disable_uploads", "bool", False, "do not run the upload receiver", "reflector"),
    S("disable_blocklist", "bool", False, "do not refresh or apply the blocklist", "reflector"),
    S("use_db", "bool", True, "track blobs and streams in MySQL (db_conn); without db_conn there is no database",
      "database"),
    S("upstream_reflector", "str", "", "host:port of an upstream reflector or blobcache to fetch from", "origin"),
    S("upstream_protocol", "str", "http", "protocol to the upstream; http and tcp are faster than http3 (a cache "
      "chained over http3 took cold misses at a quarter to a half of the speed of one chained over http, "
      "scripts/bench e)",
      "origin", choices=("tcp", "http", "http3")),
    S("upstream_edge_token", "str", "",
      "token sent upstream as edge_token, and required from HTTP clients for protected blobs", "origin",
      secret=True),
    S("request_queue_size", "int", 200, "concurrent HTTP and HTTP/3 GETs per worker; the rest wait", "reflector",
      range=AT_LEAST_ONE),
    S("upstream_first_byte_timeout", "float", 5.0,
      "seconds an upstream or origin may take to start answering a blob request before the miss fails",
      "origin", range=POSITIVE),
    S("upstream_idle_timeout", "float", 10.0,
      "seconds an upstream or origin may stall in the middle of a blob before the miss fails", "origin",
      range=POSITIVE),
    S("origin_endpoint", "str", "", "CloudFront-style HTTP origin base URL (blob URL = base + hash)", "origin"),
    S("origin_endpoint_fallback", "str", "", "second origin endpoint, tried when the first fails", "origin"),
    S("disk_cache", "str", None,
      "SIZE:PATH:MANAGER (lru, lfu, arc, simple, localdb); default: none in front of local storage, "
      "100GB:<cache_dir>:lru in front of a remote origin; '' turns it off", "cache"),
    S("optional_disk_cache", "str", "", "a second SIZE:PATH:MANAGER disk cache in front of --disk-cache", "cache"),
    S("cache_sync_interval", "float", 5.0,
      "seconds between syncs of the disk caches (cache copies are not fsynced per blob; after an unclean "
      "stop, files written since the last sync are checked before they are served)", "cache", range=POSITIVE),
    S("mem_cache", "int", 0, "in-memory cache of at most this many blobs per worker (0 = off)", "cache",
      range=NON_NEGATIVE),
    S("disk_cache_reserve_percent", "float", 2.0,
      "percent of a disk cache's filesystem kept free (at least 2 MiB): the cache shrinks below its SIZE to keep it",
      "cache", range=Range(0, 50)),
    # --- appliance ------------------------------------------------------------------------------------
    S("workers", "int", 0, "number of gevent worker processes (0 = number of cores)",
      range=Range(0, MAX_WORKERS, note="0 = number of cores")),
    S("storage_dir", "str", "./data/blobs", "local storage: the origin when no upstream, S3 or endpoint is set"),
    S("cache_dir", "str", "./data/cache", "default disk-cache directory"),
    S("state_dir", "str", "./data/state", "persistent state: cache indexes, HTTP/3 certificate, blocklist"),
    S("runtime_dir", "str", "./run", "control and IPC sockets, metrics files (the service uses /run/...)"),
    S("graceful_timeout", "float", 30.0, "seconds in-flight transfers may take to finish on TERM or HUP",
      range=POSITIVE),
    S("drain_seconds", "float", 0.0, "on a graceful stop, first drain this long: /health answers 503 and the "
      "TCP ports refuse new connections while requests are still served (behind a balancer: > its check "
      "interval x fall)", range=NON_NEGATIVE),
    S("heartbeat_timeout", "float", 30.0, "a child whose heartbeat is older than this is killed and replaced",
      range=POSITIVE),
    S("upload_timeout", "float", 180.0, "read timeout per upload message, seconds (reflector.go: 3 min)",
      "reflector", range=POSITIVE),
    S("peer_idle_timeout", "float", 60.0, "TCP peer connections idle longer than this are closed", "reflector",
      range=POSITIVE),
    S("upload_idle_timeout", "float", 60.0, "reflector upload connections that send nothing for this long after "
      "connecting or between messages are closed (at most upload_timeout; a message under way has upload_timeout)",
      "reflector", range=POSITIVE),
    S("max_connections_per_ip", "int", 256, "open connections one client IP may hold on each of the upload, TCP "
      "peer and HTTP ports, all workers together (each worker allows its share, rounded up); 0 = no cap",
      "reflector", range=NON_NEGATIVE),
    S("log_file", "str", "", "also write the log to this file (reopened on USR1); empty = stderr only",
      "logging"),
    S("secrets_file", "str", "",
      "TOML file of secret settings (S3 keys, DB password) merged over this file; a missing file is ignored",
      flag=""),
    S("localdb_conn", "str", LOCALDB_DSN, "MySQL DSN of the localdb cache manager's access-time table", "cache",
      secret=True),
    # --- HTTP/3 ---------------------------------------------------------------------------------------
    S("disable_http3", "bool", False, "do not run the HTTP/3 server", "http3"),
    S("http3_cert", "str", "", "TLS certificate (PEM) for HTTP/3; empty = self-signed in state_dir", "http3"),
    S("http3_key", "str", "", "TLS private key (PEM) for HTTP/3", "http3", secret=True),
    S("http3_processes", "int", 0, "HTTP/3 processes sharing the UDP port with SO_REUSEPORT (0 = number of cores)",
      "http3", range=Range(0, MAX_WORKERS, note="0 = number of cores")),
    # --- DHT ------------------------------------------------------------------------------------------
    S("disable_dht", "bool", False, "do not run the DHT node", "dht"),
    S("dht_port", "int", 4444, "DHT UDP port", "dht", range=PORT),
    S("dht_seeds", "list", LBRY_DHT_SEEDS, "host:port of DHT nodes to join through", "dht"),
    S("dht_node_id", "str", "", "hex node id (96 chars); empty = random, kept in state_dir", "dht",
      check=_node_id_or_empty),
    S("dht_external_ip", "str", "", "IPv4 address announced to the DHT; empty = learned from peers", "dht",
      check=_ipv4_or_empty),
    S("dht_peer_port", "int", 0, "TCP peer port announced to the DHT (0 = tcp_peer_port)", "dht",
      range=Range(0, 65535, note="0 = tcp_peer_port")),
    S("dht_announce_all", "bool", False, "announce every stored blob, not only sd blobs", "dht"),
    S("dht_address_policy", "str", "any", "DHT contacts and peers accepted: 'any' unicast IPv4 (loopback and "
      "private included), or 'public' (routable, port >= 1024, as stock SDK nodes)", "dht", choices=("any", "public")),
    S("dht_rate_limit", "float", 100.0, "DHT requests a second answered per source IP, after a burst of "
      "dht_rate_burst; the rest are dropped unanswered (a node announcing 10 hashes/s sends a close node about 20 "
      "a second); 0 = no limit", "dht", range=NON_NEGATIVE),
    S("dht_rate_burst", "int", 200, "DHT requests one source IP may send at once before dht_rate_limit applies",
      "dht", range=AT_LEAST_ONE),
    S("dht_max_amplification", "float", 7.0, "largest DHT answer as a multiple of its request's size: contacts are "
      "shed to fit (LBRY SDK nodes answer up to 7.4x an SDK request); 0 = only the 1400-byte datagram limit", "dht",
      range=NON_NEGATIVE),
    # --- cluster (prism start; the DHT process runs it) ----------------------------------------------
    S("cluster", "bool", False, "join the cluster of the nodes sharing db_conn and announce only this node's share "
      "of the stored hashes (prism start turns it on)", "dht"),
    S("cluster_name", "str", "prism", "cluster name: the nodes sharing the database and this name divide the hashes",
      "dht"),
    S("node_name", "str", "", "this node's name in the cluster; empty = 12 random base58 characters at each start",
      "dht"),
    S("cluster_heartbeat", "float", 2.0, "seconds between cluster heartbeats; a member is dead after 3 missed", "dht",
      range=POSITIVE),
    S("cluster_rescan", "float", 600.0, "seconds between re-reads of this node's share from the database (new "
      "blobs); 0 = only when the membership changes", "dht", range=NON_NEGATIVE),
    S("hash_range", "str", "", "START-END hex prefixes (0-7f = hashes starting 00 to 7f) the cluster announces, "
      "divided among the members; empty = the database's lowest to highest hash", "dht"),
    # --- blocklist and protected content -------------------------------------------------------------
    S("blocklist_source", "str", "lbry",
      "'lbry' (LBRY's outpoint list + wallet servers), an http(s) URL or a file of sd hashes", "blocklist"),
    S("blocklist_url", "str", "https://api.lbry.com/file/list_blocked", "LBRY's blocked-outpoints API",
      "blocklist"),
    S("blocklist_interval", "float", 43200.0, "seconds between blocklist refreshes", "blocklist", range=POSITIVE),
    S("blocklist_delete", "bool", False, "delete the blobs of blocked streams from storage and caches",
      "blocklist"),
    S("wallet_servers", "list", LBRY_WALLET_SERVERS, "LBRY wallet servers (host:port) for claim lookups",
      "blocklist"),
    S("wallet_timeout", "float", 10.0, "seconds to wait for a wallet server's reply (reflector.go: 1 s)", "blocklist",
      range=POSITIVE),
    S("blocklist_timeout", "float", 300.0, "seconds one refresh of LBRY's blocklist may take in all", "blocklist",
      range=POSITIVE),
    S("lbrycrd_url", "str", "http://127.0.0.1:9245",
      "lbrycrd JSON-RPC URL for `prism publish`, http://USER:PASSWORD@HOST:PORT (put it in the secrets file)",
      "publish", flag="", secret=True),
    S("protected_content_url", "str", "https://api.odysee.com/file/list_protected",
      "list of protected sd hashes; empty = nothing is protected", "protected"),
    S("protected_fail_closed", "bool", False,
      "refuse protected-capable downloads when the list cannot be fetched (reflector.go fails open)",
      "protected"),
    S("protected_content_timeout", "float", 10.0,
      "seconds to wait for the protected content list (reflector.go waits forever)", "protected", range=POSITIVE),
]
del S

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


class ConfigError(ValueError):
    """A config file or a value that cannot be used; the message is one line for the operator."""


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "t", "true", "yes", "on"):
        return True
    if text in ("0", "f", "false", "no", "off", ""):
        return False
    raise ConfigError(f"invalid boolean {value!r}")


def convert(setting: Setting, value: Any) -> Any:
    """Convert a file or flag value to the setting's type (ConfigError on failure)."""
    if value is None:
        return None
    try:
        if setting.type == "bool":
            return parse_bool(value)
        if setting.type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if setting.type == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if setting.type == "list":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        allowed = f": allowed {setting.range}" if setting.range else ""
        raise ConfigError(f"{setting.key}: invalid {setting.type} value {value!r}{allowed}") from None


def load_file(path: str) -> dict[str, Any]:
    """Read a config file: TOML (the appliance's) or JSON (reflector.go's config.json)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.endswith(".json") or raw.lstrip().startswith(b"{"):
            values = json.loads(raw)
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: the config must be a JSON object")
        else:
            values = tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if values.get("secrets_file"):
        values = {**values, **_load_secrets(os.path.join(os.path.dirname(path), str(values["secrets_file"])))}
    return values


def _load_secrets(path: str) -> dict[str, Any]:
    """A secrets file's values (TOML), to merge over the config file's; a missing file means none."""
    try:
        with open(path, "rb") as f:
            values = tomllib.loads(f.read().decode())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read secrets file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse secrets file {path}: {exc}") from None
    values.pop("secrets_file", None)  # no chains of secrets files
    return values


@dataclass
class Config:
    """Resolved settings; attribute access by key (`config.tcp_peer_port`)."""

    values: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    unknown_keys: list[str] = field(default_factory=list)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def public(self) -> dict[str, Any]:
        """The values with secrets masked (and the userinfo of any URL or DSN), for `appliancectl status`."""
        return {k: (redact.MASK if BY_KEY[k].secret and v else redact.value(v)) for k, v in self.values.items()
                if k in BY_KEY}

    def secret_values(self) -> list[str]:
        """The values of the secret settings that are set (a built-in default is no secret), to mask in logs."""
        return [v for k, v in self.values.items() if k in BY_KEY and BY_KEY[k].secret and isinstance(v, str) and v
                and v != BY_KEY[k].default]


def resolve(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            path: str | None = None) -> Config:
    """Defaults, then the file's values, then explicit overrides (from flags)."""
    values = {s.key: s.default for s in SETTINGS}
    unknown = []
    for key, value in (file_values or {}).items():
        setting = BY_KEY.get(key)
        if setting is None:
            unknown.append(key)  # reflector.go ignores unknown keys; we say so once
            continue
        values[key] = convert(setting, value)
    for key, value in (overrides or {}).items():
        values[key] = convert(BY_KEY[key], value)
    for key, value in values.items():
        validate(BY_KEY[key], value)
    return Config(values, path, unknown)


def validate(setting: Setting, value: Any) -> None:
    """ConfigError (one line naming the setting and what it allows) for a converted value out of range."""
    if value is None:
        return
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{setting.key}: {value!r} is not one of {', '.join(setting.choices)}")
    if setting.range is not None and value not in setting.range:
        raise ConfigError(f"{setting.key} = {value!r} is out of range: allowed {setting.range}")
    if setting.check is not None:
        allowed = setting.check(value)
        if allowed:
            raise ConfigError(f"{setting.key} = {value!r} is not valid: allowed {allowed}")


# --- argparse glue -------------------------------------------------------------------------------------

class _BoolFlag(argparse.Action):
    """--flag, --flag=true, --flag=false (reflector.go's README uses the latter two forms)."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_bool(values))
        except ConfigError as exc:
            parser.error(f"{option_string}: {exc}")


def add_flags(parser: argparse.ArgumentParser, keys: list[str]) -> None:
    """Add the flags of these settings; unset flags stay absent from the namespace (argparse.SUPPRESS)."""
    for key in keys:
        s = BY_KEY[key]
        name = s.flag_name
        if name is None:
            continue
        shown = ",".join(s.default) if isinstance(s.default, list) else s.default
        help_text = f"{s.help} (default: {shown!r})" if s.default not in (None, "", []) else s.help
        if s.type == "bool":
            parser.add_argument(name, dest=key, action=_BoolFlag, default=argparse.SUPPRESS, metavar="BOOL",
                                help=help_text)
        else:
            parser.add_argument(name, dest=key, default=argparse.SUPPRESS, help=help_text,
                                metavar=s.type.upper(), choices=s.choices or None)


def overrides_from_args(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def default_workers() -> int:
    return min(os.cpu_count() or 1, MAX_WORKERS)


def worker_count(config: Config) -> int:
    """The number of workers to run: the `workers` setting, or one per core when it is 0."""
    return config.workers if config.workers > 0 else default_workers()
