"""What every `prism` command shares: config loading, exit codes, one-line errors, progress bars."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable

from appliance import config as cfg

log = logging.getLogger("prism")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """An expected failure: printed as one line `prism: <message>` and exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def load_config(args: argparse.Namespace, overrides: dict | None = None) -> cfg.Config:
    """Resolve the config: --conf (default config.json; 'none' disables) plus explicit flag values."""
    conf = getattr(args, "conf", None)
    explicit = conf is not None
    path = conf if explicit else "config.json"
    if path == "":
        raise CommandError("--conf flag required")
    file_values: dict = {}
    used_path = None
    if path != "none":
        if not explicit and not os.path.exists(path):
            log.info("no %s here: running with built-in defaults (use --conf FILE to load one)", path)
        else:
            try:
                file_values = cfg.load_file(path)
            except cfg.ConfigError as exc:
                raise CommandError(str(exc)) from None
            used_path = os.path.abspath(path)
    try:
        config = cfg.resolve(file_values, overrides, used_path)
    except cfg.ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    from appliance import logs

    logs.hide(config.secret_values())
    if config.unknown_keys:
        log.warning("config %s: ignoring unknown keys: %s", path, ", ".join(sorted(config.unknown_keys)))
    return config


def set_up_supervisor(config: cfg.Config, reload_config: Callable[[], cfg.Config], components: list[str]):
    """A Supervisor for `config` with its sockets and runtime directory set up (a CommandError, one line, when
    they cannot be); a HUP switches to what `reload_config` returns."""
    from appliance.supervisor import Supervisor, SupervisorError

    supervisor = Supervisor(config, reload_config, components)
    try:
        supervisor.setup()
    except SupervisorError as exc:
        supervisor.shutdown()
        raise CommandError(str(exc)) from None
    return supervisor


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`1 blob`, `2 blobs`, `0 blobs` (`plural_form` for irregular words)."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def parse_address(value: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` (or `host` when a default port exists) -> (host, port); CommandError on bad input."""
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise CommandError(f"invalid address {value!r}: expected HOST:PORT", EXIT_USAGE)
        return value, default_port
    try:
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise CommandError(f"invalid port in {value!r}", EXIT_USAGE) from None
    return host.strip("[]") or "127.0.0.1", number


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             unit_scale: bool = False):
    """A tqdm bar on a terminal, silent in scripts (stderr not a TTY)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                disable=not sys.stderr.isatty(), leave=False, file=sys.stderr)
