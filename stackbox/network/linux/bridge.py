"""Layer 2 on one host: a Linux bridge per network, provider uplinks, taps
and veths plugged into their bridges.

- local / vxlan (single host for now): `sbx-br-<net>`, no uplink.
- flat on a mapped *bridge* (`bridge_mappings = {physnet1 = "br-ex"}`): that
  bridge is the network's bridge. If it exists it belongs to the operator and
  the agent never deletes it; if it does not, the agent creates it (and
  then owns it), which is how the default `public = "sbx-br-ex"` appears.
- flat on a mapped *interface*: `sbx-br-<net>` with the interface enslaved.
- vlan: `sbx-br-<net>` with a VLAN sub-interface `sbx-vl-<net>` of the mapped
  interface (or bridge) and the segmentation id.

`plan` decides (pure, given what is a bridge); `ensure_*` converge the host
and are safe to call on every pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from stackbox.network.hoststate import NetworkState
from stackbox.network.linux import host, names

OWNED_BRIDGE_PREFIX = "sbx-br-"
VLAN_PREFIX = "sbx-vl-"


class MappingError(ValueError):
    """A provider network names a physical network this host cannot reach."""


@dataclass(frozen=True)
class BridgePlan:
    bridge: str
    owned: bool                         # created (and deleted) by the agent
    uplink: str | None = None           # interface to enslave (flat on an interface)
    vlan: tuple[str, str, int] | None = None   # (device, parent, vlan id)


def vlan_device(network_id: str) -> str:
    return VLAN_PREFIX + names.short(network_id)


def plan(network: NetworkState, mappings: Mapping[str, str],
         kind: Callable[[str], str | None]) -> BridgePlan:
    """`kind(name)` tells what exists on the host: a link kind ("bridge",
    "" for a plain interface) or None when there is no such interface."""
    own = names.ifname(network.bridge)
    if network.network_type in ("local", "vxlan") or not network.physical_network:
        if network.network_type in ("flat", "vlan"):
            raise MappingError(f"network {network.id}: {network.network_type} needs a "
                               f"physical_network")
        return BridgePlan(own, True)
    target = mappings.get(network.physical_network)
    if target is None:
        raise MappingError(
            f"network {network.id}: physical_network {network.physical_network!r} is not "
            f"in bridge_mappings (known: {', '.join(sorted(mappings)) or 'none'})")
    target = names.ifname(target)
    if network.network_type == "flat":
        found = kind(target)
        if found == "bridge":
            return BridgePlan(target, False)
        if found is None:
            return BridgePlan(target, True)
        return BridgePlan(own, True, uplink=target)
    if network.network_type == "vlan":
        vid = network.segmentation_id
        if vid is None or not 1 <= int(vid) <= 4094:
            raise MappingError(f"network {network.id}: VLAN id {vid!r} not in 1-4094")
        return BridgePlan(own, True, vlan=(vlan_device(network.id), target, int(vid)))
    raise MappingError(f"network {network.id}: unknown network type {network.network_type!r}")


def ensure_bridge(p: BridgePlan, mtu: int, links: dict[str, dict]) -> None:
    rec = links.get(p.bridge)
    if rec is None:
        if not p.owned:
            raise MappingError(f"mapped bridge {p.bridge} does not exist on this host; "
                               f"create it or fix bridge_mappings")
        host.ip("link", "add", "name", p.bridge, "mtu", str(mtu), "type", "bridge")
        # The bridge only switches; it must not pick up an IPv6 address and
        # talk on a tenant network itself.
        host.sysctl(None, f"net.ipv6.conf.{p.bridge}.disable_ipv6", "1")
        rec = {"flags": []}
    if p.owned and not host.link_up(rec):
        host.set_up(p.bridge)
    if p.uplink:
        plug(p.uplink, p.bridge, links, mtu=None)
    if p.vlan:
        dev, parent, vid = p.vlan
        if parent not in links:
            raise MappingError(f"VLAN parent interface {parent} does not exist on this host")
        if dev not in links:
            host.ip("link", "add", "link", parent, "name", dev, "type", "vlan", "id", str(vid))
            links = {**links, dev: {"flags": []}}
        plug(dev, p.bridge, links, mtu=None)


def plug(name: str, bridge: str, links: dict[str, dict], *, mtu: int | None,
         up: bool = True) -> bool:
    """Put an existing interface into `bridge` and bring it up (or keep it
    down: a port with admin_state_up false); False when the interface does
    not exist (yet)."""
    rec = links.get(name)
    if rec is None:
        return False
    if rec.get("master") != bridge:
        host.set_master(name, bridge)     # also brings it up
        rec = {**rec, "flags": ["UP"]}
    if up and not host.link_up(rec):
        host.set_up(name)
    elif not up and host.link_up(rec):
        host.ip("link", "set", name, "down")
    if mtu is not None and rec.get("mtu") not in (None, mtu):
        host.set_mtu(name, mtu)
    return True


def ensure_veth(host_end: str, netns: str, ns_end: str, *, bridge: str, mac: str | None,
                mtu: int, links: dict[str, dict], ns_links: dict[str, dict]) -> bool:
    """A veth pair from `bridge` into `netns`. A half-present pair (one end
    lost with a deleted namespace) is recreated whole. True when created."""
    host_end, ns_end = names.ifname(host_end), names.ifname(ns_end)
    present = host_end in links and ns_end in ns_links
    if present and mac and ns_links[ns_end].get("address", "").lower() != names.mac(mac):
        present = False
    if not present:
        if host_end in links:
            host.delete_link(host_end)
        if ns_end in ns_links:
            host.delete_link(ns_end, netns=netns)
        peer = ["peer", "name", ns_end, "mtu", str(mtu)]
        if mac:
            peer += ["address", names.mac(mac)]
        host.ip("link", "add", host_end, "mtu", str(mtu), "type", "veth", *peer, "netns", netns)
        host.tx_checksum_off(ns_end, netns)
        host.set_up(ns_end, netns)
        links = {**links, host_end: {"flags": []}}
    elif not host.link_up(ns_links[ns_end]):
        host.set_up(ns_end, netns)
    plug(host_end, bridge, links, mtu=None)
    return not present


def owned_bridges(links: dict[str, dict]) -> set[str]:
    return {n for n, rec in links.items()
            if n.startswith(OWNED_BRIDGE_PREFIX) and host.link_kind(rec) == "bridge"}
