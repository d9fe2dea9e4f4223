"""Checked values for the text we hand to nft, dnsmasq and ip: anything
from the desired state is parsed and re-printed here first, so a bad value
raises instead of changing the meaning of a rule set or a config file."""

from __future__ import annotations

import ipaddress
import re

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTLABEL = re.compile(r"[^a-z0-9-]+")


def ifname(name: str) -> str:
    if not _IFNAME.match(name or ""):
        raise ValueError(f"not a usable interface name: {name!r}")
    return name


def mac(value: str) -> str:
    v = (value or "").lower()
    if not _MAC.match(v):
        raise ValueError(f"not a MAC address: {value!r}")
    return v


def ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


def net(value: str) -> str:
    """An address or a prefix, normalised ('10.0.0.5/32' -> '10.0.0.5')."""
    n = ipaddress.ip_network(value, strict=False)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return str(n)


def version(value: str) -> int:
    return ipaddress.ip_network(value, strict=False).version


def hostname(value: str) -> str:
    """A DNS label dnsmasq will accept ('' when nothing usable is left)."""
    label = _HOSTLABEL.sub("-", (value or "").lower().split(".")[0]).strip("-")
    return label[:63]


def short(resource_id: str, n: int = 8) -> str:
    s = re.sub(r"[^A-Za-z0-9]", "", resource_id)[:n]
    if not s:
        raise ValueError(f"not a usable resource id: {resource_id!r}")
    return s


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


def safe_id(resource_id: str) -> str:
    """A resource id usable as a file name."""
    if not _SAFE_ID.match(resource_id or ""):
        raise ValueError(f"not a usable resource id: {resource_id!r}")
    return resource_id
