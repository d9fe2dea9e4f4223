"""Compute rules and transactions: servers and their actions. The API records
intent (vm_state/task_state) and returns; the compute agent on the server's
host carries it out."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import secrets
import threading
import uuid
from typing import Any, Callable, Iterable

from sqlalchemy import delete, func, select

from stackbox.common.db import Database, advisory_lock, utcnow
from stackbox.common.errors import (BadRequest, Conflict, Forbidden, InvalidState, NotFound)
from stackbox.common.http.context import RequestContext
from stackbox.compute import scheduler, states
from stackbox.compute.consoletokens import ConsoleTokens, DatabaseTokenBackend
from stackbox.compute.drivers.base import DriverError
from stackbox.compute.flavors import FlavorService, KeypairService, QuotaService
from stackbox.compute.models import (ComputeHost, ConsoleToken, InstanceAction, KeyPair, Server,
                                     ServerGroup)

MAX_USER_DATA = 65535
HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
SORT_KEYS = ("created_at", "updated_at", "display_name", "name", "uuid", "id", "vm_state",
             "task_state", "power_state", "launched_at", "availability_zone", "hostname",
             "image_ref", "instance_type_id", "key_name", "project_id", "user_id", "host",
             "locked", "display_description")
_SORT_COLUMNS = {"display_name": "name", "uuid": "id", "image_ref": "image_id",
                 "display_description": "description", "host": "host_id",
                 "instance_type_id": "created_at"}


def internal_context(project_id: str | None = None) -> RequestContext:
    return RequestContext(request_id=f"req-{uuid.uuid4()}", user_id="stackbox-compute",
                          project_id=project_id, roles=("admin",))


def sanitize_hostname(name: str) -> str:
    host = HOSTNAME_BAD.sub("-", name.lower().replace("_", "-")).strip("-.")[:63].strip("-")
    return host or "server"


def flavor_snapshot(flavor) -> dict:
    """What a server keeps of its flavor (Nova embeds it; later flavor edits
    do not change running servers)."""
    return {"id": flavor.id, "name": flavor.name, "vcpus": flavor.vcpus, "ram": flavor.ram,
            "disk": flavor.disk, "ephemeral": flavor.ephemeral, "swap": flavor.swap,
            "extra_specs": dict(flavor.extra_specs or {})}


def image_snapshot(img) -> dict:
    return {"id": img.id, "name": img.name, "disk_format": img.disk_format,
            "container_format": img.container_format, "min_disk": img.min_disk,
            "min_ram": img.min_ram, "size": img.size, "properties": dict(img.properties or {})}


@dataclasses.dataclass
class ListQuery:
    all_tenants: bool = False
    project_id: str | None = None
    name: str | None = None
    statuses: tuple[str, ...] = ()
    image: str | None = None
    flavor: str | None = None
    changes_since: Any = None
    changes_before: Any = None
    host: str | None = None
    availability_zone: str | None = None
    key_name: str | None = None
    locked: bool | None = None
    tags: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    not_tags: tuple[str, ...] = ()
    not_tags_any: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    sort: tuple[tuple[str, str], ...] = (("created_at", "desc"),)
    limit: int | None = None
    marker: str | None = None


@dataclasses.dataclass
class CreateRequest:
    name: str
    image_id: str
    flavor_id: str
    key_name: str | None = None
    user_data: str | None = None
    config_drive: bool = False
    metadata: dict = dataclasses.field(default_factory=dict)
    availability_zone: str | None = None
    min_count: int = 1
    max_count: int = 1
    networks: Any = "auto"
    security_groups: tuple[str, ...] = ("default",)
    hostname: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    group_id: str | None = None
    scheduler_hints: dict = dataclasses.field(default_factory=dict)
    access_ipv4: str = ""
    access_ipv6: str = ""


class ComputeService:
    def __init__(self, db: Database, settings, *, image, network=None):
        self.db = db
        self.settings = settings
        self.image = image            # ImageService
        self.network = network        # NetworkService or None (servers then get no NIC)
        self.flavors = FlavorService(db)
        self.quotas = QuotaService(db)
        self.keypairs = KeypairService(db, self.quotas)
        self._create_lock = threading.Lock()
        self.wake: Callable[[], None] = lambda: None   # the local agent's doorbell
        self.console_tokens = ConsoleTokens(DatabaseTokenBackend(db),
                                            ttl=settings.compute.console_token_ttl)

    # -- helpers ---------------------------------------------------------------------------
    def _lock(self, s, key: str) -> None:
        """Serialise quota checks and claims across API processes."""
        advisory_lock(s, key)

    def _find(self, s, ctx: RequestContext, server_id: str, *, lock: bool = False) -> Server:
        q = select(Server).where(Server.id == server_id)
        if lock and s.bind.dialect.name == "postgresql":
            q = q.with_for_update()
        server = s.scalar(q)
        if server is None or (server.project_id != ctx.project_id and not ctx.is_admin):
            raise NotFound(f"Instance {server_id} could not be found.")
        return server

    def get_server(self, ctx: RequestContext, server_id: str) -> Server:
        with self.db.read() as s:
            return self._find(s, ctx, server_id)

    def get_servers(self, ctx: RequestContext, server_ids: Iterable[str]) -> dict[str, Server]:
        """The servers among `server_ids` that exist and `ctx` may see, by id
        (the metadata server reads a boot storm's instances in batches)."""
        ids = list(dict.fromkeys(server_ids))
        out: dict[str, Server] = {}
        with self.db.read() as s:
            for i in range(0, len(ids), 500):
                for server in s.scalars(select(Server).where(Server.id.in_(ids[i:i + 500]))):
                    if server.project_id == ctx.project_id or ctx.is_admin:
                        out[server.id] = server
        return out

    @staticmethod
    def _record_action(s, ctx: RequestContext, server: Server, action: str) -> None:
        s.merge(InstanceAction(request_id=ctx.request_id, server_id=server.id, action=action,
                               project_id=ctx.project_id or server.project_id,
                               user_id=ctx.user_id or "", start_time=utcnow(),
                               updated_at=utcnow(), events=[]))

    # -- create ----------------------------------------------------------------------------
    def _check_image(self, ctx, image_id: str, flavor: dict) -> Any:
        """The image, if the server may boot it with `flavor` (a snapshot)."""
        try:
            img = self.image.get_image(ctx, image_id)
        except NotFound:
            raise BadRequest(f"Image {image_id} could not be found.", field="imageRef")
        if img.status != "active":
            raise BadRequest(f"Image {image_id} is not active (status {img.status}).",
                             field="imageRef")
        if img.disk_format in ("aki", "ari"):
            raise BadRequest(f"Image {image_id} is a {img.disk_format} (kernel/ramdisk) "
                             "image and cannot boot a server on its own.", field="imageRef")
        if flavor["ram"] < (img.min_ram or 0):
            raise BadRequest(f"Flavor's memory is too small for requested image: flavor "
                             f"{flavor['name']} has {flavor['ram']} MiB, image needs "
                             f"{img.min_ram} MiB.", field="flavorRef")
        if flavor["disk"]:
            need = max((img.min_disk or 0) * 1024 ** 3, img.virtual_size or img.size or 0)
            if flavor["disk"] * 1024 ** 3 < need:
                raise BadRequest(f"Flavor's disk is too small for requested image. Flavor "
                                 f"disk is {flavor['disk'] * 1024 ** 3} bytes, image is "
                                 f"{need} bytes.", field="flavorRef")
        return img

    def create_servers(self, ctx: RequestContext, req: CreateRequest) -> list[Server]:
        try:
            flavor = self.flavors.get(ctx, req.flavor_id)
        except NotFound:
            raise BadRequest(f"Flavor {req.flavor_id} could not be found.", field="flavorRef")
        if flavor.disabled:
            raise BadRequest(f"Flavor {req.flavor_id} is disabled.", field="flavorRef")
        flavor_snap = flavor_snapshot(flavor)
        img = self._check_image(ctx, req.image_id, flavor_snap)
        if req.user_data is not None:
            if len(req.user_data) > MAX_USER_DATA:
                raise BadRequest(f"user_data is {len(req.user_data)} bytes; the limit is "
                                 f"{MAX_USER_DATA} bytes of base64.", field="user_data")
            try:
                base64.b64decode(req.user_data, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("User data needs to be valid base 64.", field="user_data")
        if req.min_count > req.max_count:
            raise BadRequest("min_count must be <= max_count.", field="min_count")
        plan = self._plan_networks(ctx, req.networks)
        if len(plan) and any("port_id" in p for p in plan) and req.max_count > 1:
            raise BadRequest("Unable to launch multiple instances with a single configured "
                             "port ID.", field="networks")
        key_data = None
        if req.key_name:
            try:
                key_data = self.keypairs.get(ctx, req.key_name).public_key
            except NotFound:
                raise BadRequest(f"Invalid key_name provided: {req.key_name} not found.",
                                 field="key_name")
        limits_meta = self.quotas.get(ctx.project_id)["metadata_items"]
        if limits_meta >= 0 and len(req.metadata) > limits_meta:
            raise Forbidden(f"Quota exceeded for metadata_items: requested "
                            f"{len(req.metadata)}, limit {limits_meta}")
        az, force_host = req.availability_zone, None
        if az and ":" in az:
            if not ctx.is_admin:
                raise Forbidden("Policy doesn't allow os_compute_api:servers:create:forced_host "
                                "to be performed.")
            az, _, force_host = az.partition(":")
            az = az or None
        if az:
            zones = {h.availability_zone for h in self.list_hosts()}
            if az not in zones:
                raise BadRequest(f"The requested availability zone is not available: {az} "
                                 f"(zones: {', '.join(sorted(zones)) or 'none'}).",
                                 field="availability_zone")
        image_meta = image_snapshot(img)
        reservation = "r-" + secrets.token_hex(4)
        count = req.max_count
        servers: list[Server] = []
        with self._create_lock, self.db.transaction() as s:
            self._lock(s, f"compute-quota:{ctx.project_id}")
            used = self.quotas.usage(s, ctx.project_id)
            limits = self.quotas.limits(s, ctx.project_id)
            # as many as fit between min_count and max_count (Nova)
            for resource, per in (("instances", 1), ("cores", flavor.vcpus),
                                  ("ram", flavor.ram)):
                if limits[resource] >= 0:
                    room = (limits[resource] - used[resource]) // max(per, 1)
                    count = min(count, room)
            if count < req.min_count:
                self.quotas.check(s, ctx.project_id,
                                  {"instances": req.min_count,
                                   "cores": flavor.vcpus * req.min_count,
                                   "ram": flavor.ram * req.min_count}, used)
            group = None
            if req.group_id:
                group = s.get(ServerGroup, req.group_id)
                if group is None or (group.project_id != ctx.project_id and not ctx.is_admin):
                    raise BadRequest(f"Invalid server group {req.group_id}: not found.",
                                     field="scheduler_hints.group")
                gl = limits["server_group_members"]
                if gl >= 0 and len(group.members) + count > gl:
                    raise Forbidden(f"Quota exceeded for server_group_members: requested "
                                    f"{count}, in use {len(group.members)}, limit {gl}")
            arch = (img.properties or {}).get("architecture") or (img.properties or {}).get(
                "hw_architecture")
            for i in range(count):
                name = req.name if count == 1 else f"{req.name}-{i + 1}"
                hostname = req.hostname if (req.hostname and count == 1) else \
                    sanitize_hostname(name)
                server = Server(
                    id=str(uuid.uuid4()), project_id=ctx.project_id, user_id=ctx.user_id,
                    name=name, hostname=hostname, description=req.description,
                    vm_state=states.BUILDING, task_state=states.NETWORKING, power_state=0,
                    task_args={}, flavor=flavor_snap, image_id=img.id, image_meta=image_meta,
                    key_name=req.key_name, key_data=key_data, user_data=req.user_data,
                    config_drive=req.config_drive, metadata_=dict(req.metadata),
                    tags=list(dict.fromkeys(req.tags)), networks=req.networks,
                    security_groups=list(req.security_groups),
                    requested_az=req.availability_zone, reservation_id=reservation,
                    launch_index=i, access_ipv4=req.access_ipv4, access_ipv6=req.access_ipv6,
                    scheduler_hints=dict(req.scheduler_hints))
                s.add(server)
                s.flush()
                self._record_action(s, ctx, server, "create")
                try:
                    scheduler.claim(s, server, scheduler.Request(
                        vcpus=flavor.vcpus, memory_mb=flavor.ram,
                        disk_gb=flavor.disk + flavor.ephemeral + flavor.swap // 1024,
                        availability_zone=az, architecture=arch, group=group,
                        force_host=force_host))
                except scheduler.NoValidHost as e:
                    server.vm_state, server.task_state = states.ERROR, None
                    server.fault = {"code": 500, "message": str(e), "details": "",
                                    "created": utcnow().isoformat()}
                if group is not None:
                    group.members = [*group.members, server.id]
                servers.append(server)
        for server in servers:
            if server.host_id is not None:
                self._bind_ports(ctx, server, plan)
        self.wake()
        return servers

    def _plan_networks(self, ctx: RequestContext, networks) -> list[dict]:
        """Check the requested networks before anything is created."""
        if networks == "none":
            return []
        if self.network is None:
            if networks == "auto":
                return []
            raise BadRequest("This cloud has no network service; use networks 'none'.",
                             field="networks")
        if networks == "auto":
            nets = [n for n in self.network.list_networks(ctx)
                    if not n.get("router:external") and n.get("status", "ACTIVE") == "ACTIVE"
                    and (n.get("project_id") == ctx.project_id or n.get("shared"))]
            own = [n for n in nets if n.get("project_id") == ctx.project_id]
            nets = own or nets
            if len(nets) > 1:
                raise Conflict("Multiple possible networks found, use a Network ID to be more "
                               "specific.")
            return [{"network_id": n["id"]} for n in nets]
        plan = []
        for item in networks:
            if item.get("port"):
                plan.append({"port_id": item["port"]})
                continue
            try:
                self.network.get_network(ctx, item["uuid"])
            except NotFound:
                raise BadRequest(f"Network {item['uuid']} could not be found.",
                                 field="networks")
            plan.append({"network_id": item["uuid"], "fixed_ip": item.get("fixed_ip")})
        return plan

    def _bind_ports(self, ctx: RequestContext, server: Server, plan: list[dict]) -> None:
        """Ports for the server's NICs, then the boot may start. A port that
        cannot be made (address taken, quota) fails the server with a fault."""
        try:
            for item in plan:
                self.network.create_server_port(
                    ctx, server_id=server.id, host_id=server.host_id,
                    network_id=item.get("network_id"), port_id=item.get("port_id"),
                    fixed_ip=item.get("fixed_ip"),
                    security_groups=None if server.security_groups == ["default"]
                    else server.security_groups, hostname=server.hostname)
            fields = {"task_state": states.SPAWNING}
        except Exception as e:
            if self.network is not None:
                self.network.delete_server_ports(server.id)
            message = getattr(e, "message", str(e))
            fields = {"task_state": None, "vm_state": states.ERROR,
                      "fault": {"code": 500, "message": f"Build of instance {server.id} "
                                f"aborted: {message}"[:255], "details": "",
                                "created": utcnow().isoformat()}}
        with self.db.transaction() as s:
            row = s.get(Server, server.id)
            if row is not None:
                for k, v in fields.items():
                    setattr(row, k, v)
                row.updated_at = utcnow()
                server.task_state, server.vm_state = row.task_state, row.vm_state

    # -- read ------------------------------------------------------------------------------
    def list_servers(self, ctx: RequestContext, q: ListQuery) -> list[Server]:
        with self.db.read() as s:
            stmt = select(Server)
            if not (q.all_tenants and ctx.is_admin):
                stmt = stmt.where(Server.project_id == ctx.project_id)
            elif q.project_id:
                stmt = stmt.where(Server.project_id == q.project_id)
            if q.statuses:
                vm_states = {v for st in q.statuses for v in states.STATUS_FILTER.get(st, [])}
                stmt = stmt.where(Server.vm_state.in_(vm_states))
            if q.image:
                stmt = stmt.where(Server.image_id == q.image)
            if q.changes_since is not None:
                stmt = stmt.where(Server.updated_at >= q.changes_since)
            if q.changes_before is not None:
                stmt = stmt.where(Server.updated_at <= q.changes_before)
            if q.availability_zone:
                stmt = stmt.where(Server.availability_zone == q.availability_zone)
            if q.key_name:
                stmt = stmt.where(Server.key_name == q.key_name)
            if q.locked is not None:
                stmt = stmt.where(Server.locked == q.locked)
            if q.ids:
                stmt = stmt.where(Server.id.in_(q.ids))
            if q.host:
                hosts = [h.id for h in s.scalars(select(ComputeHost).where(
                    (ComputeHost.hostname == q.host) | (ComputeHost.id == q.host)))]
                stmt = stmt.where(Server.host_id.in_(hosts))
            for key, direction in q.sort:
                col = getattr(Server, _SORT_COLUMNS.get(key, key))
                stmt = stmt.order_by(col.desc() if direction == "desc" else col.asc())
            stmt = stmt.order_by(Server.id.desc())
            rows = list(s.scalars(stmt))
        if q.name:
            try:
                pattern = re.compile(q.name)
            except re.error:
                raise BadRequest(f"Invalid name filter {q.name!r}: not a regular expression.",
                                 field="name")
            rows = [r for r in rows if pattern.search(r.name)]
        if q.flavor:
            rows = [r for r in rows if r.flavor.get("id") == q.flavor]
        if q.tags:
            rows = [r for r in rows if set(q.tags) <= set(r.tags)]
        if q.tags_any:
            rows = [r for r in rows if set(q.tags_any) & set(r.tags)]
        if q.not_tags:
            rows = [r for r in rows if not set(q.not_tags) <= set(r.tags)]
        if q.not_tags_any:
            rows = [r for r in rows if not set(q.not_tags_any) & set(r.tags)]
        if q.statuses:
            rows = [r for r in rows if states.status(r.vm_state, r.task_state) in q.statuses
                    or (r.task_state is None and r.vm_state in
                        {v for st in q.statuses for v in states.STATUS_FILTER.get(st, [])})]
        if q.marker:
            ids = [r.id for r in rows]
            if q.marker not in ids:
                raise BadRequest(f"marker [{q.marker}] not found", field="marker")
            rows = rows[ids.index(q.marker) + 1:]
        if q.limit is not None:
            rows = rows[:q.limit]
        return rows

    # -- update / delete -------------------------------------------------------------------
    def update_server(self, ctx: RequestContext, server_id: str, *, name: str | None = None,
                      description: Any = ..., hostname: str | None = None,
                      access_ipv4: str | None = None, access_ipv6: str | None = None) -> Server:
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id)
            if name is not None:
                server.name = name
            if description is not ...:
                server.description = description
            if hostname is not None:
                server.hostname = hostname
            if access_ipv4 is not None:
                server.access_ipv4 = access_ipv4
            if access_ipv6 is not None:
                server.access_ipv6 = access_ipv6
            server.updated_at = utcnow()
            return server

    def _check_lock(self, ctx: RequestContext, server: Server) -> None:
        if server.locked and not ctx.is_admin:
            raise Conflict(f"Instance {server.id} is locked")

    def delete_server(self, ctx: RequestContext, server_id: str, *, force: bool = False) -> None:
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id, lock=True)
            self._check_lock(ctx, server)
            if server.task_state == states.DELETING:
                return
            self._record_action(s, ctx, server, "delete")
            if server.host_id is None:
                self._purge(s, server)
                if self.network is not None:
                    self.network.delete_server_ports(server.id)
                return
            server.task_state = states.DELETING
            server.updated_at = utcnow()
        self.wake()

    def _purge(self, s, server: Server) -> None:
        """The last step of a delete: the rows go."""
        scheduler.release(s, server.id)
        for group in s.scalars(select(ServerGroup)):
            if server.id in group.members:
                group.members = [m for m in group.members if m != server.id]
        s.execute(delete(ConsoleToken).where(ConsoleToken.server_id == server.id))
        s.execute(delete(InstanceAction).where(InstanceAction.server_id == server.id))
        s.delete(server)

    def purge(self, server_id: str) -> None:
        with self.db.transaction() as s:
            server = s.get(Server, server_id)
            if server is not None:
                self._purge(s, server)

    # -- actions ---------------------------------------------------------------------------
    def _action(self, ctx: RequestContext, server_id: str, action: str, *,
                allowed: tuple[str, ...], task: str | None, args: dict | None = None,
                check_lock: bool = True, apply: Callable[[Any, Server], None] | None = None
                ) -> Server:
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id, lock=True)
            if check_lock:
                self._check_lock(ctx, server)
            if server.task_state is not None:
                raise InvalidState(f"Cannot '{action}' instance {server_id} while it is in "
                                   f"task_state {server.task_state}")
            if server.vm_state not in allowed:
                raise InvalidState(f"Cannot '{action}' instance {server_id} while it is in "
                                   f"vm_state {server.vm_state}")
            if apply is not None:
                apply(s, server)
            if task is not None:
                server.task_state = task
                server.task_args = args or {}
            server.updated_at = utcnow()
            self._record_action(s, ctx, server, action)
        if task is not None:
            self.wake()
        return server

    def start(self, ctx, server_id):
        return self._action(ctx, server_id, "start", allowed=(states.STOPPED,),
                            task=states.POWERING_ON)

    def stop(self, ctx, server_id):
        return self._action(ctx, server_id, "stop",
                            allowed=(states.ACTIVE, states.ERROR, states.PAUSED,
                                     states.SUSPENDED, states.RESIZED),
                            task=states.POWERING_OFF)

    def reboot(self, ctx, server_id, *, hard: bool):
        allowed = (states.ACTIVE, states.STOPPED, states.PAUSED, states.SUSPENDED,
                   states.ERROR) if hard else (states.ACTIVE,)
        return self._action(ctx, server_id, "reboot", allowed=allowed,
                            task=states.REBOOTING_HARD if hard else states.REBOOTING)

    def pause(self, ctx, server_id):
        return self._action(ctx, server_id, "pause", allowed=(states.ACTIVE,),
                            task=states.PAUSING)

    def unpause(self, ctx, server_id):
        return self._action(ctx, server_id, "unpause", allowed=(states.PAUSED,),
                            task=states.UNPAUSING)

    def suspend(self, ctx, server_id):
        return self._action(ctx, server_id, "suspend", allowed=(states.ACTIVE,),
                            task=states.SUSPENDING)

    def resume(self, ctx, server_id):
        return self._action(ctx, server_id, "resume", allowed=(states.SUSPENDED,),
                            task=states.RESUMING)

    def lock(self, ctx, server_id, *, reason: str | None = None):
        def apply(s, server):
            server.locked, server.locked_reason = True, reason
            server.locked_by = "admin" if ctx.is_admin and ctx.project_id != \
                server.project_id else "owner"
        return self._action(ctx, server_id, "lock", allowed=states.ALL_VM_STATES,
                            task=None, check_lock=False, apply=apply)

    def unlock(self, ctx, server_id):
        def apply(s, server):
            if server.locked_by == "admin" and not ctx.is_admin:
                raise Forbidden("Policy doesn't allow os_compute_api:os-lock-server:unlock:"
                                "unlock_override to be performed: an admin locked it.")
            server.locked, server.locked_reason, server.locked_by = False, None, None
        return self._action(ctx, server_id, "unlock", allowed=states.ALL_VM_STATES,
                            task=None, check_lock=False, apply=apply)

    def rebuild(self, ctx, server_id, *, image_id: str, name: str | None = None,
                metadata: dict | None = None, user_data: Any = ...,
                key_name: Any = ..., description: Any = ...):
        with self.db.read() as s:
            server = self._find(s, ctx, server_id)
        img = self._check_image(ctx, image_id, server.flavor)
        key_data = ...
        if key_name is not ... and key_name is not None:
            try:
                key_data = self.keypairs.get(ctx, key_name).public_key
            except NotFound:
                raise BadRequest(f"Invalid key_name provided: {key_name} not found.",
                                 field="key_name")

        def apply(s, server):
            server.image_id = img.id
            server.image_meta = image_snapshot(img)
            if name is not None:
                server.name = name
            if metadata is not None:
                server.metadata_ = dict(metadata)
            if user_data is not ...:
                server.user_data = user_data
            if key_name is not ...:
                server.key_name = key_name
                server.key_data = None if key_name is None else key_data
            if description is not ...:
                server.description = description
        return self._action(ctx, server_id, "rebuild",
                            allowed=(states.ACTIVE, states.STOPPED, states.ERROR),
                            task=states.REBUILDING, apply=apply)

    def resize(self, ctx, server_id, *, flavor_id: str):
        try:
            flavor = self.flavors.get(ctx, flavor_id)
        except NotFound:
            raise BadRequest(f"Flavor {flavor_id} could not be found.", field="flavorRef")

        def apply(s, server):
            if flavor.id == server.flavor["id"]:
                raise BadRequest("When resizing, instances must change flavor!",
                                 field="flavorRef")
            if flavor.disk and flavor.disk < server.flavor["disk"]:
                raise BadRequest(f"Resize to a smaller disk is not possible: flavor "
                                 f"{flavor.name} has {flavor.disk} GiB, the server "
                                 f"{server.flavor['disk']} GiB.", field="flavorRef")
            used = self.quotas.usage(s, server.project_id)
            self.quotas.check(s, server.project_id,
                              {"cores": max(0, flavor.vcpus - server.flavor["vcpus"]),
                               "ram": max(0, flavor.ram - server.flavor["ram"])}, used)
            try:
                scheduler.resize_allocation(
                    s, server.id, vcpus=flavor.vcpus, memory_mb=flavor.ram,
                    disk_gb=flavor.disk + flavor.ephemeral + flavor.swap // 1024)
            except scheduler.NoValidHost as e:
                raise BadRequest(str(e), field="flavorRef")
            server.old_flavor = server.flavor
            server.flavor = flavor_snapshot(flavor)
        return self._action(ctx, server_id, "resize", allowed=(states.ACTIVE, states.STOPPED),
                            task=states.RESIZE_PREP, apply=apply)

    def confirm_resize(self, ctx, server_id):
        def apply(s, server):
            server.old_flavor = None
        return self._action(ctx, server_id, "confirmResize", allowed=(states.RESIZED,),
                            task=states.RESIZE_CONFIRMING, apply=apply)

    def revert_resize(self, ctx, server_id):
        def apply(s, server):
            old = server.old_flavor
            scheduler.resize_allocation(s, server.id, vcpus=old["vcpus"],
                                        memory_mb=old["ram"],
                                        disk_gb=old["disk"] + old["ephemeral"] +
                                        old["swap"] // 1024)
            server.flavor, server.old_flavor = old, None
        return self._action(ctx, server_id, "revertResize", allowed=(states.RESIZED,),
                            task=states.RESIZE_REVERTING, apply=apply)

    def create_image(self, ctx, server_id, *, name: str, metadata: dict | None = None) -> str:
        with self.db.read() as s:
            server = self._find(s, ctx, server_id)
        props = {k: str(v) for k, v in (metadata or {}).items()}
        props.update({"instance_uuid": server.id, "image_type": "snapshot",
                      "base_image_ref": server.image_id})
        for key in ("kernel_id", "ramdisk_id", "os_command_line", "os_type", "architecture"):
            value = (server.image_meta.get("properties") or {}).get(key)
            if value:
                props.setdefault(key, value)
        img = self.image.create_image(
            ctx, image_id=None, core={"name": name, "disk_format": "qcow2",
                                      "container_format": "bare", "visibility": "private",
                                      "min_disk": server.flavor["disk"]},
            properties=props)
        try:
            self._action(ctx, server_id, "createImage",
                         allowed=(states.ACTIVE, states.STOPPED, states.PAUSED,
                                  states.SUSPENDED), task=states.IMAGE_SNAPSHOT,
                         args={"image_id": img.id}, check_lock=False)
        except Exception:
            self.image.delete_image(ctx, img.id)
            raise
        return img.id

    # -- metadata and tags -----------------------------------------------------------------
    def set_metadata(self, ctx, server_id, items: dict, *, replace: bool) -> dict:
        for k, v in items.items():
            if not isinstance(k, str) or not 1 <= len(k) <= 255 or not isinstance(v, str) \
                    or len(v) > 255:
                raise BadRequest("Metadata keys and values must be strings of 1-255 and "
                                 "0-255 characters.", field="metadata")
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id)
            self._check_lock(ctx, server)
            new = dict(items) if replace else {**server.metadata_, **items}
            limit = self.quotas.limits(s, server.project_id)["metadata_items"]
            if 0 <= limit < len(new):
                raise Forbidden(f"Quota exceeded for metadata_items: requested {len(new)}, "
                                f"limit {limit}")
            server.metadata_ = new
            server.updated_at = utcnow()
            return new

    def delete_metadata(self, ctx, server_id, key: str) -> None:
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id)
            self._check_lock(ctx, server)
            if key not in server.metadata_:
                raise NotFound(f"Metadata item was not found: {key}")
            server.metadata_ = {k: v for k, v in server.metadata_.items() if k != key}

    def set_tags(self, ctx, server_id, tags: list[str] | None, *, add: str | None = None,
                 remove: str | None = None) -> list[str]:
        with self.db.transaction() as s:
            server = self._find(s, ctx, server_id)
            current = list(server.tags)
            if tags is not None:
                current = list(dict.fromkeys(tags))
            if add is not None and add not in current:
                current.append(add)
            if remove is not None:
                if remove not in current:
                    raise NotFound(f"Tag {remove} could not be found.")
                current.remove(remove)
            for tag in current:
                if not tag or len(tag) > 60 or "/" in tag or "," in tag:
                    raise BadRequest(f"Invalid tag {tag!r}: 1-60 characters, no '/' or ','.",
                                     field="tags")
            if len(current) > 50:
                raise BadRequest("A server may have at most 50 tags.", field="tags")
            server.tags = current
            server.updated_at = utcnow()
            return current

    # -- instance actions ------------------------------------------------------------------
    def list_actions(self, ctx, server_id) -> list[InstanceAction]:
        with self.db.read() as s:
            self._find(s, ctx, server_id)
            return list(s.scalars(select(InstanceAction)
                                  .where(InstanceAction.server_id == server_id)
                                  .order_by(InstanceAction.start_time.desc())))

    def get_action(self, ctx, server_id, request_id) -> InstanceAction:
        with self.db.read() as s:
            self._find(s, ctx, server_id)
            action = s.get(InstanceAction, (request_id, server_id))
            if action is None:
                raise NotFound(f"Action {request_id} could not be found.")
            return action

    # -- consoles --------------------------------------------------------------------------
    def console_output(self, ctx, server_id, *, length: int | None, driver) -> str:
        server = self.get_server(ctx, server_id)
        if server.host_id is None or server.vm_state == states.BUILDING and \
                server.power_state == 0:
            raise Conflict(f"Instance {server_id} is not ready: it has no console yet.")
        return driver.console_output(server_id, length=length)

    def issue_console_token(self, ctx, server_id, kind: str, endpoint_lookup) -> str:
        """A one-time token for the server's `kind` console; `endpoint_lookup`
        is the driver's console_endpoint, asked now so a console that does not
        exist fails in this call, not in the user's browser."""
        server = self.get_server(ctx, server_id)
        if server.vm_state not in (states.ACTIVE, states.PAUSED) or server.task_state:
            raise Conflict(f"Instance {server_id} is not running (status "
                           f"{states.status(server.vm_state, server.task_state)}); its "
                           "console is unavailable.")
        try:
            return self.console_tokens.issue(server_id, kind, endpoint_lookup)
        except DriverError as e:
            raise Conflict(f"Instance {server_id} has no {kind} console: {e.message}")

    # -- server groups ---------------------------------------------------------------------
    def create_group(self, ctx, *, name: str, policy: str, rules: dict | None) -> ServerGroup:
        if policy not in GROUP_POLICIES:
            raise BadRequest(f"Invalid policy {policy!r}; allowed: {', '.join(GROUP_POLICIES)}.",
                             field="policy")
        rules = rules or {}
        if rules and (policy != "anti-affinity" or set(rules) != {"max_server_per_host"}):
            raise BadRequest("Only the anti-affinity policy takes rules, and only "
                             "max_server_per_host.", field="rules")
        with self.db.transaction() as s:
            used = s.scalar(select(func.count())
                            .select_from(ServerGroup)
                            .where(ServerGroup.project_id == ctx.project_id))
            self.quotas.check(s, ctx.project_id, {"server_groups": 1}, {"server_groups": used})
            group = ServerGroup(id=str(uuid.uuid4()), name=name, project_id=ctx.project_id,
                                user_id=ctx.user_id, policy=policy, rules=rules, members=[])
            s.add(group)
            return group

    def list_groups(self, ctx, *, all_projects: bool = False) -> list[ServerGroup]:
        with self.db.read() as s:
            q = select(ServerGroup).order_by(ServerGroup.created_at)
            if not (all_projects and ctx.is_admin):
                q = q.where(ServerGroup.project_id == ctx.project_id)
            return list(s.scalars(q))

    def get_group(self, ctx, group_id) -> ServerGroup:
        with self.db.read() as s:
            group = s.get(ServerGroup, group_id)
            if group is None or (group.project_id != ctx.project_id and not ctx.is_admin):
                raise NotFound(f"Instance group {group_id} could not be found.")
            return group

    def delete_group(self, ctx, group_id) -> None:
        self.get_group(ctx, group_id)
        with self.db.transaction() as s:
            s.delete(s.get(ServerGroup, group_id))

    # -- hosts -----------------------------------------------------------------------------
    def list_hosts(self) -> list[ComputeHost]:
        with self.db.read() as s:
            return list(s.scalars(select(ComputeHost).order_by(ComputeHost.hostname)))

    def host_usage(self) -> dict[str, tuple[int, int, int, int]]:
        with self.db.read() as s:
            return scheduler.usage(s)

    def get_host(self, host_id: str) -> ComputeHost:
        with self.db.read() as s:
            host = s.get(ComputeHost, host_id)
            if host is None:
                host = s.scalar(select(ComputeHost).where(ComputeHost.hostname == host_id))
            if host is None:
                raise NotFound(f"Hypervisor {host_id} could not be found.")
            return host

    def set_host_status(self, ctx, host_id: str, *, disabled: bool | None = None,
                        reason: str | None = None, forced_down: bool | None = None
                        ) -> ComputeHost:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-services:update to be "
                            "performed.")
        with self.db.transaction() as s:
            host = s.get(ComputeHost, host_id) or s.scalar(
                select(ComputeHost).where(ComputeHost.hostname == host_id))
            if host is None:
                raise NotFound(f"Service {host_id} could not be found.")
            if disabled is not None:
                host.disabled = disabled
                host.disabled_reason = reason if disabled else None
            if forced_down is not None:
                host.forced_down = forced_down
            return host

    def keypair_for(self, server: Server) -> KeyPair | None:
        with self.db.read() as s:
            return s.get(KeyPair, (server.user_id, server.key_name)) if server.key_name else None
