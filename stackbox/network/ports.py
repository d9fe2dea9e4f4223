"""Ports: addresses from IPAM, MAC addresses, security groups and
allowed address pairs, binding to a host."""

from __future__ import annotations

import ipaddress
import random

from sqlalchemy import delete, select, update

from stackbox.common.http.context import RequestContext
from stackbox.network import errors, ipam, render
from stackbox.network.base import ServiceBase
from stackbox.network.models import (FloatingIp, IpAllocation, Network, Port, PortSecurityGroup,
                                     SecurityGroup, Subnet)

# ports that belong to a router or floating IP are managed through those APIs
MANAGED_OWNERS = ("network:router_interface", "network:router_gateway", "network:floatingip")


def random_mac() -> str:
    return "fa:16:3e:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))


def eui64(cidr: str, mac: str) -> str:
    net = ipaddress.ip_network(cidr)
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    iid = bytes(b[:3] + [0xff, 0xfe] + b[3:])
    return str(net.network_address + int.from_bytes(iid, "big"))


class PortsMixin(ServiceBase):
    # _default_sg(s, project_id) comes from SecurityGroupsMixin

    def _render_ports(self, s, ports: list[Port]) -> list[dict]:
        ids = [p.id for p in ports]
        ips, sgs = self._fixed_ips(s, ids), self._port_sgs(s, ids)
        return [render.port(p, ips[p.id], sgs[p.id]) for p in ports]

    def list_ports(self, ctx: RequestContext, *, network_id: str | None = None,
                   device_id: str | None = None, device_owner: str | None = None) -> list[dict]:
        with self.db.read() as s:
            q = select(Port)
            if not ctx.is_admin:
                mine = select(Network.id).where(Network.project_id == ctx.project_id)
                q = q.where((Port.project_id == ctx.project_id) | Port.network_id.in_(mine))
            for col, value in ((Port.network_id, network_id), (Port.device_id, device_id),
                               (Port.device_owner, device_owner)):
                if value is not None:
                    q = q.where(col == value)
            return self._render_ports(s, list(s.scalars(q.order_by(Port.created_at, Port.id))))

    def get_port(self, ctx: RequestContext, port_id: str) -> dict:
        with self.db.read() as s:
            return self._render_ports(s, [self._port(s, ctx, port_id)])[0]

    # -- building blocks ----------------------------------------------------------------
    def _new_port(self, s, n: Network, *, project_id: str, device_owner: str = "",
                  device_id: str = "", port_security: bool | None = None,
                  mac: str | None = None, attempt: int = 0, **extra) -> Port:
        from stackbox.network.networks import new_id_uuid
        if mac is None:
            mac = random_mac()
        elif s.scalar(select(Port.id).where(Port.network_id == n.id,
                                            Port.mac_address == mac)) is not None:
            raise errors.MacAddressInUse(
                f"Unable to complete operation for network {n.id}. The mac address {mac} is "
                f"in use.", field="mac_address")
        p = Port(id=new_id_uuid(), network_id=n.id, project_id=project_id, mac_address=mac,
                 device_owner=device_owner, device_id=device_id,
                 port_security_enabled=(n.port_security_enabled if port_security is None
                                        else port_security),
                 allowed_address_pairs=[], tags=[], **extra)
        s.add(p)
        s.flush()
        return p

    def _allocate(self, s, n: Network, sn: Subnet, port: Port, ip: str | None, *,
                  attempt: int) -> str:
        if ip is not None:
            addr = ipaddress.ip_address(ip)
            if not ipam.usable(ipaddress.ip_network(sn.cidr), addr):
                raise errors.InvalidIpForSubnet(
                    f"IP address {ip} is not a valid IP for the specified subnet {sn.id} "
                    f"({sn.cidr}).", field="fixed_ips")
            # the gateway address is kept for the router interface that will own it
            gateway_taken = (str(addr) == sn.gateway_ip
                             and port.device_owner != "network:router_interface")
            if gateway_taken or s.get(IpAllocation, (n.id, str(addr))) is not None:
                raise errors.IpAddressInUse(
                    f"Unable to complete operation for network {n.id}. The IP address {ip} "
                    f"is in use.", field="fixed_ips")
            chosen = str(addr)
        elif sn.ip_version == 6 and sn.ipv6_address_mode in ("slaac", "dhcpv6-stateless"):
            chosen = eui64(sn.cidr, port.mac_address)
        else:
            used = set(s.scalars(select(IpAllocation.ip_address).where(
                IpAllocation.network_id == n.id, IpAllocation.subnet_id == sn.id)))
            chosen = ipam.pick([tuple(p) for p in sn.allocation_pools], used, attempt=attempt)
            if chosen is None:
                raise errors.IpAddressGenerationFailure(
                    f"No more IP addresses available on network {n.id} (subnet {sn.id}).",
                    field="fixed_ips")
        s.add(IpAllocation(network_id=n.id, ip_address=chosen, subnet_id=sn.id,
                           port_id=port.id))
        s.flush()   # a concurrent create that took it fails here and is retried
        return chosen

    def _requested_ips(self, s, n: Network, fixed_ips: list[dict] | None
                       ) -> list[tuple[Subnet, str | None]]:
        subnets = list(s.scalars(select(Subnet).where(Subnet.network_id == n.id).order_by(
            Subnet.created_at, Subnet.id)))
        if fixed_ips is None:
            wanted = []
            v4 = [sn for sn in subnets if sn.ip_version == 4]
            v6 = [sn for sn in subnets if sn.ip_version == 6]
            if v4:
                wanted.append((self._subnet_with_room(s, n, v4), None))
            if v6:
                wanted.append((v6[0], None))
            return wanted
        out = []
        by_id = {sn.id: sn for sn in subnets}
        for entry in fixed_ips:
            sid, ip = entry.get("subnet_id"), entry.get("ip_address")
            if sid is not None:
                sn = by_id.get(sid)
                if sn is None:
                    raise errors.InvalidInput(
                        f"Invalid input for fixed_ips. Reason: subnet {sid} is not a subnet "
                        f"of network {n.id}.", field="fixed_ips")
            elif ip is not None:
                addr = ipaddress.ip_address(ip)
                sn = next((x for x in subnets if addr in ipaddress.ip_network(x.cidr)), None)
                if sn is None:
                    raise errors.InvalidIpForNetwork(
                        f"IP address {ip} is not a valid IP for any of the subnets on the "
                        f"specified network {n.id}.", field="fixed_ips")
            else:
                raise errors.InvalidInput("Invalid input for fixed_ips. Reason: each entry "
                                          "needs subnet_id or ip_address.", field="fixed_ips")
            out.append((sn, ip))
        ips = [ip for _, ip in out if ip]
        if len(set(ips)) != len(ips):
            raise errors.InvalidInput("Invalid input for fixed_ips. Reason: duplicate IP "
                                      "address.", field="fixed_ips")
        return out

    def _subnet_with_room(self, s, n: Network, subnets: list[Subnet]) -> Subnet:
        for sn in subnets[:-1]:
            used = s.scalar(select(IpAllocation.ip_address).where(
                IpAllocation.subnet_id == sn.id).limit(1).offset(
                max(ipam.pool_size([tuple(p) for p in sn.allocation_pools]) - 1, 0)))
            if used is None:
                return sn
        return subnets[-1]

    def _set_security_groups(self, s, ctx: RequestContext, port: Port,
                             sg_ids: list[str] | None) -> None:
        s.execute(delete(PortSecurityGroup).where(PortSecurityGroup.port_id == port.id))
        if sg_ids is None:
            if not port.port_security_enabled or port.device_owner.startswith("network:"):
                return
            sg_ids = [self._default_sg(s, port.project_id).id]
        if sg_ids and not port.port_security_enabled:
            raise errors.PortSecurityRequired(
                "Port security must be enabled and port must have an IP address in order to "
                "use security groups.", field="security_groups")
        for sg_id in sg_ids:
            sg = s.get(SecurityGroup, sg_id)
            if sg is None or not (ctx.is_admin or sg.project_id == port.project_id):
                raise errors.SecurityGroupNotFound(f"Security group {sg_id} does not exist",
                                                   field="security_groups")
            s.add(PortSecurityGroup(port_id=port.id, security_group_id=sg_id))

    @staticmethod
    def _address_pairs(port: Port, pairs: list[dict]) -> list[list[str]]:
        if pairs and not port.port_security_enabled:
            raise errors.PortSecurityRequired(
                "Port Security must be enabled in order to have allowed address pairs on a "
                "port.", field="allowed_address_pairs")
        out = [[p["ip_address"], p.get("mac_address") or port.mac_address] for p in pairs]
        if len({tuple(x) for x in out}) != len(out):
            raise errors.InvalidInput("Invalid input for allowed_address_pairs. Reason: "
                                      "duplicate address pair.", field="allowed_address_pairs")
        return out

    @staticmethod
    def _status(port: Port) -> str:
        if port.device_owner == "network:dhcp" or (
                port.device_owner.startswith("network:router") and port.device_id):
            return "ACTIVE"
        if port.admin_state_up and port.device_id and port.binding_host_id:
            return "ACTIVE"
        return "DOWN"

    # -- API operations -----------------------------------------------------------------
    def create_port(self, ctx: RequestContext, attrs: dict) -> dict:
        if "network_id" not in attrs:
            raise errors.InvalidInput("Invalid input for network_id. Reason: a required "
                                      "property is missing.", field="network_id")

        def create(s, attempt):
            a = dict(attrs)
            n = self._network(s, ctx, a["network_id"])
            if not (self._owner(ctx, n) or n.shared):
                raise errors.PolicyNotAuthorized(
                    f"(rule:create_port) is disallowed by policy: network {n.id} belongs to "
                    f"another project and is not shared.", field="network_id")
            project = self._project_for_create(ctx, a)
            self._check_quota(s, project, "port")
            port = self._new_port(
                s, n, project_id=project, device_owner=a.get("device_owner", ""),
                device_id=a.get("device_id", ""), port_security=a.get("port_security_enabled"),
                mac=a.get("mac_address"), attempt=attempt, name=a.get("name", ""),
                description=a.get("description", ""),
                admin_state_up=a.get("admin_state_up", True),
                binding_host_id=a.get("binding:host_id", ""), dns_name=a.get("dns_name", ""))
            for sn, ip in self._requested_ips(s, n, a.get("fixed_ips")):
                self._allocate(s, n, sn, port, ip, attempt=attempt)
            port.allowed_address_pairs = self._address_pairs(
                port, a.get("allowed_address_pairs", []))
            self._set_security_groups(s, ctx, port, a.get("security_groups"))
            port.status = self._status(port)
            s.flush()
            return self._render_ports(s, [port])[0]
        return self._retrying(create)

    def update_port(self, ctx: RequestContext, port_id: str, attrs: dict) -> dict:
        def update(s, attempt):
            port = self._port(s, ctx, port_id)
            n = s.get(Network, port.network_id)
            if "mac_address" in attrs and attrs["mac_address"] != port.mac_address:
                if not ctx.is_admin:
                    raise errors.PolicyNotAuthorized(
                        "(rule:update_port:mac_address) is disallowed by policy",
                        field="mac_address")
                if s.scalar(select(Port.id).where(Port.network_id == n.id,
                                                  Port.mac_address == attrs["mac_address"])):
                    raise errors.MacAddressInUse(
                        f"The mac address {attrs['mac_address']} is in use.",
                        field="mac_address")
                port.mac_address = attrs["mac_address"]
            for key, col in (("name", "name"), ("description", "description"),
                             ("admin_state_up", "admin_state_up"),
                             ("device_owner", "device_owner"), ("device_id", "device_id"),
                             ("binding:host_id", "binding_host_id"), ("dns_name", "dns_name"),
                             ("port_security_enabled", "port_security_enabled")):
                if key in attrs:
                    setattr(port, col, attrs[key])
            if "fixed_ips" in attrs:
                self._replace_ips(s, n, port, attrs["fixed_ips"], attempt)
            if "allowed_address_pairs" in attrs:
                port.allowed_address_pairs = self._address_pairs(
                    port, attrs["allowed_address_pairs"])
            elif port.allowed_address_pairs and not port.port_security_enabled:
                self._address_pairs(port, port.allowed_address_pairs)
            if "security_groups" in attrs:
                self._set_security_groups(s, ctx, port, attrs["security_groups"])
            elif "port_security_enabled" in attrs:
                current = self._port_sgs(s, [port.id])[port.id]
                if current and not port.port_security_enabled:
                    raise errors.PortSecurityRequired(
                        "Port has security group associated. Cannot disable port security "
                        "or ip address until security group is removed.",
                        field="port_security_enabled")
            port.status = self._status(port)
            self._touch(port)
            s.flush()
            return self._render_ports(s, [port])[0]
        return self._retrying(update)

    def _replace_ips(self, s, n: Network, port: Port, fixed_ips: list[dict], attempt: int):
        current = {(a.subnet_id, a.ip_address): a for a in s.scalars(
            select(IpAllocation).where(IpAllocation.port_id == port.id))}
        wanted = self._requested_ips(s, n, fixed_ips)
        keep = set()
        for sn, ip in wanted:
            match = next((k for k in current if k[0] == sn.id and (ip is None or k[1] == ip)
                          and k not in keep), None)
            if match is not None:
                keep.add(match)
        for key, alloc in current.items():
            if key not in keep:
                s.delete(alloc)
        s.flush()
        for sn, ip in wanted:
            if any(k[0] == sn.id and (ip is None or k[1] == ip) for k in keep):
                continue
            self._allocate(s, n, sn, port, ip, attempt=attempt)
        s.execute(update(FloatingIp).where(
            FloatingIp.port_id == port.id,
            FloatingIp.fixed_ip_address.notin_([ip for _, ip in keep] or [""])).values(
            port_id=None, fixed_ip_address=None, router_id=None))

    def delete_port(self, ctx: RequestContext, port_id: str) -> None:
        with self.db.transaction() as s:
            port = self._port(s, ctx, port_id)
            if port.device_owner in MANAGED_OWNERS:
                raise errors.PortInUse(
                    f"Port {port.id} cannot be deleted directly via the port API: has device "
                    f"owner {port.device_owner}.", field="port_id")
            self._delete_port(s, port)

    @staticmethod
    def _delete_port(s, port: Port) -> None:
        s.execute(update(FloatingIp).where(FloatingIp.port_id == port.id).values(
            port_id=None, fixed_ip_address=None, router_id=None))
        s.execute(delete(IpAllocation).where(IpAllocation.port_id == port.id))
        s.execute(delete(PortSecurityGroup).where(PortSecurityGroup.port_id == port.id))
        s.delete(port)
