"""`--disk-cache SIZE:PATH:MANAGER`, parsed exactly as reflector.go parses it (spec §1.3).

The only departure: the result keeps the size in bytes; reflector.go turns it into "2 MiB slots".
"""
from __future__ import annotations

from dataclasses import dataclass

MANAGERS = ("localdb", "lfu", "arc", "lru", "simple")  # reflector.go's list; its README's "lfuda" is not in it
EXPECTED_FORMAT = ("Expected format: 'sizeGB:CACHE_PATH:cachemanager' for example: "
                   "'100GB:/tmp/downloaded_blobs:localdb'")

_MAX_SIZE = (1 << 64) - 1  # reflector.go parses into a uint64
_UNITS: dict[str, int] = {}
for _power, _names in enumerate((
        ("", "b", "byte"),
        ("k", "kb", "kib", "kilo", "kilobyte", "kilobytes"),
        ("m", "mb", "mib", "mega", "megabyte", "megabytes"),
        ("g", "gb", "gib", "giga", "gigabyte", "gigabytes"),
        ("t", "tb", "tib", "tera", "terabyte", "terabytes"),
        ("p", "pb", "pib", "peta", "petabyte", "petabytes"),
        ("e", "eb", "eib", "exa", "exabyte", "exabytes"))):
    for _name in _names:
        _UNITS[_name] = 1024 ** _power
_BIT_UNITS = ("Kb", "Mb", "Gb", "Tb", "Pb", "Eb")  # checked before lower-casing, as reflector.go does


class DiskCacheSpecError(ValueError):
    """A --disk-cache value that cannot be used; the message is one line."""


@dataclass(frozen=True)
class DiskCacheSpec:
    size_bytes: int
    path: str
    manager: str


def parse_size(text: str) -> int:
    """Digits, then an optional binary unit (1 KB = 1024 bytes); ValueError on anything else."""
    digits = 0
    while digits < len(text) and "0" <= text[digits] <= "9":
        digits += 1
    if digits == 0 and text:
        raise ValueError(f"invalid size {text!r}: it must start with a number")
    value = int(text[:digits]) if digits else 0
    unit = text[digits:].strip()
    if unit in _BIT_UNITS:
        raise ValueError(f"invalid size {text!r}: {unit} is a unit of bits, not bytes (use {unit[0]}B)")
    multiplier = _UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"invalid size {text!r}: unknown unit {unit!r}")
    if value * multiplier > _MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: out of range")
    return value * multiplier


def parse_disk_cache(value: str | None) -> DiskCacheSpec | None:
    """'' (or None) -> no cache; otherwise SIZE:ABSOLUTE_PATH:MANAGER or DiskCacheSpecError."""
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 3:
        raise DiskCacheSpecError(f"disk cache {value!r} is formatted incorrectly. {EXPECTED_FORMAT}")
    size_text, path, manager = parts
    if not path.startswith("/"):
        raise DiskCacheSpecError(f"disk cache {value!r}: the path must start with '/'. {EXPECTED_FORMAT}")
    if manager not in MANAGERS:
        raise DiskCacheSpecError(f"disk cache {value!r}: cache manager {manager!r} is not supported, use one of "
                                 f"{', '.join(MANAGERS)}. {EXPECTED_FORMAT}")
    try:
        size = parse_size(size_text)
    except ValueError as exc:
        raise DiskCacheSpecError(f"disk cache {value!r}: {exc}. {EXPECTED_FORMAT}") from None
    if size <= 0:
        raise DiskCacheSpecError(f"disk cache {value!r}: the size must be more than 0. {EXPECTED_FORMAT}")
    return DiskCacheSpec(size, path, manager)
