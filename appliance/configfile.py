"""The commented config file and secrets example, rendered from appliance/config.py's SETTINGS table.

    python -m appliance.configfile [--service | --quick-start]   print the config (--service: the installed
                                                 appliance's; --quick-start: scripts/run's, loopback only)
    python -m appliance.configfile --secrets     print the secrets example
    python -m appliance.configfile --update      rewrite config/reflector-appliance.toml, config/quick-start.toml
                                                 and config/secrets.toml.example in this checkout
    python -m appliance.configfile --check FILE  validate a config file (and its secrets file); exit 1 if bad
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from appliance import config as cfg

SERVICE_CONFIG = "/etc/reflector-appliance/config.toml"
SERVICE_SECRETS = "/etc/reflector-appliance/secrets.toml"

# The installed appliance's directories: the ones its systemd unit creates (StateDirectory= etc.).
SERVICE_PROFILE: dict[str, Any] = {
    "storage_dir": "/var/lib/reflector-appliance/blobs",
    "state_dir": "/var/lib/reflector-appliance/state",
    "cache_dir": "/var/cache/reflector-appliance",
    "runtime_dir": "/run/reflector-appliance",
    "secrets_file": SERVICE_SECRETS,
    # What the service exposes and whom it contacts, stated rather than left to the defaults: a service
    # joins LBRY's network as reflector.go does (all interfaces, LBRY's DHT seeds, blocklist and
    # protected-content list). Narrow any of them here.
    "listen_address": "",
    "dht_seeds": cfg.LBRY_DHT_SEEDS,
    "disable_blocklist": False,
    "protected_content_url": cfg.BY_KEY["protected_content_url"].default,
}

# scripts/run's profile: a standalone reflector that stays on this machine. Every listener (TCP, HTTP/3
# and DHT udp, metrics) on 127.0.0.1; no DHT seeds, no LBRY blocklist, no protected-content list, so no
# outside host is contacted. Paths stay relative to the checkout (scripts/run runs from its root).
QUICK_START_PROFILE: dict[str, Any] = {
    "listen_address": "127.0.0.1",
    "dht_seeds": [],
    "disable_blocklist": True,
    "protected_content_url": "",
    "use_db": False,  # no MySQL: blobs and streams are tracked on local storage
}

GROUP_TITLES = {
    "storage": "S3 storage (reflector.go config.json keys)",
    "database": "MySQL",
    "logging": "Logging",
    "compat": "reflector.go compatibility (accepted, ignored)",
    "ports": "Ports",
    "reflector": "Reflector behaviour",
    "origin": "Origin: upstream reflector or HTTP origin endpoint",
    "cache": "Caches",
    "appliance": "Appliance: processes, directories, timeouts",
    "http3": "HTTP/3",
    "dht": "DHT",
    "blocklist": "Blocklist",
    "protected": "Protected content",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
DIST_CONFIG = REPO_ROOT / "config" / "reflector-appliance.toml"
DIST_SECRETS = REPO_ROOT / "config" / "secrets.toml.example"
DIST_QUICK_START = REPO_ROOT / "config" / "quick-start.toml"
PROFILE_TITLES = {"service": ("installed service", " --service"), "quick-start": ("quick start", " --quick-start")}
PROFILE_NOTES = {
    "service": [
        "# This profile states what the service exposes and whom it contacts: as reflector.go, it listens on",
        "# every interface and contacts LBRY's DHT seeds, blocklist API and protected-content list.",
    ],
    "quick-start": [
        "# scripts/run's profile: every listener (TCP, UDP, metrics) on 127.0.0.1, and no outside host contacted",
        "# (no DHT seeds, no LBRY blocklist, no protected-content list). To open it up, set or pass:",
        '#   listen_address = ""  (--listen-address 0.0.0.0)  listen on every interface',
        "#   dht_seeds = [...]     (--dht-seeds HOST:PORT,...)  join a DHT (LBRY's: lbrynet1..4.lbry.com:4444)",
        "#   disable_blocklist = false  (--disable-blocklist=false)  apply LBRY's blocklist (api.lbry.com)",
        '#   protected_content_url = "https://api.odysee.com/file/list_protected"  (--protected-content-url URL)',
    ],
}
REGENERATE = ".venv/bin/python -m appliance.configfile --update"


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value (str, int, float, bool or list of str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _setting_lines(setting: cfg.Setting, value: Any, active: bool) -> list[str]:
    flag = f" [{setting.flag_name}]" if setting.flag_name else ""
    allowed = f" (allowed: {setting.range})" if setting.range else ""
    lines = [f"# {setting.help}{allowed}{flag}"]
    if value is None:
        lines.append(f"# {setting.key} = (unset)")
    elif active:
        lines.append(f"{setting.key} = {toml_value(value)}")
    else:
        lines.append(f"# {setting.key} = {toml_value(value)}")
    return lines


def _groups() -> dict[str, list[cfg.Setting]]:
    groups: dict[str, list[cfg.Setting]] = {}
    for setting in cfg.SETTINGS:
        groups.setdefault(setting.group, []).append(setting)
    return groups


def render_config(profile: dict[str, Any] | None = None, name: str = "service") -> str:
    """The commented config: every non-secret setting with its default; `profile` values are set for real.

    `name` ("service" or "quick-start") titles a profiled config."""
    profile = profile or {}
    title, option = PROFILE_TITLES[name] if profile else ("", "")
    unknown = set(profile) - set(cfg.BY_KEY)
    if unknown:
        raise ValueError(f"profile sets unknown settings: {', '.join(sorted(unknown))}")
    secret_keys = [s.key for s in cfg.SETTINGS if s.secret]
    out = [
        "# reflector-appliance configuration" + (f" ({title})" if title else ""),
        "#",
        f"# Generated from appliance/config.py by `python -m appliance.configfile{option}`.",
        "# A commented line `# key = value` shows the built-in default: uncomment it to change the value.",
        "# Precedence: built-in defaults < this file < secrets_file < command-line flags.",
        f"# Secret settings ({', '.join(secret_keys)}) belong in secrets_file, not here.",
        "# reflector.go's config.json is accepted too (--conf config.json): its keys are the same settings.",
    ]
    if profile:
        out += ["#", *PROFILE_NOTES[name]]
    for group, settings in _groups().items():
        visible = [s for s in settings if not s.secret]
        if not visible:
            continue
        out += ["", f"# === {GROUP_TITLES.get(group, group)} ==="]
        for setting in visible:
            out.append("")
            if setting.key in profile:
                out += _setting_lines(setting, profile[setting.key], active=True)
            else:
                out += _setting_lines(setting, setting.default, active=False)
    return "\n".join(out) + "\n"


def render_secrets_example() -> str:
    """The secrets file example: every secret setting, commented out, with its help."""
    out = [
        "# reflector-appliance secrets: merged over the config file's values (its secrets_file setting).",
        "# Keep this file readable only by root and the service: mode 0640, owner root, group reflector.",
        "#",
        "# Generated from appliance/config.py by `python -m appliance.configfile --secrets`.",
    ]
    for setting in cfg.SETTINGS:
        if setting.secret:
            out.append("")
            out += _setting_lines(setting, setting.default, active=False)
    return "\n".join(out) + "\n"


def check_file(path: str) -> list[str]:
    """Problems that make this config file unusable (empty list = fine); warnings go to stderr."""
    try:
        values = cfg.load_file(path)
        config = cfg.resolve(values, path=path)
    except cfg.ConfigError as exc:
        return [str(exc)]
    problems = []
    if config.unknown_keys:
        problems.append(f"{path}: unknown settings: {', '.join(sorted(config.unknown_keys))}")
    if config.secrets_file:
        secrets = os.path.join(os.path.dirname(path), config.secrets_file)
        try:
            mode = os.stat(secrets).st_mode
        except FileNotFoundError:
            mode = 0
        if mode & stat.S_IROTH:
            print(f"warning: {secrets} is readable by every user; chmod 0640 it", file=sys.stderr)
    return problems


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.configfile", allow_abbrev=False,
                                     description="Render or check the appliance's config file.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--service", action="store_true", help="the installed service's profile (/var/lib, /run, ...)")
    what.add_argument("--quick-start", action="store_true",
                      help="scripts/run's profile: listens on 127.0.0.1 only, contacts no outside host")
    what.add_argument("--secrets", action="store_true", help="print the secrets file example")
    what.add_argument("--update", action="store_true", help="rewrite the generated files under config/")
    what.add_argument("--check", metavar="FILE", help="validate FILE; exit 1 with the problems")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_file(args.check)
        for problem in problems:
            print(f"configfile: {problem}", file=sys.stderr)
        if not problems:
            print(f"{args.check}: OK")
        return 1 if problems else 0
    if args.update:
        if not DIST_CONFIG.parent.is_dir():
            print("configfile: --update works in a checkout (no config/ directory beside appliance/)",
                  file=sys.stderr)
            return 1
        written = [(DIST_CONFIG, render_config(SERVICE_PROFILE)),
                   (DIST_QUICK_START, render_config(QUICK_START_PROFILE, "quick-start")),
                   (DIST_SECRETS, render_secrets_example())]
        for path, text in written:
            write_atomic(path, text)
        print("wrote " + ", ".join(str(path.relative_to(REPO_ROOT)) for path, _ in written))
        return 0
    if args.secrets:
        sys.stdout.write(render_secrets_example())
    elif args.quick_start:
        sys.stdout.write(render_config(QUICK_START_PROFILE, "quick-start"))
    else:
        sys.stdout.write(render_config(SERVICE_PROFILE if args.service else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
