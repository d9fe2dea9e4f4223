"""Placement and scheduling: which host gets a server, claimed atomically.

Usage is the sum of `compute_allocations` rows per host, capacity the host's
inventory times its allocation ratios. A claim runs inside the transaction
that writes the server, after a write that locks the host rows (PostgreSQL:
row locks; SQLite: the database write lock), so concurrent boots never
overcommit a host.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

from sqlalchemy import func, select, update

from stackbox.common.db import utcnow
from stackbox.common.fsutil import atomic_write
from stackbox.compute.models import Allocation, ComputeHost, Server, ServerGroup

HOST_DOWN_AFTER = dt.timedelta(seconds=60)
NO_VALID_HOST = "No valid host was found. "


class NoValidHost(Exception):
    pass


def local_host_id(data_dir: Path) -> str:
    """This host's stable identity, kept in its data dir: renaming the host
    changes only the label, never the servers or usage tied to it."""
    path = Path(data_dir) / "host_id"
    try:
        value = path.read_text().strip()
        uuid.UUID(value)
        return value
    except (FileNotFoundError, ValueError):
        value = str(uuid.uuid4())
        atomic_write(path, (value + "\n").encode())
        return value


@dataclasses.dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mb: int
    disk_gb: int
    availability_zone: str | None = None
    architecture: str | None = None
    group: ServerGroup | None = None
    force_host: str | None = None        # admin: `--host` / az "zone:host"


def host_is_up(host: ComputeHost, now: dt.datetime | None = None) -> bool:
    return not host.forced_down and (now or utcnow()) - host.heartbeat_at < HOST_DOWN_AFTER


def usage(s) -> dict[str, tuple[int, int, int, int]]:
    """host id -> (vcpus, memory_mb, disk_gb, servers) in use."""
    rows = s.execute(select(Allocation.host_id, func.sum(Allocation.vcpus),
                            func.sum(Allocation.memory_mb), func.sum(Allocation.disk_gb),
                            func.count()).group_by(Allocation.host_id))
    return {r[0]: (int(r[1] or 0), int(r[2] or 0), int(r[3] or 0), int(r[4])) for r in rows}


def capacity(host: ComputeHost) -> tuple[float, float, float]:
    return (host.vcpus * host.cpu_allocation_ratio,
            max(0, host.memory_mb - host.reserved_memory_mb) * host.ram_allocation_ratio,
            host.disk_gb * host.disk_allocation_ratio)


def _group_hosts(s, group: ServerGroup) -> set[str]:
    if not group.members:
        return set()
    return {h for h in s.scalars(select(Server.host_id).where(Server.id.in_(group.members)))
            if h}


def claim(s, server: Server, req: Request) -> str:
    """Pick a host for `server`, record its allocation and return the host id,
    or raise NoValidHost saying which filter left no host."""
    # lock: take the write lock / host row locks before reading usage
    s.execute(update(ComputeHost).values(updated_at=utcnow()))
    hosts = list(s.scalars(select(ComputeHost).order_by(ComputeHost.id)))
    now = utcnow()
    reasons = []
    candidates = [h for h in hosts if not h.disabled and host_is_up(h, now)]
    if not candidates:
        raise NoValidHost(NO_VALID_HOST + "There are no enabled compute hosts that are up.")
    if req.force_host:
        candidates = [h for h in candidates if req.force_host in (h.hostname, h.id)]
        if not candidates:
            raise NoValidHost(NO_VALID_HOST + f"Host {req.force_host} is not an enabled "
                              "compute host that is up.")
    if req.availability_zone:
        candidates = [h for h in candidates if h.availability_zone == req.availability_zone]
        if not candidates:
            reasons.append(f"no host in availability zone {req.availability_zone}")
    if req.architecture:
        candidates = [h for h in candidates if h.architecture == req.architecture]
        if not candidates:
            reasons.append(f"no host with architecture {req.architecture}")
    used = usage(s)
    fits = []
    for h in candidates:
        cpu, ram, disk = capacity(h)
        u = used.get(h.id, (0, 0, 0, 0))
        if (u[0] + req.vcpus <= cpu and u[1] + req.memory_mb <= ram
                and u[2] + req.disk_gb <= disk):
            fits.append(h)
    if candidates and not fits:
        reasons.append(f"not enough free resources for {req.vcpus} VCPU, "
                       f"{req.memory_mb} MiB RAM, {req.disk_gb} GiB disk")
    if req.group is not None and fits:
        taken = _group_hosts(s, req.group)
        if req.group.policy == "anti-affinity":
            fits = [h for h in fits if h.id not in taken]
            if not fits:
                reasons.append(f"server group {req.group.id} (anti-affinity) already has a "
                               "member on every candidate host")
        elif req.group.policy == "affinity" and taken:
            fits = [h for h in fits if h.id in taken]
            if not fits:
                reasons.append(f"server group {req.group.id} (affinity) members are on a "
                               "host that cannot take this server")
        elif req.group.policy == "soft-anti-affinity":
            fits.sort(key=lambda h: h.id in taken)
        elif req.group.policy == "soft-affinity":
            fits.sort(key=lambda h: h.id not in taken)
    if not fits:
        raise NoValidHost(NO_VALID_HOST + "There are not enough hosts available: "
                          + "; ".join(reasons or ["no host passed the filters"]) + ".")
    if req.group is None or req.group.policy not in ("soft-affinity", "soft-anti-affinity"):
        # spread: the host with the most free RAM first
        fits.sort(key=lambda h: -(capacity(h)[1] - used.get(h.id, (0, 0, 0, 0))[1]))
    host = fits[0]
    s.add(Allocation(server_id=server.id, host_id=host.id, vcpus=req.vcpus,
                     memory_mb=req.memory_mb, disk_gb=req.disk_gb))
    server.host_id = host.id
    server.availability_zone = host.availability_zone
    return host.id


def release(s, server_id: str) -> None:
    row = s.get(Allocation, server_id)
    if row is not None:
        s.delete(row)


def resize_allocation(s, server_id: str, *, vcpus: int, memory_mb: int, disk_gb: int) -> None:
    """Grow/shrink a server's claim on its host, checking capacity (resize
    keeps the server on its host)."""
    s.execute(update(ComputeHost).values(updated_at=utcnow()))
    row = s.get(Allocation, server_id)
    host = s.get(ComputeHost, row.host_id)
    used = usage(s).get(host.id, (0, 0, 0, 0))
    cpu, ram, disk = capacity(host)
    if (used[0] - row.vcpus + vcpus > cpu or used[1] - row.memory_mb + memory_mb > ram
            or used[2] - row.disk_gb + disk_gb > disk):
        raise NoValidHost(NO_VALID_HOST + f"Host {host.hostname} has not enough free "
                          "resources for the new flavor.")
    row.vcpus, row.memory_mb, row.disk_gb = vcpus, memory_mb, disk_gb
