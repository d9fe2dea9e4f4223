"""Compute API for the resources around servers: flavors, keypairs, server
groups, availability zones, services, hypervisors, limits and quota sets."""

from __future__ import annotations


from starlette.concurrency import run_in_threadpool as call
from starlette.responses import Response

from stackbox.common.errors import BadRequest, Forbidden, NotFound
from stackbox.common.http.body import json_body
from stackbox.common.http.microversion import Version
from stackbox.compute import render
from stackbox.compute.apihelpers import _bool, _int, _json, _name, _object
from stackbox.compute.drivers.hostinfo import uptime_text
from stackbox.compute.flavors import DEFAULT_QUOTAS, NETWORK_QUOTAS

V = Version


class ResourceApi:
    def __init__(self, parent):
        self.parent = parent
        self.svc = parent.svc

    def register(self, a) -> None:
        a("/flavors", ["GET"], self.list_flavors)
        a("/flavors/detail", ["GET"], self.list_flavors_detail)
        a("/flavors", ["POST"], self.create_flavor)
        a("/flavors/{id}", ["GET"], self.show_flavor)
        a("/flavors/{id}", ["PUT"], self.update_flavor)
        a("/flavors/{id}", ["DELETE"], self.delete_flavor)
        a("/flavors/{id}/os-extra_specs", ["GET"], self.list_extra_specs)
        a("/flavors/{id}/os-extra_specs", ["POST"], self.create_extra_specs)
        a("/flavors/{id}/os-extra_specs/{key}", ["GET"], self.show_extra_spec)
        a("/flavors/{id}/os-extra_specs/{key}", ["PUT"], self.update_extra_spec)
        a("/flavors/{id}/os-extra_specs/{key}", ["DELETE"], self.delete_extra_spec)
        a("/flavors/{id}/os-flavor-access", ["GET"], self.flavor_access)
        a("/flavors/{id}/action", ["POST"], self.flavor_action)
        a("/os-keypairs", ["GET"], self.list_keypairs)
        a("/os-keypairs", ["POST"], self.create_keypair)
        a("/os-keypairs/{name}", ["GET"], self.show_keypair)
        a("/os-keypairs/{name}", ["DELETE"], self.delete_keypair)
        a("/os-server-groups", ["GET"], self.list_groups)
        a("/os-server-groups", ["POST"], self.create_group)
        a("/os-server-groups/{id}", ["GET"], self.show_group)
        a("/os-server-groups/{id}", ["DELETE"], self.delete_group)
        a("/os-availability-zone", ["GET"], self.list_zones)
        a("/os-availability-zone/detail", ["GET"], self.list_zones_detail)
        a("/os-services", ["GET"], self.list_services)
        a("/os-services/{id}", ["PUT"], self.update_service)
        a("/os-hypervisors", ["GET"], self.list_hypervisors)
        a("/os-hypervisors/detail", ["GET"], self.list_hypervisors_detail)
        a("/os-hypervisors/statistics", ["GET"], self.hypervisor_statistics)
        a("/os-hypervisors/{id}", ["GET"], self.show_hypervisor)
        a("/os-hypervisors/{id}/uptime", ["GET"], self.hypervisor_uptime)
        a("/limits", ["GET"], self.limits)
        a("/os-quota-sets/{project}", ["GET"], self.show_quota)
        a("/os-quota-sets/{project}", ["PUT"], self.update_quota)
        a("/os-quota-sets/{project}", ["DELETE"], self.delete_quota)
        a("/os-quota-sets/{project}/defaults", ["GET"], self.default_quota)
        a("/os-quota-sets/{project}/detail", ["GET"], self.detail_quota)
        a("/extensions", ["GET"], self.extensions)
        a("/os-aggregates", ["GET"], self.list_aggregates)

    @property
    def base(self) -> str:
        return self.parent.base_url()

    # -- flavors ---------------------------------------------------------------------------
    async def _flavors(self, c, detail: bool) -> Response:
        q = c.query
        is_public = q.get("is_public", "true")
        public = None if is_public.lower() == "none" else _bool(is_public, "is_public")
        flavors = await call(lambda: self.svc.flavors.list(
            c.ctx, is_public=public,
            min_ram=_int(q["minRam"], "minRam") if "minRam" in q else None,
            min_disk=_int(q["minDisk"], "minDisk") if "minDisk" in q else None))
        sort_key = q.get("sort_key", "flavorid")
        attr = {"flavorid": "id", "id": "id", "name": "name", "memory_mb": "ram", "ram": "ram",
                "vcpus": "vcpus", "root_gb": "disk", "disk": "disk"}.get(sort_key)
        if attr is None:
            raise BadRequest(f"Invalid sort_key {sort_key}.", field="sort_key")
        flavors.sort(key=lambda f: getattr(f, attr), reverse=q.get("sort_dir") == "desc")
        marker = q.get("marker")
        if marker:
            ids = [f.id for f in flavors]
            if marker not in ids:
                raise BadRequest(f"marker [{marker}] not found", field="marker")
            flavors = flavors[ids.index(marker) + 1:]
        if "limit" in q:
            flavors = flavors[:_int(q["limit"], "limit")]
        return _json({"flavors": [render.flavor(f, self.base, c.mv, detail=detail)
                                      for f in flavors]})

    async def list_flavors(self, c):
        return await self._flavors(c, False)

    async def list_flavors_detail(self, c):
        return await self._flavors(c, True)

    async def show_flavor(self, c):
        f = await call(self.svc.flavors.get, c.ctx, c.params["id"])
        return _json({"flavor": render.flavor(f, self.base, c.mv)})

    async def create_flavor(self, c):
        body = _object(await json_body(c.request), "flavor")
        name = _name(body.get("name"))
        fid = body.get("id")
        if fid is not None and (not isinstance(fid, str) or not fid or len(fid) > 255):
            raise BadRequest("Invalid flavor id: a string of 1-255 characters.", field="id")
        desc = body.get("description")
        if desc is not None and c.mv < V(2, 55):
            raise BadRequest("description needs microversion 2.55 or later.",
                             field="description")
        f = await call(lambda: self.svc.flavors.create(
            c.ctx, name=name, flavor_id=fid,
            vcpus=_int(body.get("vcpus"), "vcpus", minimum=1),
            ram=_int(body.get("ram"), "ram", minimum=1),
            disk=_int(body.get("disk", 0), "disk"),
            ephemeral=_int(body.get("OS-FLV-EXT-DATA:ephemeral", 0), "ephemeral"),
            swap=_int(body.get("swap") or 0, "swap"),
            rxtx_factor=float(body.get("rxtx_factor", 1.0)),
            is_public=bool(body.get("os-flavor-access:is_public", True)), description=desc))
        return _json({"flavor": render.flavor(f, self.base, c.mv)})

    async def update_flavor(self, c):
        if c.mv < V(2, 55):
            raise BadRequest("Updating a flavor needs microversion 2.55 or later.")
        body = _object(await json_body(c.request), "flavor")
        f = await call(lambda: self.svc.flavors.update(c.ctx, c.params["id"],
                                                       description=body.get("description")))
        return _json({"flavor": render.flavor(f, self.base, c.mv)})

    async def delete_flavor(self, c):
        await call(self.svc.flavors.delete, c.ctx, c.params["id"])
        return Response(status_code=202)

    async def list_extra_specs(self, c):
        f = await call(self.svc.flavors.get, c.ctx, c.params["id"])
        return _json({"extra_specs": dict(f.extra_specs or {})})

    async def create_extra_specs(self, c):
        specs = (await json_body(c.request)).get("extra_specs")
        if not isinstance(specs, dict):
            raise BadRequest("'extra_specs' must be an object.", field="extra_specs")
        out = await call(self.svc.flavors.set_extra_specs, c.ctx, c.params["id"], specs)
        return _json({"extra_specs": out})

    async def show_extra_spec(self, c):
        f = await call(self.svc.flavors.get, c.ctx, c.params["id"])
        key = c.params["key"]
        if key not in (f.extra_specs or {}):
            raise NotFound(f"Flavor {f.id} has no extra specs with key {key}.")
        return _json({key: f.extra_specs[key]})

    async def update_extra_spec(self, c):
        body = await json_body(c.request)
        key = c.params["key"]
        if not isinstance(body, dict) or list(body) != [key]:
            raise BadRequest("Request body and URI mismatch", field="extra_specs")
        out = await call(self.svc.flavors.set_extra_specs, c.ctx, c.params["id"], body)
        return _json(out)

    async def delete_extra_spec(self, c):
        await call(self.svc.flavors.delete_extra_spec, c.ctx, c.params["id"], c.params["key"])
        return Response(status_code=200)

    async def flavor_access(self, c):
        projects = await call(self.svc.flavors.access, c.ctx, c.params["id"])
        return _json({"flavor_access": [{"flavor_id": c.params["id"], "tenant_id": p}
                                               for p in projects]})

    async def flavor_action(self, c):
        body = await json_body(c.request)
        if "addTenantAccess" in body:
            project = (body["addTenantAccess"] or {}).get("tenant")
            projects = await call(self.svc.flavors.add_access, c.ctx, c.params["id"], project)
        elif "removeTenantAccess" in body:
            project = (body["removeTenantAccess"] or {}).get("tenant")
            projects = await call(self.svc.flavors.remove_access, c.ctx, c.params["id"],
                                  project)
        else:
            raise BadRequest("Unknown flavor action; use addTenantAccess or "
                             "removeTenantAccess.", field="action")
        return _json({"flavor_access": [{"flavor_id": c.params["id"], "tenant_id": p}
                                               for p in projects]})

    # -- keypairs --------------------------------------------------------------------------
    async def list_keypairs(self, c):
        user = c.query.get("user_id") if c.mv >= V(2, 10) else None
        kps = await call(lambda: self.svc.keypairs.list(c.ctx, user_id=user))
        return _json({"keypairs": [{"keypair": render.keypair(k, c.mv, in_list=True)}
                                          for k in kps]})

    async def create_keypair(self, c):
        body = _object(await json_body(c.request), "keypair")
        key_type = body.get("type", "ssh") if c.mv >= V(2, 2) else "ssh"
        if key_type not in ("ssh", "x509"):
            raise BadRequest(f"Invalid keypair type {key_type}; allowed: ssh, x509.",
                             field="type")
        if key_type == "x509":
            raise BadRequest("x509 keypairs are not supported; use ssh.", field="type")
        public_key = body.get("public_key")
        if public_key is None and c.mv >= V(2, 92):
            raise BadRequest("'public_key' is a required property (key generation was "
                             "removed in microversion 2.92).", field="public_key")
        user = body.get("user_id") if c.mv >= V(2, 10) else None
        kp, private = await call(lambda: self.svc.keypairs.create(
            c.ctx, name=body.get("name"), public_key=public_key, key_type=key_type,
            user_id=user))
        status = 201 if c.mv >= V(2, 2) else 200
        return _json({"keypair": render.keypair(kp, c.mv, private_key=private,
                                                    detail=False)}, status)

    async def show_keypair(self, c):
        user = c.query.get("user_id") if c.mv >= V(2, 10) else None
        kp = await call(lambda: self.svc.keypairs.get(c.ctx, c.params["name"], user_id=user))
        return _json({"keypair": render.keypair(kp, c.mv)})

    async def delete_keypair(self, c):
        user = c.query.get("user_id") if c.mv >= V(2, 10) else None
        await call(lambda: self.svc.keypairs.delete(c.ctx, c.params["name"], user_id=user))
        return Response(status_code=204 if c.mv >= V(2, 2) else 202)

    # -- server groups ---------------------------------------------------------------------
    async def list_groups(self, c):
        all_projects = c.query.get("all_projects") is not None
        groups = await call(lambda: self.svc.list_groups(c.ctx, all_projects=all_projects))
        return _json({"server_groups": [render.server_group(g, c.mv) for g in groups]})

    async def create_group(self, c):
        body = _object(await json_body(c.request), "server_group")
        name = _name(body.get("name"))
        if c.mv >= V(2, 64):
            policy, rules = body.get("policy"), body.get("rules")
        else:
            policies = body.get("policies")
            if not isinstance(policies, list) or len(policies) != 1:
                raise BadRequest("'policies' must be a list with one policy.",
                                 field="policies")
            policy, rules = policies[0], None
            if policy.startswith("soft") and c.mv < V(2, 15):
                raise BadRequest("Soft policies need microversion 2.15 or later.",
                                 field="policies")
        g = await call(lambda: self.svc.create_group(c.ctx, name=name, policy=policy,
                                                     rules=rules))
        return _json({"server_group": render.server_group(g, c.mv)})

    async def show_group(self, c):
        g = await call(self.svc.get_group, c.ctx, c.params["id"])
        return _json({"server_group": render.server_group(g, c.mv)})

    async def delete_group(self, c):
        await call(self.svc.delete_group, c.ctx, c.params["id"])
        return Response(status_code=204)

    # -- zones, services, hypervisors ------------------------------------------------------
    async def list_zones(self, c):
        hosts = await call(self.svc.list_hosts)
        zones = sorted({h.availability_zone for h in hosts if not h.disabled})
        return _json({"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": None} for z in zones]})

    async def list_zones_detail(self, c):
        self._admin(c)
        hosts = await call(self.svc.list_hosts)
        zones: dict = {}
        for h in hosts:
            zones.setdefault(h.availability_zone, {})[h.hostname] = {"nova-compute": {
                "available": not h.disabled, "active": True,
                "updated_at": render.iso_micro(h.heartbeat_at)}}
        return _json({"availabilityZoneInfo": [
            {"zoneName": z, "zoneState": {"available": True}, "hosts": hs}
            for z, hs in sorted(zones.items())]})

    @staticmethod
    def _admin(c):
        if not c.ctx.is_admin:
            raise Forbidden("Policy doesn't allow this operation to be performed: admin only.")

    async def list_services(self, c):
        self._admin(c)
        hosts = await call(self.svc.list_hosts)
        q = c.query
        rows = [render.service(h, c.mv) for h in hosts]
        if q.get("host"):
            rows = [r for r in rows if r["host"] == q["host"]]
        if q.get("binary"):
            rows = [r for r in rows if r["binary"] == q["binary"]]
        return _json({"services": rows})

    async def update_service(self, c):
        if c.mv < V(2, 53):
            raise NotFound("Updating a service by id needs microversion 2.53 or later.")
        body = await json_body(c.request)
        status = body.get("status")
        if status is not None and status not in ("enabled", "disabled"):
            raise BadRequest("Invalid status: use enabled or disabled.", field="status")
        h = await call(lambda: self.svc.set_host_status(
            c.ctx, c.params["id"], disabled=None if status is None else status == "disabled",
            reason=body.get("disabled_reason"), forced_down=body.get("forced_down")))
        return _json({"service": render.service(h, c.mv)})

    async def _hypervisors(self, c, detail: bool, host_id: str | None = None):
        self._admin(c)
        hosts = await call(self.svc.list_hosts)
        used = await call(self.svc.host_usage)
        if host_id is not None:
            hosts = [h for h in hosts if host_id in (h.id, h.hostname)]
            if not hosts:
                raise NotFound(f"Hypervisor {host_id} could not be found.")
        pattern = c.query.get("hypervisor_hostname_pattern")
        if pattern:
            hosts = [h for h in hosts if pattern in h.hostname]
        servers = None
        if c.query.get("with_servers", "").lower() in ("true", "1") and c.mv >= V(2, 53):
            from stackbox.compute.service import ListQuery
            rows = await call(self.svc.list_servers, c.ctx, ListQuery(all_tenants=True))
            servers = {}
            for s in rows:
                servers.setdefault(s.host_id, []).append({"uuid": s.id, "name": s.name})
        uptime = uptime_text() if detail and c.mv >= V(2, 88) else None
        return [render.hypervisor(h, used.get(h.id, (0, 0, 0, 0)), c.mv, detail=detail,
                                  uptime=uptime,
                                  servers=None if servers is None else servers.get(h.id, []))
                for h in hosts]

    async def list_hypervisors(self, c):
        return _json({"hypervisors": await self._hypervisors(c, False)})

    async def list_hypervisors_detail(self, c):
        return _json({"hypervisors": await self._hypervisors(c, True)})

    async def show_hypervisor(self, c):
        rows = await self._hypervisors(c, True, c.params["id"])
        return _json({"hypervisor": rows[0]})

    async def hypervisor_uptime(self, c):
        if c.mv >= V(2, 88):
            raise NotFound("The hypervisor uptime API was removed in microversion 2.88; "
                           "`uptime` is in the hypervisor body.")
        row = (await self._hypervisors(c, False, c.params["id"]))[0]
        row["uptime"] = uptime_text()
        return _json({"hypervisor": row})

    async def hypervisor_statistics(self, c):
        if c.mv >= V(2, 88):
            raise NotFound("The hypervisor statistics API was removed in microversion 2.88.")
        self._admin(c)
        hosts = await call(self.svc.list_hosts)
        used = await call(self.svc.host_usage)
        total = {"count": len(hosts), "vcpus": 0, "memory_mb": 0, "local_gb": 0,
                 "vcpus_used": 0, "memory_mb_used": 0, "local_gb_used": 0, "free_ram_mb": 0,
                 "free_disk_gb": 0, "current_workload": 0, "running_vms": 0,
                 "disk_available_least": 0}
        for h in hosts:
            u = used.get(h.id, (0, 0, 0, 0))
            total["vcpus"] += h.vcpus
            total["memory_mb"] += h.memory_mb
            total["local_gb"] += h.disk_gb
            total["vcpus_used"] += u[0]
            total["memory_mb_used"] += u[1] + h.reserved_memory_mb
            total["local_gb_used"] += u[2]
            total["free_ram_mb"] += h.memory_mb - u[1] - h.reserved_memory_mb
            total["free_disk_gb"] += h.disk_gb - u[2]
            total["disk_available_least"] += h.disk_gb - u[2]
            total["running_vms"] += u[3]
        return _json({"hypervisor_statistics": total})

    # -- limits and quotas -----------------------------------------------------------------
    async def limits(self, c):
        project = c.query.get("tenant_id") if c.ctx.is_admin else None
        project = project or c.ctx.project_id
        detail = await call(self.svc.quotas.detail, project, c.ctx.user_id)
        lim = {k: v["limit"] for k, v in detail.items()}
        use = {k: v["in_use"] for k, v in detail.items()}
        absolute = {"maxTotalInstances": lim["instances"], "maxTotalCores": lim["cores"],
                    "maxTotalRAMSize": lim["ram"], "maxServerMeta": lim["metadata_items"],
                    "maxImageMeta": lim["metadata_items"],
                    "maxTotalKeypairs": lim["key_pairs"],
                    "maxServerGroups": lim["server_groups"],
                    "maxServerGroupMembers": lim["server_group_members"],
                    "totalInstancesUsed": use["instances"], "totalCoresUsed": use["cores"],
                    "totalRAMUsed": use["ram"], "totalServerGroupsUsed": use["server_groups"]}
        if c.mv < V(2, 57):
            absolute.update({"maxPersonality": lim["injected_files"],
                             "maxPersonalitySize": lim["injected_file_content_bytes"]})
        if c.mv < V(2, 36):
            absolute.update({"maxSecurityGroups": -1, "maxSecurityGroupRules": -1,
                             "maxTotalFloatingIps": -1, "totalSecurityGroupsUsed": 0,
                             "totalFloatingIpsUsed": 0})
        return _json({"limits": {"rate": [], "absolute": absolute}})

    def _quota_view(self, c, values: dict, project: str | None) -> dict:
        out = dict(values)
        if c.mv >= V(2, 57):
            for k in ("injected_files", "injected_file_content_bytes",
                      "injected_file_path_bytes"):
                out.pop(k, None)
        if c.mv < V(2, 36):
            out.update(NETWORK_QUOTAS)
        if project is not None:
            out["id"] = project
        return out

    def _quota_project(self, c) -> str:
        project = c.params["project"]
        if project != c.ctx.project_id and not c.ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:show to be "
                            "performed for another project.")
        return project

    async def show_quota(self, c):
        project = self._quota_project(c)
        values = await call(self.svc.quotas.get, project)
        return _json({"quota_set": self._quota_view(c, values, project)})

    async def detail_quota(self, c):
        project = self._quota_project(c)
        values = await call(self.svc.quotas.detail, project, c.query.get("user_id"))
        if c.mv < V(2, 36):
            values.update({k: {"limit": v, "in_use": 0, "reserved": 0}
                           for k, v in NETWORK_QUOTAS.items()})
        return _json({"quota_set": self._quota_view(c, values, project)})

    async def default_quota(self, c):
        return _json({"quota_set": self._quota_view(c, dict(DEFAULT_QUOTAS),
                                                           c.params["project"])})

    async def update_quota(self, c):
        body = _object(await json_body(c.request), "quota_set")
        body.pop("force", None)
        values = await call(self.svc.quotas.update, c.ctx, c.params["project"], body)
        return _json({"quota_set": self._quota_view(c, values, None)})

    async def delete_quota(self, c):
        await call(self.svc.quotas.reset, c.ctx, c.params["project"])
        return Response(status_code=202)

    async def list_aggregates(self, c):
        """Host aggregates are not modelled; there are none (the CLI asks
        while showing a hypervisor)."""
        self._admin(c)
        return _json({"aggregates": []})

    async def extensions(self, c):
        return _json({"extensions": []})
