"""`prism reflector`: run the appliance (supervisor, workers, cache manager, DHT, HTTP/3)."""
from __future__ import annotations

import argparse
import os

from appliance import config as cfg
from appliance.cli.common import CommandError, load_config, set_up_supervisor

# reflector.go's flags of `prism reflector` first, then the appliance's own.
FLAGS = [s.key for s in cfg.SETTINGS if s.flag != "" and s.group not in ("compat",)]


def run(args: argparse.Namespace) -> int:
    overrides = cfg.overrides_from_args(args, FLAGS)
    config = load_config(args, overrides)
    from appliance import logs
    from appliance.cli.prism import verbose_components

    if config.log_file:  # the supervisor's own lines go to --log-file too, as its children's do
        logs.setup("prism", verbose_components(args), config.log_file)
    check(config)

    def reload_config() -> cfg.Config:
        new = load_config(args, overrides)
        check(new)  # a bad edit is refused by HUP as it is at start, and the running config stays
        return new

    supervisor = set_up_supervisor(config, reload_config, verbose_components(args))
    # Notes come after the checks, so a failed start prints its one error line and nothing else.
    from appliance.cli.exposure import summary

    for line in summary(config):
        _note_once(line)
    if config.use_db and not config.db_conn:
        _note_once("use_db is on but no db_conn is configured: running without a database")
    for key in ("update_bin_url", "update_cmd"):
        if config.values.get(key):
            _note_once(f"{key} is ignored: the appliance is updated by its package, not by itself")
    return supervisor.run()


def check(config: cfg.Config) -> None:
    """Settings that would make every child fail: one line here (exit 2) rather than a boot error in each."""
    from appliance.stores.compose import CompositionError, disk_cache_specs

    try:
        disk_cache_specs(config)
        if config.upstream_reflector and config.upstream_protocol not in ("tcp", "http", "http3"):
            raise CompositionError(f"protocol is not recognized: {config.upstream_protocol}")
    except CompositionError as exc:
        raise CommandError(str(exc), 2) from None


def _note_once(message: str) -> None:
    import logging

    logging.getLogger("prism").info("%s", message)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reflector", help="run the reflector appliance (blob server, blob cache, receiver)",
        description="Run the appliance: a supervisor with gevent workers serving the reflector upload "
                    "protocol, the TCP peer protocol and HTTP on shared SO_REUSEPORT sockets, a disk-cache "
                    "manager, a DHT node and an HTTP/3 server. With no upstream, S3 or database configured it "
                    "is a standalone reflector on local storage (--storage-dir).")
    cfg.add_flags(p, FLAGS)
    p.set_defaults(run=run)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
