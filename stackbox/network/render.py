"""Network resources as Neutron returns them, field for field. Attributes in
ADMIN_ONLY are removed for non-admin callers (provider and binding details)."""

from __future__ import annotations

import datetime as dt

ADMIN_ONLY = ("provider:network_type", "provider:physical_network",
              "provider:segmentation_id", "binding:host_id", "binding:profile",
              "binding:vif_type", "binding:vif_details")


def iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _standard(obj) -> dict:
    return {"id": obj.id, "project_id": obj.project_id, "tenant_id": obj.project_id,
            "description": obj.description, "tags": list(obj.tags or []),
            "revision_number": obj.revision_number, "created_at": iso(obj.created_at),
            "updated_at": iso(obj.updated_at)}


def network(n, subnet_ids: list[str]) -> dict:
    return {**_standard(n), "name": n.name, "admin_state_up": n.admin_state_up,
            "status": n.status, "shared": n.shared, "router:external": n.external,
            "mtu": n.mtu, "port_security_enabled": n.port_security_enabled,
            "subnets": sorted(subnet_ids),
            "provider:network_type": n.network_type,
            "provider:physical_network": n.physical_network,
            "provider:segmentation_id": n.segmentation_id,
            "availability_zone_hints": list(n.availability_zone_hints or []),
            "availability_zones": ["nova"], "ipv4_address_scope": None,
            "ipv6_address_scope": None, "is_default": False, "l2_adjacency": True,
            "qos_policy_id": None, "dns_domain": ""}


def subnet(sn) -> dict:
    return {**_standard(sn), "name": sn.name, "network_id": sn.network_id,
            "ip_version": sn.ip_version, "cidr": sn.cidr, "gateway_ip": sn.gateway_ip,
            "enable_dhcp": sn.enable_dhcp,
            "allocation_pools": [{"start": a, "end": b} for a, b in sn.allocation_pools],
            "dns_nameservers": list(sn.dns_nameservers),
            "host_routes": [{"destination": d, "nexthop": n} for d, n in sn.host_routes],
            "ipv6_ra_mode": sn.ipv6_ra_mode, "ipv6_address_mode": sn.ipv6_address_mode,
            "subnetpool_id": None, "service_types": [], "segment_id": None,
            "dns_publish_fixed_ip": False}


def port(p, fixed_ips: list[tuple[str, str]], security_groups: list[str]) -> dict:
    bound = bool(p.binding_host_id)
    return {**_standard(p), "name": p.name, "network_id": p.network_id,
            "mac_address": p.mac_address, "admin_state_up": p.admin_state_up,
            "status": p.status, "device_owner": p.device_owner, "device_id": p.device_id,
            "fixed_ips": [{"subnet_id": s, "ip_address": ip} for s, ip in fixed_ips],
            "security_groups": sorted(security_groups),
            "allowed_address_pairs": [{"ip_address": ip, "mac_address": mac}
                                      for ip, mac in p.allowed_address_pairs],
            "port_security_enabled": p.port_security_enabled,
            "binding:host_id": p.binding_host_id, "binding:vnic_type": "normal",
            "binding:vif_type": "tap" if bound else "unbound",
            "binding:vif_details": {"port_filter": True} if bound else {},
            "binding:profile": {}, "dns_name": p.dns_name, "dns_assignment": [],
            "extra_dhcp_opts": [], "qos_policy_id": None, "qos_network_policy_id": None,
            "propagate_uplink_status": False}


def router(r, gateway: dict | None) -> dict:
    return {**_standard(r), "name": r.name, "admin_state_up": r.admin_state_up,
            "status": r.status, "external_gateway_info": gateway,
            "routes": [{"destination": d, "nexthop": n} for d, n in r.routes],
            "availability_zone_hints": list(r.availability_zone_hints or []),
            "availability_zones": ["nova"], "distributed": False, "ha": False,
            "flavor_id": None}


def floatingip(f, port_details: dict | None) -> dict:
    return {**_standard(f), "floating_network_id": f.floating_network_id,
            "floating_ip_address": f.floating_ip_address, "port_id": f.port_id,
            "fixed_ip_address": f.fixed_ip_address, "router_id": f.router_id,
            "status": "ACTIVE" if f.port_id else "DOWN", "dns_name": f.dns_name,
            "dns_domain": "", "qos_policy_id": None, "port_details": port_details,
            "port_forwardings": []}


def security_group_rule(r) -> dict:
    return {"id": r.id, "project_id": r.project_id, "tenant_id": r.project_id,
            "security_group_id": r.security_group_id, "direction": r.direction,
            "ethertype": r.ethertype, "protocol": r.protocol,
            "port_range_min": r.port_range_min, "port_range_max": r.port_range_max,
            "remote_ip_prefix": r.remote_ip_prefix, "remote_group_id": r.remote_group_id,
            "remote_address_group_id": None, "normalized_cidr": r.remote_ip_prefix,
            "description": r.description, "revision_number": r.revision_number,
            "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
            "belongs_to_default_sg": None}


def security_group(sg, rules: list, *, default: bool) -> dict:
    out = {**_standard(sg), "name": sg.name, "stateful": sg.stateful, "shared": False,
           "security_group_rules": [security_group_rule(r) for r in rules]}
    for r in out["security_group_rules"]:
        r["belongs_to_default_sg"] = default
    return out


def for_caller(item: dict, is_admin: bool) -> dict:
    if is_admin:
        return item
    return {k: v for k, v in item.items() if k not in ADMIN_ONLY}
