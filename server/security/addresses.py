"""Who is on the other end: the client address behind trusted proxies.

Behind a load balancer every request comes from the balancer. ``X-Forwarded-For`` names the
client, but anyone can send that header, so it is read only when the request comes from a
configured trusted proxy (``KEYUN_TRUSTED_PROXIES``), and then from the right: each trusted
hop appends the address it saw, so the first address from the right that is not a trusted
proxy is the client. Rate limits, lockouts, the audit trail and the logs use this address.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``10.0.0.0/8, 127.0.0.1`` → networks; ValueError naming a bad entry."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {part!r}") from None
    return tuple(networks)


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether an address lies in one of the networks (an invalid address lies in none).
    Remembered for the last few thousand addresses: every request asks about its peer."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(remote: str, forwarded_for: str, trusted: tuple[Network, ...]) -> str:
    """The client's address: ``remote`` unless it is a trusted proxy, then the first
    address of ``X-Forwarded-For`` from the right that is not one."""
    if not trusted or not in_networks(remote, trusted):
        return remote
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if in_networks(hop, trusted):
            continue
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            return remote  # a proxy we trust never writes this: do not believe the rest
    return remote
