"""Routers (gateway, interfaces, extra routes) and floating IPs."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select

from stackbox.common.errors import BadRequest
from stackbox.common.http.context import RequestContext
from stackbox.network import errors, render
from stackbox.network.base import ServiceBase
from stackbox.network.models import FloatingIp, IpAllocation, Network, Port, Router, Subnet

GATEWAY_OWNER = "network:router_gateway"
INTERFACE_OWNER = "network:router_interface"
FIP_OWNER = "network:floatingip"
MAX_ROUTES = 30


class RoutersMixin(ServiceBase):
    # -- rendering ----------------------------------------------------------------------
    def _gateway_info(self, s, r: Router) -> dict | None:
        if not r.gw_port_id:
            return None
        port = s.get(Port, r.gw_port_id)
        ips = self._fixed_ips(s, [port.id])[port.id]
        return {"network_id": port.network_id, "enable_snat": r.enable_snat,
                "external_fixed_ips": [{"subnet_id": sid, "ip_address": ip}
                                       for sid, ip in ips]}

    def _render_router(self, s, r: Router) -> dict:
        return render.router(r, self._gateway_info(s, r))

    def list_routers(self, ctx: RequestContext) -> list[dict]:
        with self.db.read() as s:
            q = select(Router)
            if not ctx.is_admin:
                q = q.where(Router.project_id == ctx.project_id)
            return [self._render_router(s, r)
                    for r in s.scalars(q.order_by(Router.created_at, Router.id))]

    def get_router(self, ctx: RequestContext, router_id: str) -> dict:
        with self.db.read() as s:
            return self._render_router(s, self._router(s, ctx, router_id))

    # -- create / update / delete -------------------------------------------------------
    def create_router(self, ctx: RequestContext, attrs: dict) -> dict:
        def create(s, attempt):
            from stackbox.network.networks import new_id_uuid
            a = dict(attrs)
            project = self._project_for_create(ctx, a)
            self._check_quota(s, project, "router")
            r = Router(id=new_id_uuid(), project_id=project, name=a.get("name", ""),
                       description=a.get("description", ""),
                       admin_state_up=a.get("admin_state_up", True), routes=[],
                       availability_zone_hints=a.get("availability_zone_hints", []), tags=[])
            s.add(r)
            s.flush()
            if a.get("external_gateway_info"):
                self._set_gateway(s, ctx, r, a["external_gateway_info"], attempt)
            return self._render_router(s, r)
        return self._retrying(create)

    def update_router(self, ctx: RequestContext, router_id: str, attrs: dict) -> dict:
        def update(s, attempt):
            r = self._router(s, ctx, router_id)
            for key in ("name", "description", "admin_state_up"):
                if key in attrs:
                    setattr(r, key, attrs[key])
            if "external_gateway_info" in attrs:
                self._set_gateway(s, ctx, r, attrs["external_gateway_info"], attempt)
            if "routes" in attrs:
                r.routes = self._valid_routes(s, r, attrs["routes"])
            self._touch(r)
            return self._render_router(s, r)
        return self._retrying(update)

    def delete_router(self, ctx: RequestContext, router_id: str) -> None:
        with self.db.transaction() as s:
            r = self._router(s, ctx, router_id)
            iface = s.scalar(select(Port.id).where(Port.device_id == r.id,
                                                   Port.device_owner == INTERFACE_OWNER))
            if iface:
                raise errors.RouterInUse(f"Router {r.id} still has ports (port {iface}); "
                                         f"remove its interfaces first.", field="router_id")
            self._drop_gateway(s, r)
            s.delete(r)

    # -- gateway ------------------------------------------------------------------------
    def _external_network(self, s, ctx, network_id: str, field: str) -> Network:
        n = s.get(Network, network_id)
        if n is None or not (n.external or self._owner(ctx, n) or n.shared):
            raise errors.NetworkNotFound(f"Network {network_id} could not be found.",
                                         field=field)
        if not n.external:
            raise errors.InvalidInput(f"Bad request: Network {network_id} is not a valid "
                                      f"external network.", field=field)
        return n

    def _set_gateway(self, s, ctx, r: Router, info: dict, attempt: int) -> None:
        if not info:
            self._drop_gateway(s, r)
            return
        n = self._external_network(s, ctx, info["network_id"],
                                   "external_gateway_info.network_id")
        r.enable_snat = info.get("enable_snat", True)
        current = s.get(Port, r.gw_port_id) if r.gw_port_id else None
        wanted_ips = info.get("external_fixed_ips")
        if current is not None and current.network_id == n.id:
            if wanted_ips is not None:
                self._replace_ips(s, n, current, wanted_ips, attempt)
            return
        if current is not None:
            self._drop_gateway(s, r)
        port = self._new_port(s, n, project_id="", device_owner=GATEWAY_OWNER,
                              device_id=r.id, port_security=False, attempt=attempt)
        port.status = "ACTIVE"
        requested = self._requested_ips(s, n, wanted_ips or None)
        if not requested or requested[0][0] is None:
            raise errors.InvalidInput(f"Bad router request: external network {n.id} has no "
                                      f"subnet.", field="external_gateway_info")
        for sn, ip in requested:
            self._allocate(s, n, sn, port, ip, attempt=attempt)
        r.gw_port_id = port.id

    def _drop_gateway(self, s, r: Router) -> None:
        if not r.gw_port_id:
            return
        fip = s.scalar(select(FloatingIp.id).where(FloatingIp.router_id == r.id))
        if fip:
            raise errors.RouterInUse(
                f"Gateway cannot be updated for router {r.id}, since a gateway to external "
                f"network is required by one or more floating IPs ({fip}).",
                field="external_gateway_info")
        port = s.get(Port, r.gw_port_id)
        r.gw_port_id = None
        s.flush()
        if port is not None:
            self._delete_port(s, port)

    # -- extra routes -------------------------------------------------------------------
    def _connected(self, s, r: Router) -> list[tuple[ipaddress._BaseNetwork, set[str]]]:
        ports = list(s.scalars(select(Port.id).where(
            Port.device_id == r.id, Port.device_owner.in_((INTERFACE_OWNER, GATEWAY_OWNER)))))
        rows = s.execute(select(Subnet.cidr, IpAllocation.ip_address).join(
            IpAllocation, IpAllocation.subnet_id == Subnet.id).where(
            IpAllocation.port_id.in_(ports or [""]))).all()
        return [(ipaddress.ip_network(c), {ip}) for c, ip in rows]

    def _valid_routes(self, s, r: Router, routes: list[dict]) -> list[list[str]]:
        connected = self._connected(s, r)
        own = set().union(*(ips for _, ips in connected)) if connected else set()
        out: list[list[str]] = []
        for route in routes:
            dest, hop = route["destination"], route["nexthop"]
            addr = ipaddress.ip_address(hop)
            if hop in own:
                raise errors.InvalidRoutes(
                    f"Invalid format for routes: {route}, the nexthop is used by router",
                    field="routes")
            if not any(addr in net for net, _ in connected):
                raise errors.InvalidRoutes(
                    f"Invalid format for routes: {route}, the nexthop is not connected with "
                    f"router", field="routes")
            if ipaddress.ip_network(dest).version != addr.version:
                raise errors.InvalidRoutes(f"Invalid format for routes: {route}, destination "
                                           f"and nexthop differ in IP version", field="routes")
            if [dest, hop] not in out:
                out.append([dest, hop])
        if len(out) > MAX_ROUTES:
            raise errors.InvalidRoutes(f"Number of routes {len(out)} exceeds the maximum "
                                       f"{MAX_ROUTES}.", field="routes")
        return out

    def add_extraroutes(self, ctx, router_id: str, routes: list[dict]) -> dict:
        with self.db.transaction() as s:
            r = self._router(s, ctx, router_id)
            r.routes = self._valid_routes(s, r, [{"destination": d, "nexthop": n}
                                                 for d, n in r.routes] + routes)
            self._touch(r)
            return self._render_router(s, r)

    def remove_extraroutes(self, ctx, router_id: str, routes: list[dict]) -> dict:
        with self.db.transaction() as s:
            r = self._router(s, ctx, router_id)
            gone = {(x["destination"], x["nexthop"]) for x in routes}
            r.routes = [x for x in r.routes if tuple(x) not in gone]
            self._touch(r)
            return self._render_router(s, r)

    # -- interfaces ---------------------------------------------------------------------
    def _iface_info(self, s, r: Router, port: Port) -> dict:
        ips = self._fixed_ips(s, [port.id])[port.id]
        return {"id": r.id, "tenant_id": r.project_id, "project_id": r.project_id,
                "port_id": port.id, "network_id": port.network_id,
                "subnet_id": ips[0][0] if ips else None,
                "subnet_ids": [sid for sid, _ in ips], "tags": []}

    def add_router_interface(self, ctx, router_id: str, *, subnet_id: str | None = None,
                             port_id: str | None = None) -> dict:
        if (subnet_id is None) == (port_id is None):
            raise BadRequest("Bad router request: Either subnet_id or port_id must be "
                             "specified (exactly one).", field="subnet_id")

        def add(s, attempt):
            r = self._router(s, ctx, router_id)
            if subnet_id is not None:
                sn = self._subnet(s, ctx, subnet_id)
                n = s.get(Network, sn.network_id)
                if not (self._owner(ctx, n) or n.shared):
                    raise errors.PolicyNotAuthorized("(add_router_interface) is disallowed "
                                                     "by policy", field="subnet_id")
                if sn.gateway_ip is None:
                    raise BadRequest(f"Bad router request: Subnet {sn.id} for router "
                                     f"interface must have a gateway IP.", field="subnet_id")
                self._check_overlap(s, r, [sn])
                port = self._new_port(s, n, project_id=r.project_id,
                                      device_owner=INTERFACE_OWNER, device_id=r.id,
                                      port_security=False, attempt=attempt)
                self._allocate(s, n, sn, port, sn.gateway_ip, attempt=attempt)
            else:
                port = self._port(s, ctx, port_id)
                if port.device_id or port.device_owner:
                    raise errors.PortInUse(
                        f"Unable to complete operation on port {port.id} for network "
                        f"{port.network_id}. Port already has an attached device "
                        f"{port.device_id or port.device_owner}.", field="port_id")
                ips = self._fixed_ips(s, [port.id])[port.id]
                if not ips:
                    raise BadRequest(f"Bad router request: Router port {port.id} must have "
                                     f"at least one fixed IP.", field="port_id")
                self._check_overlap(s, r, [s.get(Subnet, sid) for sid, _ in ips])
                port.device_owner, port.device_id = INTERFACE_OWNER, r.id
                self._set_security_groups(s, ctx, port, [])
            port.status = "ACTIVE"
            self._touch(r)
            s.flush()
            return self._iface_info(s, r, port)
        return self._retrying(add)

    def _check_overlap(self, s, r: Router, subnets: list[Subnet]) -> None:
        for new in subnets:
            net = ipaddress.ip_network(new.cidr)
            for have, _ in self._connected(s, r):
                if have.version == net.version and have.overlaps(net):
                    raise errors.InvalidInput(
                        f"Bad router request: Cidr {net} of subnet {new.id} overlaps with "
                        f"cidr {have} of a subnet already on router {r.id}.", field="subnet_id")

    def remove_router_interface(self, ctx, router_id: str, *, subnet_id: str | None = None,
                                port_id: str | None = None) -> dict:
        if subnet_id is None and port_id is None:
            raise BadRequest("Bad router request: Either subnet_id or port_id must be "
                             "specified.", field="subnet_id")
        with self.db.transaction() as s:
            r = self._router(s, ctx, router_id)
            ports = list(s.scalars(select(Port).where(Port.device_id == r.id,
                                                      Port.device_owner == INTERFACE_OWNER)))
            ips = self._fixed_ips(s, [p.id for p in ports])
            if port_id is not None:
                port = next((p for p in ports if p.id == port_id), None)
                if port is None or (subnet_id and subnet_id not in
                                    [sid for sid, _ in ips[port.id]]):
                    raise errors.RouterInterfaceNotFound(
                        f"Router {r.id} does not have an interface with id {port_id}",
                        field="port_id")
            else:
                port = next((p for p in ports if subnet_id in [sid for sid, _ in ips[p.id]]),
                            None)
                if port is None:
                    raise errors.RouterInterfaceNotFound(
                        f"Router {r.id} has no interface on subnet {subnet_id}",
                        field="subnet_id")
            info = self._iface_info(s, r, port)
            leaving = [ipaddress.ip_network(s.get(Subnet, sid).cidr) for sid, _ in ips[port.id]]
            for d, hop in r.routes:
                if any(ipaddress.ip_address(hop) in net for net in leaving):
                    raise errors.RouterInterfaceInUse(
                        f"Router interface for subnet {info['subnet_id']} on router {r.id} "
                        f"cannot be deleted, as it is required by one or more routes "
                        f"({d} via {hop}).", field="routes")
            for f in s.scalars(select(FloatingIp).where(FloatingIp.router_id == r.id)):
                if f.fixed_ip_address and any(ipaddress.ip_address(f.fixed_ip_address) in net
                                              for net in leaving):
                    raise errors.RouterInUse(
                        f"Router interface on subnet {info['subnet_id']} is required by "
                        f"floating IP {f.id}.", field="subnet_id")
            self._delete_port(s, port)
            self._touch(r)
            return info

    # -- floating IPs -------------------------------------------------------------------
    def _fip_view(self, s, f: FloatingIp) -> dict:
        details = None
        if f.port_id:
            p = s.get(Port, f.port_id)
            details = {"name": p.name, "network_id": p.network_id,
                       "mac_address": p.mac_address, "admin_state_up": p.admin_state_up,
                       "status": p.status, "device_id": p.device_id,
                       "device_owner": p.device_owner}
        return render.floatingip(f, details)

    def _fip(self, s, ctx, fip_id: str) -> FloatingIp:
        f = s.get(FloatingIp, fip_id) if fip_id else None
        if f is None or not self._owner(ctx, f):
            raise errors.FloatingIPNotFound(f"Floating IP {fip_id} could not be found",
                                            field="floatingip_id")
        return f

    def list_floatingips(self, ctx) -> list[dict]:
        with self.db.read() as s:
            q = select(FloatingIp)
            if not ctx.is_admin:
                q = q.where(FloatingIp.project_id == ctx.project_id)
            return [self._fip_view(s, f) for f in s.scalars(q.order_by(FloatingIp.created_at,
                                                                       FloatingIp.id))]

    def get_floatingip(self, ctx, fip_id: str) -> dict:
        with self.db.read() as s:
            return self._fip_view(s, self._fip(s, ctx, fip_id))

    def create_floatingip(self, ctx, attrs: dict) -> dict:
        if "floating_network_id" not in attrs:
            raise errors.InvalidInput("Invalid input for floating_network_id. Reason: a "
                                      "required property is missing.",
                                      field="floating_network_id")

        def create(s, attempt):
            from stackbox.network.networks import new_id_uuid
            a = dict(attrs)
            n = self._external_network(s, ctx, a["floating_network_id"], "floating_network_id")
            project = self._project_for_create(ctx, a)
            self._check_quota(s, project, "floatingip")
            fid = new_id_uuid()
            port = self._new_port(s, n, project_id="", device_owner=FIP_OWNER, device_id=fid,
                                  port_security=False, attempt=attempt)
            port.status = "ACTIVE"
            wanted = {}
            if a.get("subnet_id"):
                wanted["subnet_id"] = a["subnet_id"]
            if a.get("floating_ip_address"):
                wanted["ip_address"] = a["floating_ip_address"]
            requested = self._requested_ips(s, n, [wanted] if wanted else None)
            v4 = [(sn, ip) for sn, ip in requested if sn is not None and sn.ip_version == 4]
            if not v4:
                raise errors.IpAddressGenerationFailure(
                    f"No IPv4 subnet on external network {n.id} to allocate a floating IP "
                    f"from.", field="floating_network_id")
            address = self._allocate(s, n, v4[0][0], port, v4[0][1], attempt=attempt)
            f = FloatingIp(id=fid, project_id=project, floating_network_id=n.id,
                           floating_ip_address=address, floating_port_id=port.id,
                           description=a.get("description", ""), tags=[],
                           dns_name=a.get("dns_name", ""))
            s.add(f)
            s.flush()
            if a.get("port_id"):
                self._associate(s, ctx, f, a["port_id"], a.get("fixed_ip_address"))
            return self._fip_view(s, f)
        return self._retrying(create)

    def update_floatingip(self, ctx, fip_id: str, attrs: dict) -> dict:
        with self.db.transaction() as s:
            f = self._fip(s, ctx, fip_id)
            if "description" in attrs:
                f.description = attrs["description"]
            if "port_id" in attrs:
                if attrs["port_id"] is None:
                    f.port_id = f.fixed_ip_address = f.router_id = None
                else:
                    self._associate(s, ctx, f, attrs["port_id"], attrs.get("fixed_ip_address"))
            self._touch(f)
            s.flush()
            return self._fip_view(s, f)

    def delete_floatingip(self, ctx, fip_id: str) -> None:
        with self.db.transaction() as s:
            f = self._fip(s, ctx, fip_id)
            port = s.get(Port, f.floating_port_id)
            s.delete(f)
            s.flush()
            if port is not None:
                self._delete_port(s, port)

    def _associate(self, s, ctx, f: FloatingIp, port_id: str, fixed_ip: str | None) -> None:
        port = self._port(s, ctx, port_id)
        if not (ctx.is_admin or port.project_id == f.project_id):
            raise errors.PortNotFound(f"Port {port_id} could not be found.", field="port_id")
        ips = [(sid, ip) for sid, ip in self._fixed_ips(s, [port.id])[port.id]
               if ipaddress.ip_address(ip).version == 4]
        if fixed_ip is not None:
            ips = [(sid, ip) for sid, ip in ips if ip == fixed_ip]
            if not ips:
                raise BadRequest(f"Bad floatingip request: Port {port.id} does not have fixed "
                                 f"ip {fixed_ip}.", field="fixed_ip_address")
        if not ips:
            raise BadRequest(f"Bad floatingip request: Port {port.id} does not have any IPv4 "
                             f"address.", field="port_id")
        if len(ips) > 1 and fixed_ip is None:
            raise BadRequest(f"Bad floatingip request: Port {port.id} has multiple fixed "
                             f"IPv4 addresses. Must provide a specific IPv4 address when "
                             f"assigning a floating IP.", field="fixed_ip_address")
        subnet_id, ip = ips[0]
        router_id = self._router_for(s, subnet_id, f.floating_network_id)
        if router_id is None:
            raise errors.ExternalGatewayForFloatingIPNotFound(
                f"External network {f.floating_network_id} is not reachable from subnet "
                f"{subnet_id}. Therefore, cannot associate Port {port.id} with a Floating IP.",
                field="port_id")
        other = s.scalar(select(FloatingIp.id).where(
            FloatingIp.port_id == port.id, FloatingIp.fixed_ip_address == ip,
            FloatingIp.id != f.id))
        if other:
            raise errors.FloatingIPPortAlreadyAssociated(
                f"Cannot associate floating IP {f.floating_ip_address} ({f.id}) with port "
                f"{port.id} using fixed IP {ip}, as that fixed IP already has a floating IP "
                f"on external network {f.floating_network_id} ({other}).", field="port_id")
        f.port_id, f.fixed_ip_address, f.router_id = port.id, ip, router_id

    def _router_for(self, s, subnet_id: str, external_network_id: str) -> str | None:
        for r in s.scalars(select(Router).join(Port, Port.device_id == Router.id).join(
                IpAllocation, IpAllocation.port_id == Port.id).where(
                Port.device_owner == INTERFACE_OWNER, IpAllocation.subnet_id == subnet_id)):
            if r.gw_port_id and s.get(Port, r.gw_port_id).network_id == external_network_id:
                return r.id
        return None

