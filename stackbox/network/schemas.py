"""Request bodies of the Neutron API, as attribute tables in Neutron's own
manner (RESOURCE_ATTRIBUTE_MAP): per attribute a converter, whether it may be
given on create and on update, and whether only admins may set it. A
converter raises ValueError with the reason; the message names the field."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Callable

from stackbox.common.errors import BadRequest
from stackbox.network import errors

MISSING = object()


@dataclasses.dataclass(frozen=True)
class Attr:
    convert: Callable[[Any], Any]
    post: bool = True
    put: bool = True
    admin: bool = False       # only admins may set it (403 otherwise)


# -- converters ----------------------------------------------------------------

def to_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "yes"):
        return True
    if isinstance(v, str) and v.lower() in ("false", "0", "no"):
        return False
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError(f"'{v}' cannot be converted to boolean")


def string(max_len: int = 255) -> Callable[[Any], str]:
    def conv(v):
        if v is None:
            return ""
        if not isinstance(v, str):
            raise ValueError(f"'{v}' is not a valid string")
        if len(v) > max_len:
            raise ValueError(f"'{v[:40]}...' exceeds maximum length of {max_len}")
        return v
    return conv


def nullable(conv):
    return lambda v: None if v is None else conv(v)


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v):
        if isinstance(v, bool):
            raise ValueError(f"'{v}' is not an integer")
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"'{v}' is not an integer")
        if str(n) != str(v).strip() and not isinstance(v, int):
            raise ValueError(f"'{v}' is not an integer")
        if not lo <= n <= hi:
            raise ValueError(f"'{n}' is not in range {lo} through {hi}")
        return n
    return conv


def one_of(*allowed):
    def conv(v):
        if v not in allowed:
            raise ValueError(f"'{v}' is not in {list(allowed)}")
        return v
    return conv


def ip(v) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ValueError(f"'{v}' is not a valid IP address")


def cidr(v) -> str:
    try:
        return str(ipaddress.ip_network(str(v), strict=False))
    except ValueError:
        raise ValueError(f"'{v}' is not a valid IP subnet")


MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def mac(v) -> str:
    if not isinstance(v, str) or not MAC.match(v):
        raise ValueError(f"'{v}' is not a valid MAC address")
    if int(v[:2], 16) & 1:
        raise ValueError(f"'{v}' is a multicast MAC address")
    return v.lower()


def list_of(conv, *, max_items: int = 1000):
    def c(v):
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError(f"'{v}' is not a list")
        if len(v) > max_items:
            raise ValueError(f"more than {max_items} items")
        return [conv(x) for x in v]
    return c


def unique_list_of(conv):
    base = list_of(conv)

    def c(v):
        out = base(v)
        if len(set(map(str, out))) != len(out):
            raise ValueError(f"Duplicate items in the list: '{', '.join(map(str, out))}'")
        return out
    return c


def dict_with(required: tuple[str, ...], optional: tuple[str, ...] = (), **convs):
    def c(v):
        if not isinstance(v, dict):
            raise ValueError(f"'{v}' is not a dictionary")
        extra = set(v) - set(required) - set(optional)
        if extra:
            raise ValueError(f"Unrecognized keys {sorted(extra)}; allowed: "
                             f"{sorted(set(required) | set(optional))}")
        missing = [k for k in required if k not in v]
        if missing:
            raise ValueError(f"Missing required key(s) {missing}")
        return {k: convs[k](x) if k in convs else x for k, x in v.items()}
    return c


pool = dict_with(("start", "end"), start=ip, end=ip)
route = dict_with(("destination", "nexthop"), destination=cidr, nexthop=ip)
fixed_ip = dict_with((), ("subnet_id", "ip_address"), subnet_id=string(36), ip_address=ip)
def ip_or_cidr(v) -> str:
    return cidr(v) if "/" in str(v) else ip(v)


address_pair = dict_with(("ip_address",), ("mac_address",), ip_address=ip_or_cidr,
                         mac_address=mac)
gateway_info = dict_with(
    ("network_id",), ("enable_snat", "external_fixed_ips", "qos_policy_id"),
    network_id=string(36), enable_snat=to_bool, external_fixed_ips=list_of(fixed_ip))


def gateway_info_or_empty(v):
    if v is None or v == {}:
        return {}
    return gateway_info(v)


def nameserver(v) -> str:
    return ip(v)


PROJECT = {"project_id": Attr(string(64), put=False),
           "tenant_id": Attr(string(64), put=False)}
STANDARD = {"name": Attr(string()), "description": Attr(string())}

NETWORK = {
    **STANDARD, **PROJECT,
    "admin_state_up": Attr(to_bool),
    "shared": Attr(to_bool, admin=True),
    "router:external": Attr(to_bool, admin=True),
    "mtu": Attr(integer(68, 9000)),
    "port_security_enabled": Attr(to_bool),
    "provider:network_type": Attr(one_of("local", "flat", "vlan", "vxlan"), put=False,
                                  admin=True),
    "provider:physical_network": Attr(nullable(string(64)), put=False, admin=True),
    "provider:segmentation_id": Attr(nullable(integer(0, 2 ** 24 - 1)), put=False,
                                     admin=True),
    "availability_zone_hints": Attr(list_of(string(255)), put=False),
    "dns_domain": Attr(string(255)),
    "is_default": Attr(to_bool, admin=True),
    "qos_policy_id": Attr(nullable(string(36))),
}

SUBNET = {
    **STANDARD, **PROJECT,
    "network_id": Attr(string(36), put=False),
    "ip_version": Attr(integer(4, 6), put=False),
    "cidr": Attr(nullable(string(64)), put=False),
    "gateway_ip": Attr(nullable(ip)),
    "allocation_pools": Attr(list_of(pool)),
    "dns_nameservers": Attr(unique_list_of(nameserver)),
    "host_routes": Attr(list_of(route)),
    "enable_dhcp": Attr(to_bool),
    "ipv6_ra_mode": Attr(nullable(one_of("slaac", "dhcpv6-stateful", "dhcpv6-stateless")),
                         put=False),
    "ipv6_address_mode": Attr(nullable(one_of("slaac", "dhcpv6-stateful",
                                              "dhcpv6-stateless")), put=False),
    "subnetpool_id": Attr(nullable(string(36)), put=False),
    "prefixlen": Attr(integer(0, 128), put=False),
    "service_types": Attr(list_of(string(255))),
    "segment_id": Attr(nullable(string(36))),
    "use_default_subnetpool": Attr(to_bool, put=False),
    "dns_publish_fixed_ip": Attr(to_bool),
}

PORT = {
    **STANDARD, **PROJECT,
    "network_id": Attr(string(36), put=False),
    "admin_state_up": Attr(to_bool),
    "mac_address": Attr(mac, admin=False),
    "fixed_ips": Attr(list_of(fixed_ip)),
    "device_id": Attr(string(255)),
    "device_owner": Attr(string(255)),
    "security_groups": Attr(unique_list_of(string(36))),
    "allowed_address_pairs": Attr(list_of(address_pair)),
    "port_security_enabled": Attr(to_bool),
    "binding:host_id": Attr(string(255), admin=True),
    "binding:vnic_type": Attr(one_of("normal")),
    "binding:profile": Attr(lambda v: v if isinstance(v, dict) else {}, admin=True),
    "dns_name": Attr(string(255)),
    "qos_policy_id": Attr(nullable(string(36))),
}

ROUTER = {
    **STANDARD, **PROJECT,
    "admin_state_up": Attr(to_bool),
    "external_gateway_info": Attr(gateway_info_or_empty),
    "routes": Attr(list_of(route), post=False),
    "availability_zone_hints": Attr(list_of(string(255)), put=False),
    "distributed": Attr(lambda v: _false_only("distributed", v), admin=True),
    "ha": Attr(lambda v: _false_only("ha", v), admin=True),
    "flavor_id": Attr(nullable(string(36)), put=False),
}

FLOATINGIP = {
    "description": Attr(string()), **PROJECT,
    "floating_network_id": Attr(string(36), put=False),
    "floating_ip_address": Attr(ip, put=False),
    "subnet_id": Attr(nullable(string(36)), put=False),
    "port_id": Attr(nullable(string(36))),
    "fixed_ip_address": Attr(nullable(ip)),
    "dns_name": Attr(string(255), put=False),
    "dns_domain": Attr(string(255), put=False),
    "qos_policy_id": Attr(nullable(string(36))),
}

SECURITY_GROUP = {**STANDARD, **PROJECT, "stateful": Attr(to_bool)}

SECURITY_GROUP_RULE = {
    "description": Attr(string(), put=True), **PROJECT,
    "security_group_id": Attr(string(36), put=False),
    "direction": Attr(one_of("ingress", "egress"), put=False),
    "ethertype": Attr(one_of("IPv4", "IPv6"), put=False),
    "protocol": Attr(nullable(lambda v: str(v).lower()), put=False),
    "port_range_min": Attr(nullable(integer(0, 65535)), put=False),
    "port_range_max": Attr(nullable(integer(0, 65535)), put=False),
    "remote_ip_prefix": Attr(nullable(cidr), put=False),
    "remote_group_id": Attr(nullable(string(36)), put=False),
    "remote_address_group_id": Attr(nullable(lambda v: _none_only("remote_address_group_id",
                                                                  v)), put=False),
}

QUOTA_RESOURCES = ("network", "subnet", "port", "router", "floatingip", "security_group",
                   "security_group_rule", "subnetpool", "rbac_policy")


def _false_only(name, v):
    if to_bool(v):
        raise ValueError(f"{name} routers are not supported by this cloud")
    return False


def _none_only(name, v):
    raise ValueError(f"{name} is not supported by this cloud")


def body(data: dict, resource: str, attrs: dict[str, Attr], *, update: bool,
         is_admin: bool) -> dict:
    """Validate `{resource: {...}}` and return the converted attributes."""
    if resource not in data or not isinstance(data[resource], dict):
        raise BadRequest(f"Resource body required: {{'{resource}': {{...}}}}", field=resource)
    if len(data) > 1:
        extra = ", ".join(k for k in data if k != resource)
        raise BadRequest(f"Unrecognized attribute(s) '{extra}'", field=resource)
    raw = data[resource]
    unknown = [k for k in raw if k not in attrs]
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'", field=unknown[0])
    out = {}
    for key, value in raw.items():
        attr = attrs[key]
        if update and not attr.put or not update and not attr.post:
            raise BadRequest(f"Cannot update read-only attribute {key}" if update else
                             f"Attribute '{key}' not allowed in POST", field=key)
        if attr.admin and not is_admin:
            raise errors.PolicyNotAuthorized(
                f"(rule:{'update' if update else 'create'}_{resource}:{key}) is disallowed "
                f"by policy", field=key)
        try:
            out[key] = attr.convert(value)
        except ValueError as e:
            raise errors.InvalidInput(f"Invalid input for {key}. Reason: {e}.", field=key)
    if "tenant_id" in out:
        if "project_id" in out and out["project_id"] != out["tenant_id"]:
            raise BadRequest("'project_id' and 'tenant_id' do not match", field="project_id")
        out["project_id"] = out.pop("tenant_id")
    return out


def tags(data) -> list[str]:
    if not isinstance(data, dict) or not isinstance(data.get("tags"), list):
        raise BadRequest("Invalid input for tags: a body {'tags': [...]} is required.",
                         field="tags")
    return [tag(t) for t in data["tags"]]


def tag(t) -> str:
    if not isinstance(t, str) or not t or len(t) > 255 or "," in t or "/" in t:
        raise BadRequest(f"Invalid input for tags: '{t}' is not a valid tag (1-255 "
                         f"characters, no ',' or '/').", field="tags")
    return t


def quota(data) -> dict[str, int]:
    if not isinstance(data, dict) or not isinstance(data.get("quota"), dict):
        raise BadRequest("Resource body required: {'quota': {...}}", field="quota")
    out = {}
    for k, v in data["quota"].items():
        if k == "check_limit":   # quota-check-limit: usage is always allowed to exceed
            continue
        if k not in QUOTA_RESOURCES:
            raise BadRequest(f"Unrecognized attribute(s) '{k}'; quotas exist for "
                             f"{', '.join(QUOTA_RESOURCES)}", field=k)
        try:
            out[k] = integer(-1, 2 ** 31 - 1)(v)
        except ValueError as e:
            raise errors.InvalidInput(f"Invalid input for {k}. Reason: {e}.", field=k)
    return out
