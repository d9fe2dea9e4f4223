"""Address arithmetic for subnets: pure functions, no database.

The database half of IPAM (never one address twice) is the primary key of
`network_ip_allocations`; the service retries a create whose chosen address
was taken by a concurrent request in the meantime.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import socket
from typing import Iterable, Iterator

from stackbox.network import errors

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_cidr(raw, *, field: str = "cidr", version: int | None = None) -> Net:
    try:
        net = ipaddress.ip_network(str(raw), strict=False)
    except ValueError:
        raise errors.InvalidInput(f"Invalid input for {field}. Reason: '{raw}' is not a "
                                  f"valid IP subnet (example: 10.0.0.0/24).", field=field)
    if str(net) != str(raw) and str(raw) != str(net.network_address):
        raise errors.InvalidInput(f"Invalid input for {field}. Reason: '{raw}' isn't a "
                                  f"recommended CIDR, use {net} instead.", field=field)
    if version is not None and net.version != version:
        raise errors.InvalidInput(f"Invalid input for {field}. Reason: {raw} is not an "
                                  f"IPv{version} subnet (ip_version is {version}).",
                                  field=field)
    if net.version == 4 and net.prefixlen > 30 or net.version == 6 and net.prefixlen > 126:
        raise errors.InvalidInput(f"Invalid input for {field}. Reason: the prefix of {net} "
                                  f"is too long to hold any host address.", field=field)
    return net


def parse_ip(raw, *, field: str) -> Addr:
    try:
        return ipaddress.ip_address(str(raw))
    except ValueError:
        raise errors.InvalidInput(f"Invalid input for {field}. Reason: '{raw}' is not a "
                                  f"valid IP address.", field=field)


def first_host(net: Net) -> Addr:
    return net.network_address + 1


def last_host(net: Net) -> Addr:
    # IPv4 keeps the broadcast address out; IPv6 has none but Neutron keeps
    # the last address out too.
    return net.broadcast_address - 1 if net.version == 4 else net.broadcast_address


def usable(net: Net, ip: Addr) -> bool:
    return ip in net and first_host(net) <= ip <= last_host(net)


def default_pools(net: Net, gateway: Addr | None) -> list[tuple[str, str]]:
    """Everything usable except the gateway, as Neutron computes it."""
    lo, hi = first_host(net), last_host(net)
    if gateway is None or not (lo <= gateway <= hi):
        return [(str(lo), str(hi))]
    pools = []
    if gateway > lo:
        pools.append((str(lo), str(gateway - 1)))
    if gateway < hi:
        pools.append((str(gateway + 1), str(hi)))
    return pools


def validate_pools(net: Net, raw: Iterable[tuple[str, str]],
                   gateway: Addr | None) -> list[tuple[str, str]]:
    """Pools inside the cidr's usable range, start <= end, no overlaps,
    not containing the gateway."""
    spans = []
    for start_raw, end_raw in raw:
        start = parse_ip(start_raw, field="allocation_pools")
        end = parse_ip(end_raw, field="allocation_pools")
        if start.version != net.version or end.version != net.version:
            raise errors.InvalidAllocationPool(
                f"Invalid input for allocation_pools. Reason: The allocation pool "
                f" {start_raw}-{end_raw} is not of the subnet's IP "
                f"version {net.version}.", field="allocation_pools")
        if not (usable(net, start) and usable(net, end)):
            raise errors.InvalidAllocationPool(
                f"Invalid input for allocation_pools. Reason: The allocation pool "
                f" {start_raw}-{end_raw} spans beyond the subnet cidr "
                f"{net} (usable: {first_host(net)}-{last_host(net)}).",
                field="allocation_pools")
        if start > end:
            raise errors.InvalidAllocationPool(
                f"Invalid input for allocation_pools. Reason: The allocation pool "
                f" {start_raw}-{end_raw} starts after it ends.",
                field="allocation_pools")
        spans.append((start, end))
    spans.sort()
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 <= a1:
            raise errors.InvalidAllocationPool(
                f"Invalid input for allocation_pools. Reason: "
                f"Found overlapping allocation pools: {a0}-{a1} and {b0}-{b1}.",
                field="allocation_pools")
    if gateway is not None:
        for start, end in spans:
            if start <= gateway <= end:
                raise errors.GatewayConflictWithAllocationPools(
                    f"Invalid input for gateway_ip. Reason: Gateway ip {gateway} "
                    f"conflicts with allocation pool {start}-{end}.",
                    field="gateway_ip")
    return [(str(a), str(b)) for a, b in spans]


def in_pools(pools: Iterable[tuple[str, str]], ip: Addr) -> bool:
    return any(ipaddress.ip_address(a) <= ip <= ipaddress.ip_address(b) for a, b in pools)


def _int(addr: str) -> int:
    if ":" in addr:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
    return int.from_bytes(socket.inet_aton(addr), "big")


def _str(value: int, version: int) -> str:
    if version == 4:
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def free_addresses(pools: Iterable[tuple[str, str]], used: set[str]) -> Iterator[str]:
    """Free addresses in pool order (lowest first). Plain integers and the
    socket module in the loop, not ipaddress objects: a network with
    thousands of ports walks past them on every create."""
    taken = {_int(u) for u in used}
    for start, end in pools:
        version = 6 if ":" in start else 4
        for i in range(_int(start), _int(end) + 1):
            if i not in taken:
                yield _str(i, version)


def pick(pools, used: set[str], *, attempt: int, spread: int = 32) -> str | None:
    """The lowest free address on a first attempt; after a collision with a
    concurrent create, one of the first `spread` free ones, so that racing
    requests stop choosing the same address."""
    window = list(itertools.islice(free_addresses(pools, used), 1 if attempt == 0 else spread))
    if not window:
        return None
    return window[0] if attempt == 0 else random.choice(window)


def overlaps(net: Net, others: Iterable[str]) -> str | None:
    for other in others:
        o = ipaddress.ip_network(other)
        if o.version == net.version and net.overlaps(o):
            return other
    return None


def pool_size(pools: Iterable[tuple[str, str]]) -> int:
    return sum(int(ipaddress.ip_address(b)) - int(ipaddress.ip_address(a)) + 1
               for a, b in pools)
