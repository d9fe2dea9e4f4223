"""What every part of the network service shares: visibility, loading
related rows in batches, quotas, retries, standard-attribute bookkeeping."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from stackbox.common.db import Database, advisory_lock, utcnow
from stackbox.common.errors import QuotaExceeded
from stackbox.common.http.context import RequestContext
from stackbox.network import errors
from stackbox.network.models import (FloatingIp, IpAllocation, Network, Port, PortSecurityGroup,
                                     Quota, Router, SecurityGroup, SecurityGroupRule, Subnet)

log = logging.getLogger("stackbox.network")
T = TypeVar("T")

DEFAULT_QUOTAS = {"network": 100, "subnet": 100, "port": 500, "router": 10,
                  "floatingip": 50, "security_group": 10, "security_group_rule": 100,
                  "subnetpool": -1, "rbac_policy": 10}
QUOTA_MODELS = {"network": Network, "subnet": Subnet, "port": Port, "router": Router,
                "floatingip": FloatingIp, "security_group": SecurityGroup,
                "security_group_rule": SecurityGroupRule}
RETRIES = 25


class Retry(Exception):
    """Raised inside a transaction to start it again (a concurrent writer won)."""


class ServiceBase:
    def __init__(self, db: Database, settings):
        self.db = db
        self.settings = settings
        self.net_settings = settings.network

    # -- transactions -----------------------------------------------------------
    def _retrying(self, fn: Callable[..., T], *, on_exhausted: Exception | None = None) -> T:
        """Run fn(session, attempt) in a transaction, again when a unique key
        was taken by a concurrent request (IntegrityError) or SQLite refused
        a write because another transaction committed first (locked)."""
        for attempt in range(RETRIES):
            try:
                with self.db.transaction() as s:
                    return fn(s, attempt)
            except (IntegrityError, Retry) as e:
                log.debug("retrying after a concurrent write (%s)", e)
            except OperationalError as e:
                if "locked" not in str(e) and "deadlock" not in str(e).lower():
                    raise
            time.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
        raise on_exhausted or errors.IpAddressGenerationFailure(
            "The request could not be completed: too many concurrent changes; retry.")

    @staticmethod
    def _touch(obj) -> None:
        obj.revision_number = (obj.revision_number or 0) + 1
        obj.updated_at = utcnow()

    # -- visibility -------------------------------------------------------------
    @staticmethod
    def _owner(ctx: RequestContext, obj) -> bool:
        return ctx.is_admin or obj.project_id == ctx.project_id

    def _network(self, s, ctx: RequestContext, network_id: str) -> Network:
        n = s.get(Network, network_id) if network_id else None
        if n is None or not (self._owner(ctx, n) or n.shared or n.external):
            raise errors.NetworkNotFound(f"Network {network_id} could not be found.",
                                         field="network_id")
        return n

    def _subnet(self, s, ctx: RequestContext, subnet_id: str) -> Subnet:
        sn = s.get(Subnet, subnet_id) if subnet_id else None
        if sn is None:
            raise errors.SubnetNotFound(f"Subnet {subnet_id} could not be found.",
                                        field="subnet_id")
        n = s.get(Network, sn.network_id)
        if not (self._owner(ctx, sn) or self._owner(ctx, n) or n.shared or n.external):
            raise errors.SubnetNotFound(f"Subnet {subnet_id} could not be found.",
                                        field="subnet_id")
        return sn

    def _port(self, s, ctx: RequestContext, port_id: str) -> Port:
        p = s.get(Port, port_id) if port_id else None
        if p is None or not (self._owner(ctx, p) or self._owner(ctx, s.get(Network,
                                                                           p.network_id))):
            raise errors.PortNotFound(f"Port {port_id} could not be found.", field="port_id")
        return p

    def _router(self, s, ctx: RequestContext, router_id: str) -> Router:
        r = s.get(Router, router_id) if router_id else None
        if r is None or not self._owner(ctx, r):
            raise errors.RouterNotFound(f"Router {router_id} could not be found.",
                                        field="router_id")
        return r

    def _sg(self, s, ctx: RequestContext, sg_id: str) -> SecurityGroup:
        sg = s.get(SecurityGroup, sg_id) if sg_id else None
        if sg is None or not self._owner(ctx, sg):
            raise errors.SecurityGroupNotFound(f"Security group {sg_id} does not exist",
                                               field="security_group_id")
        return sg

    @staticmethod
    def _project_for_create(ctx: RequestContext, attrs: dict) -> str:
        project = attrs.pop("project_id", None) or ctx.project_id
        if project != ctx.project_id and not ctx.is_admin:
            raise errors.PolicyNotAuthorized(
                "Specifying 'project_id' or 'tenant_id' other than the authenticated "
                "project in request requires admin privileges", field="project_id")
        if not project:
            raise errors.InvalidInput("A project-scoped token is required to create "
                                      "network resources.", field="project_id")
        return project

    # -- batch loads ------------------------------------------------------------
    @staticmethod
    def _fixed_ips(s, port_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {pid: [] for pid in port_ids}
        for chunk in _chunks(port_ids):
            for pid, sid, ip in s.execute(select(
                    IpAllocation.port_id, IpAllocation.subnet_id, IpAllocation.ip_address
            ).where(IpAllocation.port_id.in_(chunk))):
                out[pid].append((sid, ip))
        for v in out.values():
            if len(v) > 1:
                v.sort(key=lambda t: (t[0], _ipkey(t[1])))
        return out

    @staticmethod
    def _port_sgs(s, port_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {pid: [] for pid in port_ids}
        for chunk in _chunks(port_ids):
            for pid, gid in s.execute(select(
                    PortSecurityGroup.port_id, PortSecurityGroup.security_group_id
            ).where(PortSecurityGroup.port_id.in_(chunk))):
                out[pid].append(gid)
        return out

    # -- quotas -----------------------------------------------------------------
    @staticmethod
    def _serialize(s, key: str) -> None:
        """Hold a lock on `key` until the transaction ends. PostgreSQL: an
        advisory lock. SQLite: a write (matching no row) takes the database's
        write lock now, before the counts are read, instead of at the insert."""
        if not advisory_lock(s, key):
            s.execute(update(Quota).where(Quota.project_id == "", Quota.resource == key)
                      .values(limit=0))

    def _limit(self, s, project_id: str, resource: str) -> int:
        q = s.get(Quota, (project_id, resource))
        return q.limit if q is not None else DEFAULT_QUOTAS[resource]

    def _used(self, s, project_id: str, resource: str) -> int:
        model = QUOTA_MODELS[resource]
        return s.scalar(select(func.count()).select_from(model).where(
            model.project_id == project_id)) or 0

    def _check_quota(self, s, project_id: str, resource: str, count: int = 1) -> None:
        """Count and insert under one lock per (project, resource), so creates
        racing each other cannot all see room for one more."""
        self._serialize(s, f"network-quota:{project_id}:{resource}")
        limit = self._limit(s, project_id, resource)
        if limit < 0:
            return
        used = self._used(s, project_id, resource)
        if used + count > limit:
            raise QuotaExceeded(resource, limit=limit, in_use=used, requested=count)


def _chunks(items: list[str], size: int = 500):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _ipkey(ip: str):
    import ipaddress
    a = ipaddress.ip_address(ip)
    return (a.version, int(a))
