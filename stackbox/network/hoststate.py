"""The contract between the network service and the network agent: what one
host should have, as plain data. `NetworkService.host_state(host_id)` builds a
`HostState` from the database; `network.agent` converges the host to it
(level-triggered: the whole desired state each pass, never a diff of events).

Names of host objects derive from resource ids, so any pass on any agent
finds the same bridge, tap or namespace again; all carry the `sbx` prefix
(Linux interface names are at most 15 characters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "sbx"


def bridge_name(network_id: str) -> str:
    return f"sbx-br-{network_id[:8]}"


def tap_name(port_id: str) -> str:
    """The tap QEMU opens for a server's port (compute creates it, the
    network agent plugs and filters it)."""
    return f"sbx-tap-{port_id[:7]}"


def dhcp_namespace(network_id: str) -> str:
    return f"sbx-dhcp-{network_id[:8]}"


def router_namespace(router_id: str) -> str:
    return f"sbx-r-{router_id[:8]}"


@dataclass(frozen=True)
class SubnetState:
    id: str
    cidr: str                                  # "10.0.0.0/24"
    ip_version: int
    gateway_ip: str | None                     # None: no gateway (no default route)
    enable_dhcp: bool
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[tuple[str, str], ...] = ()   # (destination cidr, nexthop)
    allocation_pools: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PortState:
    id: str
    network_id: str
    mac: str
    fixed_ips: tuple[tuple[str, str], ...]     # (subnet_id, ip)
    device_owner: str                          # "compute:nova", "network:dhcp", "network:router_interface", ...
    device_id: str
    hostname: str = ""                         # DHCP host name (server's hostname)
    admin_state_up: bool = True
    port_security_enabled: bool = True
    security_group_ids: tuple[str, ...] = ()
    allowed_address_pairs: tuple[tuple[str, str], ...] = ()   # (ip or cidr, mac)

    @property
    def tap(self) -> str:
        return tap_name(self.id)


@dataclass(frozen=True)
class NetworkState:
    id: str
    mtu: int
    network_type: str                          # local, flat, vlan, vxlan
    physical_network: str | None = None        # a bridge_mappings key (flat/vlan)
    segmentation_id: int | None = None
    admin_state_up: bool = True
    external: bool = False
    has_router: bool = False                   # False: isolated metadata through the DHCP namespace
    subnets: tuple[SubnetState, ...] = ()
    ports: tuple[PortState, ...] = ()          # every port of the network (DHCP host entries)

    @property
    def bridge(self) -> str:
        return bridge_name(self.id)


@dataclass(frozen=True)
class SecurityGroupRuleState:
    id: str
    direction: str                             # ingress, egress
    ethertype: str                             # IPv4, IPv6
    protocol: str | None                       # None (any), tcp, udp, icmp, icmpv6, or a number
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


@dataclass(frozen=True)
class SecurityGroupState:
    id: str
    rules: tuple[SecurityGroupRuleState, ...] = ()
    member_ips: tuple[str, ...] = ()           # fixed IPs of ports in the group (for remote_group_id)


@dataclass(frozen=True)
class FloatingIpState:
    id: str
    floating_ip: str
    fixed_ip: str
    port_id: str


@dataclass(frozen=True)
class RouterInterfaceState:
    port_id: str
    network_id: str
    mac: str
    ip: str
    prefixlen: int


@dataclass(frozen=True)
class RouterState:
    id: str
    admin_state_up: bool = True
    gateway_network_id: str | None = None
    gateway_ip: str | None = None              # the router's address on the external network
    gateway_prefixlen: int | None = None
    gateway_mac: str | None = None
    external_gateway: str | None = None        # the external subnet's gateway_ip (default route)
    enable_snat: bool = True
    interfaces: tuple[RouterInterfaceState, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()   # extra routes: (destination, nexthop)
    floating_ips: tuple[FloatingIpState, ...] = ()


@dataclass(frozen=True)
class HostState:
    host_id: str
    networks: tuple[NetworkState, ...] = ()
    routers: tuple[RouterState, ...] = ()
    security_groups: tuple[SecurityGroupState, ...] = ()
    # ports bound to this host whose taps the agent filters (compute ports)
    bound_ports: tuple[PortState, ...] = field(default_factory=tuple)
