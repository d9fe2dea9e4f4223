"""What other parts of stackbox call: compute binds server ports, metadata
finds the port behind a source address, the agent reads the desired state
of its host (`host_state`) and reports port status."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from sqlalchemy import select

from stackbox.common.http.context import RequestContext
from stackbox.network import errors, hoststate as hs
from stackbox.network.base import ServiceBase, _chunks
from stackbox.network.models import (FloatingIp, IpAllocation, Network, Port, PortSecurityGroup,
                                     Router, SecurityGroup, SecurityGroupRule, Subnet)

COMPUTE_OWNER = "compute:nova"


class BindingMixin(ServiceBase):
    # -- compute ------------------------------------------------------------------------
    def create_server_port(self, ctx: RequestContext, *, server_id: str, host_id: str,
                           network_id: str | None = None, port_id: str | None = None,
                           security_groups: Iterable[str] | None = None,
                           fixed_ip: str | None = None, hostname: str = "") -> dict:
        """A port for a server's NIC, bound to `host_id`: a new port on
        `network_id`, or the caller's existing unbound `port_id`. Security
        groups are names or ids in the caller's project (None: default).
        The result is the port as the API shows it plus `tap` (the tap
        device name QEMU must open), `mtu` and `network_name`."""
        if (network_id is None) == (port_id is None):
            raise errors.InvalidInput("Exactly one of network_id or port_id is required.",
                                      field="network_id")
        sg_ids = None if security_groups is None else self._sg_ids(ctx, list(security_groups))
        if port_id is None:
            attrs: dict = {"network_id": network_id, "device_id": server_id,
                           "device_owner": COMPUTE_OWNER, "binding:host_id": host_id,
                           "dns_name": hostname}
            if sg_ids is not None:
                attrs["security_groups"] = sg_ids
            if fixed_ip is not None:
                attrs["fixed_ips"] = [{"ip_address": fixed_ip}]
            port = self.create_port(ctx, attrs)
        else:
            with self.db.transaction() as s:
                p = self._port(s, ctx, port_id)
                if p.device_id and p.device_id != server_id:
                    raise errors.PortInUse(
                        f"Port {p.id} is still in use (device {p.device_id}).",
                        field="port_id")
                if not (ctx.is_admin or p.project_id == ctx.project_id):
                    raise errors.PortNotFound(f"Port {port_id} could not be found.",
                                              field="port_id")
            attrs = {"device_id": server_id, "device_owner": COMPUTE_OWNER,
                     "binding:host_id": host_id}
            if hostname:
                attrs["dns_name"] = hostname
            if sg_ids is not None:
                attrs["security_groups"] = sg_ids
            port = self.update_port(ctx, port_id, attrs)
        with self.db.read() as s:
            n = s.get(Network, port["network_id"])
            return {**port, "tap": hs.tap_name(port["id"]), "mtu": n.mtu,
                    "network_name": n.name}

    def _sg_ids(self, ctx: RequestContext, refs: list[str]) -> list[str]:
        def resolve(s, _attempt):
            out = []
            for ref in refs:
                sg = s.get(SecurityGroup, ref)
                if sg is not None and self._owner(ctx, sg):
                    out.append(sg.id)
                    continue
                if ref == "default" and ctx.project_id:
                    out.append(self._default_sg(s, ctx.project_id).id)
                    continue
                matches = list(s.scalars(select(SecurityGroup.id).where(
                    SecurityGroup.name == ref, SecurityGroup.project_id == ctx.project_id)))
                if len(matches) != 1:
                    raise errors.SecurityGroupNotFound(
                        f"Security group {ref} not found" if not matches else
                        f"Multiple security groups named {ref}; use its id.",
                        field="security_groups")
                out.append(matches[0])
            return out
        return self._retrying(resolve)

    def delete_server_ports(self, server_id: str, *, keep_port_ids: Iterable[str] = ()) -> None:
        """Delete the ports created for a server; ports the user brought
        (`keep_port_ids`) are unbound and kept, as Nova does."""
        keep = set(keep_port_ids)
        with self.db.transaction() as s:
            for p in list(s.scalars(select(Port).where(Port.device_id == server_id,
                                                       Port.device_owner.startswith("compute:")))):
                if p.id in keep:
                    p.device_id = p.device_owner = p.binding_host_id = ""
                    p.status = "DOWN"
                    self._touch(p)
                else:
                    self._delete_port(s, p)

    def server_addresses(self, server_ids: Iterable[str]) -> dict[str, dict[str, list[dict]]]:
        """Nova's `addresses`: server -> network name -> fixed then floating."""
        ids = list(server_ids)
        out: dict[str, dict[str, list[dict]]] = {sid: {} for sid in ids}
        if not ids:
            return out
        with self.db.read() as s:
            ports = list(s.scalars(select(Port).where(Port.device_id.in_(ids)).order_by(
                Port.created_at, Port.id)))
            ips = self._fixed_ips(s, [p.id for p in ports])
            names = {n.id: n.name or n.id for n in s.scalars(select(Network).where(
                Network.id.in_({p.network_id for p in ports} or {""})))}
            fips: dict[tuple[str, str], str] = {
                (f.port_id, f.fixed_ip_address): f.floating_ip_address
                for f in s.scalars(select(FloatingIp).where(
                    FloatingIp.port_id.in_([p.id for p in ports] or [""])))}
            for p in ports:
                entries = out[p.device_id].setdefault(names[p.network_id], [])
                floating = []
                for _, ip in ips[p.id]:
                    entries.append({"addr": ip, "version": ipaddress.ip_address(ip).version,
                                    "mac": p.mac_address, "type": "fixed"})
                    if (p.id, ip) in fips:
                        floating.append({"addr": fips[(p.id, ip)], "version": 4,
                                         "mac": p.mac_address, "type": "floating"})
                entries.extend(floating)
        return out

    def server_network_info(self, server_id: str) -> list[dict]:
        """Per port of a server, what a guest needs to configure itself
        (network_data.json, config drive, `os-interface`): ids, MAC, MTU,
        tap, and each fixed IP with its subnet's cidr, gateway, DNS, routes."""
        return self.servers_network_info([server_id])[server_id]

    def servers_network_info(self, server_ids: Iterable[str]) -> dict[str, list[dict]]:
        """`server_network_info` of many servers in a few queries (the
        metadata server looks up a boot storm's instances in batches)."""
        ids = list(server_ids)
        out: dict[str, list[dict]] = {sid: [] for sid in ids}
        with self.db.read() as s:
            ports = [p for chunk in _chunks(ids) for p in s.scalars(
                select(Port).where(Port.device_id.in_(chunk)))]
            ports.sort(key=lambda p: (p.created_at, p.id))
            ips = self._fixed_ips(s, [p.id for p in ports])
            nets = {n.id: n for n in s.scalars(select(Network).where(
                Network.id.in_({p.network_id for p in ports} or {""})))}
            subnets = {sn.id: sn for sn in s.scalars(select(Subnet).where(
                Subnet.id.in_({sid for v in ips.values() for sid, _ in v} or {""})))}
            for p in ports:
                n = nets[p.network_id]
                fixed = []
                for sid, ip in ips[p.id]:
                    sn = subnets[sid]
                    fixed.append({"ip_address": ip, "subnet_id": sid, "cidr": sn.cidr,
                                  "ip_version": sn.ip_version, "gateway_ip": sn.gateway_ip,
                                  "enable_dhcp": sn.enable_dhcp,
                                  "dns_nameservers": list(sn.dns_nameservers),
                                  "host_routes": [{"destination": d, "nexthop": h}
                                                  for d, h in sn.host_routes],
                                  "ipv6_address_mode": sn.ipv6_address_mode})
                out[p.device_id].append({
                    "port_id": p.id, "network_id": n.id, "network_name": n.name,
                    "mac_address": p.mac_address, "mtu": n.mtu, "tap": hs.tap_name(p.id),
                    "fixed_ips": fixed, "status": p.status,
                    "binding_host_id": p.binding_host_id})
        return out

    # -- metadata -----------------------------------------------------------------------
    def lookup_port_by_ip(self, network_id: str, ip: str) -> dict | None:
        """The port holding `ip` on `network_id` (the metadata server's way
        from a source address to an instance), or None."""
        return self.lookup_ports_by_ip(network_id, [ip]).get(ip)

    def lookup_ports_by_ip(self, network_id: str, ips: Iterable[str]) -> dict[str, dict]:
        """`lookup_port_by_ip` for many addresses in a few queries: address
        -> port, for the addresses that have one."""
        wanted = list(ips)
        with self.db.read() as s:
            owner = {ip: pid for chunk in _chunks(wanted) for ip, pid in s.execute(
                select(IpAllocation.ip_address, IpAllocation.port_id).where(
                    IpAllocation.network_id == network_id,
                    IpAllocation.ip_address.in_(chunk)))}
            pids = list(set(owner.values()))
            ports = {p.id: p for chunk in _chunks(pids) for p in s.scalars(
                select(Port).where(Port.id.in_(chunk)))}
            fips: dict[tuple[str, str], list[str]] = {}
            for chunk in _chunks(pids):
                for pid, fixed, address in s.execute(select(
                        FloatingIp.port_id, FloatingIp.fixed_ip_address,
                        FloatingIp.floating_ip_address).where(FloatingIp.port_id.in_(chunk))):
                    fips.setdefault((pid, fixed), []).append(address)
            fixed_ips = self._fixed_ips(s, pids)
            out = {}
            for ip, pid in owner.items():
                p = ports[pid]
                out[ip] = {"id": p.id, "network_id": p.network_id, "device_id": p.device_id,
                           "device_owner": p.device_owner, "project_id": p.project_id,
                           "mac_address": p.mac_address, "fixed_ip": ip,
                           "fixed_ips": [{"subnet_id": sid, "ip_address": x}
                                         for sid, x in fixed_ips[p.id]],
                           "floating_ips": fips.get((p.id, ip), [])}
            return out

    # -- agent --------------------------------------------------------------------------
    def set_port_status(self, port_id: str, status: str) -> None:
        if status not in ("ACTIVE", "DOWN", "BUILD", "ERROR"):
            raise errors.InvalidInput(f"Invalid port status {status!r}", field="status")
        with self.db.transaction() as s:
            p = s.get(Port, port_id)
            if p is not None and p.status != status:
                p.status = status
                self._touch(p)

    def host_state(self, host_id: str) -> hs.HostState:
        """Everything the agent on `host_id` should converge to. Today every
        host serves DHCP and routers for every network (one network node);
        compute ports are filtered only where they are bound. Scheduling
        DHCP and routers to hosts slots in here without changing the agent."""
        with self.db.read() as s:
            nets = list(s.scalars(select(Network).order_by(Network.id)))
            subnets = list(s.scalars(select(Subnet).order_by(Subnet.id)))
            ports = list(s.scalars(select(Port).order_by(Port.id)))
            ips = self._fixed_ips(s, [p.id for p in ports])
            sgs_of = self._port_sgs(s, [p.id for p in ports])
            routers = list(s.scalars(select(Router).order_by(Router.id)))
            fips = list(s.scalars(select(FloatingIp).where(FloatingIp.port_id.isnot(None))))
            groups = list(s.scalars(select(SecurityGroup)))
            rules = list(s.scalars(select(SecurityGroupRule)))
            members = list(s.execute(select(PortSecurityGroup.security_group_id,
                                            PortSecurityGroup.port_id)))
        subnet_by_id = {sn.id: sn for sn in subnets}
        port_states = {p.id: _port_state(p, ips[p.id], sgs_of[p.id]) for p in ports}
        routed = {p.network_id for p in ports if p.device_owner == "network:router_interface"}
        ports_of: dict[str, list] = {}
        for p in ports:
            ports_of.setdefault(p.network_id, []).append(port_states[p.id])
        subnets_of: dict[str, list] = {}
        for sn in subnets:
            subnets_of.setdefault(sn.network_id, []).append(_subnet_state(sn))
        ifaces_of: dict[str, list] = {}
        for p in ports:
            if p.device_owner == "network:router_interface":
                ifaces_of.setdefault(p.device_id, []).append(p)
        net_states = []
        for n in nets:
            net_states.append(hs.NetworkState(
                id=n.id, mtu=n.mtu, network_type=n.network_type,
                physical_network=n.physical_network, segmentation_id=n.segmentation_id,
                admin_state_up=n.admin_state_up, external=n.external,
                has_router=n.id in routed,
                subnets=tuple(subnets_of.get(n.id, ())),
                ports=tuple(ports_of.get(n.id, ()))))
        by_port = {p.id: p for p in ports}
        fips_of: dict[str, list] = {}
        for f in fips:
            fips_of.setdefault(f.router_id, []).append(f)
        router_states = []
        for r in routers:
            ifaces = []
            for p in ifaces_of.get(r.id, ()):
                for sid, ip in ips[p.id]:
                    ifaces.append(hs.RouterInterfaceState(
                        port_id=p.id, network_id=p.network_id, mac=p.mac_address, ip=ip,
                        prefixlen=ipaddress.ip_network(subnet_by_id[sid].cidr).prefixlen))
            gw = by_port.get(r.gw_port_id) if r.gw_port_id else None
            gw_ip = gw_len = ext_gw = None
            if gw is not None and ips[gw.id]:
                sid, gw_ip = next(((sid, ip) for sid, ip in ips[gw.id]
                                   if ipaddress.ip_address(ip).version == 4), ips[gw.id][0])
                gw_len = ipaddress.ip_network(subnet_by_id[sid].cidr).prefixlen
                ext_gw = subnet_by_id[sid].gateway_ip
            router_states.append(hs.RouterState(
                id=r.id, admin_state_up=r.admin_state_up,
                gateway_network_id=gw.network_id if gw else None, gateway_ip=gw_ip,
                gateway_prefixlen=gw_len, gateway_mac=gw.mac_address if gw else None,
                external_gateway=ext_gw, enable_snat=r.enable_snat,
                interfaces=tuple(ifaces), routes=tuple((d, h) for d, h in r.routes),
                floating_ips=tuple(hs.FloatingIpState(
                    id=f.id, floating_ip=f.floating_ip_address, fixed_ip=f.fixed_ip_address,
                    port_id=f.port_id) for f in fips_of.get(r.id, ()))))
        bound = tuple(port_states[p.id] for p in ports
                      if p.binding_host_id == host_id and p.device_owner.startswith("compute:"))
        wanted = {g for p in bound for g in p.security_group_ids}
        wanted |= {r.remote_group_id for r in rules
                   if r.security_group_id in wanted and r.remote_group_id}
        member_ips: dict[str, list[str]] = {}
        for gid, pid in members:
            member_ips.setdefault(gid, []).extend(ip for _, ip in ips.get(pid, []))
        rules_of: dict[str, list] = {}
        for r in rules:
            rules_of.setdefault(r.security_group_id, []).append(_rule_state(r))
        sg_states = tuple(hs.SecurityGroupState(
            id=g.id, rules=tuple(rules_of.get(g.id, ())),
            member_ips=tuple(sorted(member_ips.get(g.id, []))))
            for g in sorted(groups, key=lambda g: g.id) if g.id in wanted)
        return hs.HostState(host_id=host_id, networks=tuple(net_states),
                            routers=tuple(router_states), security_groups=sg_states,
                            bound_ports=bound)


def _subnet_state(sn: Subnet) -> hs.SubnetState:
    return hs.SubnetState(id=sn.id, cidr=sn.cidr, ip_version=sn.ip_version,
                          gateway_ip=sn.gateway_ip, enable_dhcp=sn.enable_dhcp,
                          dns_nameservers=tuple(sn.dns_nameservers),
                          host_routes=tuple((d, h) for d, h in sn.host_routes),
                          allocation_pools=tuple((a, b) for a, b in sn.allocation_pools))


def _port_state(p: Port, fixed: list[tuple[str, str]], sgs: list[str]) -> hs.PortState:
    hostname = p.dns_name or (f"host-{fixed[0][1].replace('.', '-').replace(':', '-')}"
                              if fixed else "")
    return hs.PortState(id=p.id, network_id=p.network_id, mac=p.mac_address,
                        fixed_ips=tuple(fixed), device_owner=p.device_owner,
                        device_id=p.device_id, hostname=hostname,
                        admin_state_up=p.admin_state_up,
                        port_security_enabled=p.port_security_enabled,
                        security_group_ids=tuple(sorted(sgs)),
                        allowed_address_pairs=tuple((ip, mac) for ip, mac in
                                                    p.allowed_address_pairs))


def _rule_state(r: SecurityGroupRule) -> hs.SecurityGroupRuleState:
    return hs.SecurityGroupRuleState(
        id=r.id, direction=r.direction, ethertype=r.ethertype, protocol=r.protocol,
        port_range_min=r.port_range_min, port_range_max=r.port_range_max,
        remote_ip_prefix=r.remote_ip_prefix, remote_group_id=r.remote_group_id)
