"""Which contact and peer addresses the node accepts (setting `dht_address_policy`).

- `any` (default): every unicast IPv4 address with a non-zero port, loopback and private ranges
  included, so a node on a LAN or on 127.0.0.1 (tests, one-host setups) works. 0.0.0.0, multicast
  and broadcast addresses are never accepted: nothing can be reached there.
- `public`: what stock SDK nodes accept (no ALLOW_LOCALHOST): globally routable addresses and ports
  from 1024 up. For a node on the public Internet that must not probe or hand out private addresses.
"""
from __future__ import annotations

import ipaddress

POLICIES = ("any", "public")


def usable(ip: str, port: int, policy: str = "any") -> bool:
    """True when (ip, port) may be stored, returned to others or contacted under `policy`."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    if not 0 < port < 65536 or address.is_unspecified or address.is_multicast:
        return False
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return False
    if policy == "public":
        return address.is_global and port >= 1024
    return True
