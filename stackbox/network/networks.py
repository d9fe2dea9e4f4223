"""Networks and subnets: provider attributes checked against the host's
bridge_mappings, subnet ranges and overlaps, the DHCP port of a network."""

from __future__ import annotations

import ipaddress

from sqlalchemy import delete, select

from stackbox.common.db import new_id
from stackbox.common.http.context import RequestContext
from stackbox.network import errors, ipam, render
from stackbox.network.base import ServiceBase
from stackbox.network.models import IpAllocation, Network, Port, Subnet

DHCP_OWNER = "network:dhcp"
VLAN_MAX = 4094
VNI_MAX = 2 ** 24 - 1
# ports a network may still have when it is deleted: they go with it
AUTO_OWNERS = (DHCP_OWNER,)


def dhcp_device_id(network_id: str) -> str:
    return f"dhcp-{network_id}"


class NetworksMixin(ServiceBase):
    # -- networks -----------------------------------------------------------------
    def _render_networks(self, s, nets: list[Network]) -> list[dict]:
        by_net: dict[str, list[str]] = {n.id: [] for n in nets}
        if nets:
            for sid, nid in s.execute(select(Subnet.id, Subnet.network_id).where(
                    Subnet.network_id.in_(list(by_net)))):
                by_net[nid].append(sid)
        return [render.network(n, by_net[n.id]) for n in nets]

    def list_networks(self, ctx: RequestContext) -> list[dict]:
        with self.db.read() as s:
            q = select(Network)
            if not ctx.is_admin:
                q = q.where((Network.project_id == ctx.project_id) | Network.shared
                            | Network.external)
            return self._render_networks(s, list(s.scalars(q.order_by(Network.created_at,
                                                                      Network.id))))

    def get_network(self, ctx: RequestContext, network_id: str) -> dict:
        with self.db.read() as s:
            return self._render_networks(s, [self._network(s, ctx, network_id)])[0]

    def _segment(self, s, attrs: dict) -> tuple[str, str | None, int | None, int]:
        """(network_type, physical_network, segmentation_id, mtu limit)."""
        mappings = self.net_settings.bridge_mappings
        given = {k: attrs.pop(k) for k in ("provider:network_type", "provider:physical_network",
                                          "provider:segmentation_id") if k in attrs}
        kind = given.get("provider:network_type")
        physnet = given.get("provider:physical_network")
        seg = given.get("provider:segmentation_id")
        if kind is None:
            if physnet is not None or seg is not None:
                raise errors.InvalidInput(
                    "Invalid input for provider:network_type. Reason: required when "
                    "provider:physical_network or provider:segmentation_id is given "
                    "(one of local, flat, vlan, vxlan).", field="provider:network_type")
            kind = self.net_settings.tenant_network_type
        if kind in ("flat", "vlan"):
            if physnet is None:
                raise errors.InvalidInput(
                    f"Invalid input for provider:physical_network. Reason: a {kind} network "
                    f"needs one of the configured physical networks: "
                    f"{', '.join(sorted(mappings)) or '(none)'}.",
                    field="provider:physical_network")
            if physnet not in mappings:
                raise errors.InvalidPhysicalNetwork(
                    f"Invalid input for provider:physical_network. Reason: physical network "
                    f"'{physnet}' is not in [network] bridge_mappings (known: "
                    f"{', '.join(sorted(mappings)) or 'none'}).",
                    field="provider:physical_network")
        elif physnet is not None:
            raise errors.InvalidInput(
                f"Invalid input for provider:physical_network. Reason: {kind} networks "
                f"have no physical network.", field="provider:physical_network")
        if kind != "local":
            # segments are shared by every project: one allocation at a time
            self._serialize(s, f"network-segment:{kind}")
        taken = select(Network.id).where(Network.network_type == kind)
        if kind == "flat":
            if seg is not None:
                raise errors.InvalidInput(
                    "Invalid input for provider:segmentation_id. Reason: flat networks "
                    "have no segmentation id.", field="provider:segmentation_id")
            if s.scalar(taken.where(Network.physical_network == physnet)) is not None:
                raise errors.SegmentInUse(
                    f"Unable to create the flat network. Physical network {physnet} is "
                    f"in use.", field="provider:physical_network")
        elif kind == "vlan":
            if seg is None or not 1 <= seg <= VLAN_MAX:
                raise errors.InvalidInput(
                    f"Invalid input for provider:segmentation_id. Reason: VLAN id "
                    f"{seg} is not in range 1 through {VLAN_MAX}.",
                    field="provider:segmentation_id")
            if s.scalar(taken.where(Network.physical_network == physnet,
                                    Network.segmentation_id == seg)) is not None:
                raise errors.SegmentInUse(
                    f"Unable to create the network. The VLAN {seg} on physical network "
                    f"{physnet} is in use.", field="provider:segmentation_id")
        elif kind == "vxlan":
            used = set(s.scalars(select(Network.segmentation_id).where(
                Network.network_type == "vxlan")))
            if seg is None:
                seg = next(v for v in range(1, VNI_MAX + 1) if v not in used)
            elif not 1 <= seg <= VNI_MAX:
                raise errors.InvalidInput(
                    f"Invalid input for provider:segmentation_id. Reason: VNI {seg} is not "
                    f"in range 1 through {VNI_MAX}.", field="provider:segmentation_id")
            elif seg in used:
                raise errors.SegmentInUse(f"The VXLAN id {seg} is in use.",
                                          field="provider:segmentation_id")
        elif seg is not None:
            raise errors.InvalidInput(
                "Invalid input for provider:segmentation_id. Reason: local networks have "
                "no segmentation id.", field="provider:segmentation_id")
        mtu = self.net_settings.mtu - (50 if kind == "vxlan" else 0)
        return kind, physnet, seg, mtu

    def create_network(self, ctx: RequestContext, attrs: dict) -> dict:
        with self.db.transaction() as s:
            project = self._project_for_create(ctx, attrs)
            self._check_quota(s, project, "network")
            kind, physnet, seg, max_mtu = self._segment(s, attrs)
            mtu = attrs.get("mtu", max_mtu)
            if mtu > max_mtu:
                raise errors.InvalidInput(
                    f"Invalid input for mtu. Reason: Requested MTU is too big, maximum is "
                    f"{max_mtu}.", field="mtu")
            n = Network(id=new_id_uuid(), project_id=project, name=attrs.get("name", ""),
                        description=attrs.get("description", ""),
                        admin_state_up=attrs.get("admin_state_up", True),
                        shared=attrs.get("shared", False),
                        external=attrs.get("router:external", False), mtu=mtu,
                        port_security_enabled=attrs.get("port_security_enabled", True),
                        network_type=kind, physical_network=physnet, segmentation_id=seg,
                        availability_zone_hints=attrs.get("availability_zone_hints", []),
                        tags=[])
            s.add(n)
            s.flush()
            return self._render_networks(s, [n])[0]

    def update_network(self, ctx: RequestContext, network_id: str, attrs: dict) -> dict:
        with self.db.transaction() as s:
            n = self._network(s, ctx, network_id)
            self._require_owner(ctx, n, "update_network")
            if "mtu" in attrs:
                max_mtu = self.net_settings.mtu - (50 if n.network_type == "vxlan" else 0)
                if attrs["mtu"] > max_mtu:
                    raise errors.InvalidInput(
                        f"Invalid input for mtu. Reason: Requested MTU is too big, maximum "
                        f"is {max_mtu}.", field="mtu")
                n.mtu = attrs["mtu"]
            if attrs.get("shared") is False and n.shared:
                foreign = s.scalar(select(Port.id).where(
                    Port.network_id == n.id, Port.project_id != n.project_id,
                    Port.project_id != "", ~Port.device_owner.startswith("network:")))
                if foreign:
                    raise errors.NetworkInUse(
                        f"Unable to reconfigure sharing settings for network {n.id}. "
                        f"Multiple tenants are using it.", field="shared")
            for key, col in (("name", "name"), ("description", "description"),
                             ("admin_state_up", "admin_state_up"), ("shared", "shared"),
                             ("router:external", "external"),
                             ("port_security_enabled", "port_security_enabled")):
                if key in attrs:
                    setattr(n, col, attrs[key])
            self._touch(n)
            return self._render_networks(s, [n])[0]

    def delete_network(self, ctx: RequestContext, network_id: str) -> None:
        with self.db.transaction() as s:
            n = self._network(s, ctx, network_id)
            self._require_owner(ctx, n, "delete_network")
            busy = s.scalar(select(Port.id).where(Port.network_id == n.id,
                                                  Port.device_owner.notin_(AUTO_OWNERS)))
            if busy:
                raise errors.NetworkInUse(
                    f"Unable to complete operation on network {n.id}. There are one or "
                    f"more ports still in use on the network (port {busy}).",
                    field="network_id")
            s.execute(delete(IpAllocation).where(IpAllocation.network_id == n.id))
            s.execute(delete(Port).where(Port.network_id == n.id))
            s.execute(delete(Subnet).where(Subnet.network_id == n.id))
            s.delete(n)

    def _require_owner(self, ctx: RequestContext, obj, action: str) -> None:
        if not self._owner(ctx, obj):
            raise errors.PolicyNotAuthorized(f"({action}) is disallowed by policy")

    # -- subnets ------------------------------------------------------------------
    def list_subnets(self, ctx: RequestContext) -> list[dict]:
        with self.db.read() as s:
            q = select(Subnet)
            if not ctx.is_admin:
                visible = select(Network.id).where(
                    (Network.project_id == ctx.project_id) | Network.shared | Network.external)
                q = q.where((Subnet.project_id == ctx.project_id)
                            | Subnet.network_id.in_(visible))
            return [render.subnet(sn) for sn in s.scalars(q.order_by(Subnet.created_at,
                                                                     Subnet.id))]

    def get_subnet(self, ctx: RequestContext, subnet_id: str) -> dict:
        with self.db.read() as s:
            return render.subnet(self._subnet(s, ctx, subnet_id))

    def create_subnet(self, ctx: RequestContext, attrs: dict) -> dict:
        def create(s, attempt):
            a = dict(attrs)
            if "network_id" not in a:
                raise errors.InvalidInput("Invalid input for network_id. Reason: a required "
                                          "property is missing.", field="network_id")
            n = self._network(s, ctx, a["network_id"])
            self._require_owner(ctx, n, "create_subnet")
            project = self._project_for_create(ctx, a)
            self._check_quota(s, project, "subnet")
            version = a.get("ip_version", 4)
            if version not in (4, 6):
                raise errors.InvalidInput("Invalid input for ip_version. Reason: "
                                          f"'{version}' is not in [4, 6].", field="ip_version")
            if a.get("cidr") is None:
                raise errors.InvalidInput(
                    "Invalid input for cidr. Reason: a cidr is required (subnet pools are "
                    "not supported by this cloud).", field="cidr")
            net = ipam.parse_cidr(a["cidr"], version=version)
            others = list(s.scalars(select(Subnet.cidr).where(Subnet.network_id == n.id)))
            clash = ipam.overlaps(net, others)
            if clash:
                raise errors.OverlappingSubnet(
                    f"Invalid input for cidr. Reason: Requested subnet with cidr: {net} for "
                    f"network: {n.id} overlaps with another subnet ({clash}).", field="cidr")
            gateway = self._gateway(net, a) if "gateway_ip" in a else ipam.first_host(net)
            if "allocation_pools" in a:
                pools = ipam.validate_pools(
                    net, [(p["start"], p["end"]) for p in a["allocation_pools"]], gateway)
            else:
                pools = ipam.default_pools(net, gateway)
            sn = Subnet(id=new_id_uuid(), network_id=n.id, project_id=project,
                        name=a.get("name", ""), description=a.get("description", ""),
                        ip_version=version, cidr=str(net),
                        gateway_ip=str(gateway) if gateway is not None else None,
                        enable_dhcp=a.get("enable_dhcp", True), allocation_pools=pools,
                        dns_nameservers=a.get("dns_nameservers", []),
                        host_routes=self._host_routes(net, a.get("host_routes", [])),
                        ipv6_ra_mode=a.get("ipv6_ra_mode"),
                        ipv6_address_mode=a.get("ipv6_address_mode"), tags=[])
            s.add(sn)
            s.flush()
            if sn.enable_dhcp:
                self._ensure_dhcp_port(s, n, attempt)
            self._touch(n)
            return render.subnet(sn)
        return self._retrying(create)

    @staticmethod
    def _gateway(net, a: dict):
        if a.get("gateway_ip") is None:
            return None
        gw = ipam.parse_ip(a["gateway_ip"], field="gateway_ip")
        if gw.version != net.version or not ipam.usable(net, gw):
            raise errors.GatewayNotInSubnet(
                f"Invalid input for gateway_ip. Reason: gateway {gw} is not a usable address "
                f"of the subnet {net} (usable: {ipam.first_host(net)}-{ipam.last_host(net)}).",
                field="gateway_ip")
        return gw

    @staticmethod
    def _host_routes(net, routes: list[dict]) -> list[list[str]]:
        out = []
        for r in routes:
            dest = ipaddress.ip_network(r["destination"])
            hop = ipaddress.ip_address(r["nexthop"])
            if dest.version != net.version or hop.version != net.version:
                raise errors.InvalidInput(
                    f"Invalid input for host_routes. Reason: route {r} is not IPv{net.version}.",
                    field="host_routes")
            out.append([str(dest), str(hop)])
        if len({d for d, _ in out}) != len(out):
            raise errors.InvalidInput("Invalid input for host_routes. Reason: duplicate "
                                      "destination.", field="host_routes")
        return out

    def update_subnet(self, ctx: RequestContext, subnet_id: str, attrs: dict) -> dict:
        def update(s, attempt):
            sn = self._subnet(s, ctx, subnet_id)
            self._require_owner(ctx, sn, "update_subnet")
            net = ipaddress.ip_network(sn.cidr)
            gateway = (self._gateway(net, attrs) if "gateway_ip" in attrs
                       else ipaddress.ip_address(sn.gateway_ip) if sn.gateway_ip else None)
            if "allocation_pools" in attrs:
                pools = [(p["start"], p["end"]) for p in attrs["allocation_pools"]]
            else:
                pools = [tuple(p) for p in sn.allocation_pools]
            sn.allocation_pools = ipam.validate_pools(net, pools, gateway)
            sn.gateway_ip = str(gateway) if gateway is not None else None
            for key in ("name", "description", "dns_nameservers"):
                if key in attrs:
                    setattr(sn, key, attrs[key])
            if "host_routes" in attrs:
                sn.host_routes = self._host_routes(net, attrs["host_routes"])
            if "enable_dhcp" in attrs:
                sn.enable_dhcp = attrs["enable_dhcp"]
                if sn.enable_dhcp:
                    s.flush()
                    self._ensure_dhcp_port(s, s.get(Network, sn.network_id), attempt)
            self._touch(sn)
            return render.subnet(sn)
        return self._retrying(update)

    def delete_subnet(self, ctx: RequestContext, subnet_id: str) -> None:
        with self.db.transaction() as s:
            sn = self._subnet(s, ctx, subnet_id)
            self._require_owner(ctx, sn, "delete_subnet")
            users = s.execute(select(Port.id, Port.device_owner).join(
                IpAllocation, IpAllocation.port_id == Port.id).where(
                IpAllocation.subnet_id == sn.id)).all()
            busy = [pid for pid, owner in users if owner not in AUTO_OWNERS]
            if busy:
                raise errors.SubnetInUse(
                    f"Unable to complete operation on subnet {sn.id}: One or more ports have "
                    f"an IP allocation from this subnet (port {busy[0]}).", field="subnet_id")
            s.execute(delete(IpAllocation).where(IpAllocation.subnet_id == sn.id))
            network_id = sn.network_id
            s.delete(sn)
            s.flush()
            for pid, _ in users:
                if s.scalar(select(IpAllocation.ip_address).where(
                        IpAllocation.port_id == pid)) is None:
                    s.execute(delete(Port).where(Port.id == pid))
            self._touch(s.get(Network, network_id))

    # -- the DHCP port ------------------------------------------------------------
    def _ensure_dhcp_port(self, s, n: Network, attempt: int) -> None:
        """One network:dhcp port per network with an address in every
        DHCP-enabled subnet (the DHCP server's address; the agent runs
        dnsmasq on it)."""
        subnets = list(s.scalars(select(Subnet).where(Subnet.network_id == n.id,
                                                      Subnet.enable_dhcp)))
        if not subnets:
            return
        port = s.scalar(select(Port).where(Port.network_id == n.id,
                                           Port.device_owner == DHCP_OWNER))
        if port is None:
            port = self._new_port(s, n, project_id=n.project_id, device_owner=DHCP_OWNER,
                                  device_id=dhcp_device_id(n.id), port_security=False,
                                  attempt=attempt)
            port.status = "ACTIVE"
        have = set(s.scalars(select(IpAllocation.subnet_id).where(
            IpAllocation.port_id == port.id)))
        for sn in subnets:
            if sn.id not in have:
                self._allocate(s, n, sn, port, None, attempt=attempt)


def new_id_uuid() -> str:
    """Neutron ids are dashed UUIDs; clients and users expect that form."""
    import uuid
    return str(uuid.uuid4())
