"""What a running appliance exposes and whom it contacts: the first lines `prism reflector` logs.

Each line names the setting and flag that change it, so a user of the quick start (scripts/run, loopback
only) sees how to open it up, and an operator sees at a glance what a config exposes.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from appliance.config import Config


def listeners(config: Config) -> list[str]:
    """`PORT/PROTO (what)` for every listener this config opens."""
    out = []
    if config.receiver_port and not config.disable_uploads:
        out.append(f"{config.receiver_port}/tcp uploads")
    for key, what in (("tcp_peer_port", "TCP peer"), ("http_peer_port", "HTTP")):
        if config.values[key]:
            out.append(f"{config.values[key]}/tcp {what}")
    if config.http3_peer_port and not config.disable_http3:
        out.append(f"{config.http3_peer_port}/udp HTTP/3")
    if not config.disable_dht:
        peer_port = config.dht_peer_port or config.tcp_peer_port
        out.append(f"{config.dht_port}/udp DHT (+{peer_port}/udp pings)")
    if config.metrics_port:
        out.append(f"{config.metrics_port}/tcp metrics")
    return out


def _host(url: str) -> str:
    """host[:port] of a URL, never its userinfo (a password may be in it)."""
    return urlsplit(url).netloc.rpartition("@")[2] or url


def outside_contacts(config: Config) -> list[str]:
    """The remote hosts this config makes the appliance contact, each with the setting that turns it off."""
    out = []
    if not config.disable_dht and config.dht_seeds:
        out.append(f"DHT seeds {','.join(config.dht_seeds)} (dht_seeds = [] or --disable-dht to stop)")
    if not config.disable_blocklist:
        source = (config.blocklist_source or "").strip()
        if source == "lbry":
            hosts = ",".join([_host(config.blocklist_url), *config.wallet_servers])
            out.append(f"LBRY blocklist {hosts} (--disable-blocklist to stop)")
        elif source.startswith(("http://", "https://")):
            out.append(f"blocklist {_host(source)} (--disable-blocklist to stop)")
    if config.protected_content_url:
        out.append(f"protected-content list {_host(config.protected_content_url)} "
                   "(protected_content_url = \"\" to stop)")
    if config.upstream_reflector:
        out.append(f"upstream reflector {config.upstream_reflector}")
    for key in ("origin_endpoint", "origin_endpoint_fallback", "s3_endpoint"):
        if config.values[key]:
            out.append(f"{key} {_host(config.values[key])}")
    if config.bucket_name and not config.s3_endpoint:
        out.append(f"S3 bucket {config.bucket_name} (AWS)")
    if config.use_db and config.db_conn:
        host = config.db_conn.partition("@")[2].partition(")")[0].removeprefix("tcp(") or "the database"
        out.append(f"MySQL {host}")
    return out


def summary(config: Config) -> list[str]:
    """Two lines: where the appliance listens, and which outside hosts it contacts."""
    ports = ", ".join(listeners(config)) or "nothing"
    if config.listen_address:
        where = (f"listening on {config.listen_address} only: {ports}; to listen on every interface set "
                 "listen_address = \"\" (--listen-address 0.0.0.0)")
    else:
        where = (f"listening on every interface: {ports}; to keep it on this machine set "
                 "listen_address = \"127.0.0.1\" (--listen-address 127.0.0.1)")
    contacts = outside_contacts(config)
    if contacts:
        reach = "contacting: " + "; ".join(contacts)
    else:
        reach = ("contacting no outside host: no DHT seeds (dht_seeds, --dht-seeds HOST:PORT), no blocklist "
                 "(disable_blocklist, --disable-blocklist=false), no protected-content list "
                 "(protected_content_url, --protected-content-url URL)")
    return [where, reach]
