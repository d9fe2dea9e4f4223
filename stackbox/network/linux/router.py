"""A router is a network namespace `sbx-r-<router>` that forwards between
its interfaces:

- `qr-<port>` per attached subnet, a veth whose peer `sbx-ri-<port>` sits in
  that network's bridge; it carries the router port's MAC and address;
- `qg-<router>` on the external network (peer `sbx-rg-<router>` in the
  external bridge) with the gateway address and every floating IP as /32,
  so the namespace answers ARP for them;
- routes: default via the external subnet's gateway, plus the router's extra
  routes (`openstack router set --route`), all tagged `proto static` so a
  pass can tell them from the kernel's connected routes and drop the stale;
- nftables table `ip sbx-router` in the namespace: DNAT/SNAT per floating IP
  and SNAT of the internal subnets to the gateway address.

`nat_ruleset` and `desired_routes` are pure; `ensure` converges one router.
"""

from __future__ import annotations

import ipaddress

from stackbox.network.hoststate import RouterInterfaceState, RouterState
from stackbox.network.linux import host, names

NAT_TABLE = "sbx-router"
HOST_IF_PREFIX = "sbx-ri-"
HOST_GW_PREFIX = "sbx-rg-"


def interface_names(port_id: str) -> tuple[str, str]:
    """(end in the network's bridge, end in the router namespace)."""
    s = names.short(port_id)
    return HOST_IF_PREFIX + s, "qr-" + s


def interfaces_by_port(r: RouterState) -> dict[str, list[RouterInterfaceState]]:
    """The router's interfaces grouped by port: one veth per port, with
    every address the port has (one entry per subnet in the state)."""
    out: dict[str, list[RouterInterfaceState]] = {}
    for itf in r.interfaces:
        out.setdefault(itf.port_id, []).append(itf)
    return out


def gateway_names(router_id: str) -> tuple[str, str]:
    s = names.short(router_id)
    return HOST_GW_PREFIX + s, "qg-" + s


def nat_ruleset(router: RouterState) -> str:
    """The whole `nft -f` script for the router's NAT table (pure)."""
    _, qg = gateway_names(router.id)
    pre, out, post = [], [], []
    inside = sorted({str(ipaddress.ip_interface(f"{i.ip}/{i.prefixlen}").network)
                     for i in router.interfaces if names.version(i.ip) == 4})
    if router.gateway_ip:
        if router.floating_ips and inside:
            # Hairpin: a guest reaching a neighbour's floating IP is DNATed
            # back inside; without SNAT the neighbour would answer directly
            # from its fixed address and the guest would drop the reply.
            nets = ", ".join(inside)
            post.append(f"ct status dnat ip saddr {{ {nets} }} ip daddr {{ {nets} }} masquerade")
        for fip in sorted(router.floating_ips, key=lambda f: f.floating_ip):
            public, private = names.ip(fip.floating_ip), names.ip(fip.fixed_ip)
            pre.append(f"ip daddr {public} dnat to {private}")
            out.append(f"ip daddr {public} dnat to {private}")
            post.append(f'ip saddr {private} oifname "{qg}" snat to {public}')
        if router.enable_snat and inside:
            post.append(f'ip saddr {{ {", ".join(inside)} }} oifname "{qg}" '
                        f"snat to {names.ip(router.gateway_ip)}")
    lines = [f"table ip {NAT_TABLE} {{}}", f"delete table ip {NAT_TABLE}",
             f"table ip {NAT_TABLE} {{", f'\tcomment "stackbox router {router.id}"']
    for chain, hook, prio, rules in (("prerouting", "prerouting", "-100", pre),
                                     ("output", "output", "-100", out),
                                     ("postrouting", "postrouting", "100", post)):
        lines += [f"\tchain {chain} {{",
                  f"\t\ttype nat hook {hook} priority {prio}; policy accept;"]
        lines += [f"\t\t{r}" for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def desired_routes(router: RouterState) -> dict[str, str]:
    """destination -> next hop for the routes this pass should leave in place."""
    routes = {}
    if router.gateway_ip and router.external_gateway:
        routes["default"] = names.ip(router.external_gateway)
    for dest, nexthop in router.routes:
        d = names.net(dest)
        if d in ("0.0.0.0/0", "::/0"):
            d = "default"
        routes[d] = names.ip(nexthop)
    return routes


def gateway_addresses(router: RouterState) -> set[str]:
    if not router.gateway_ip:
        return set()
    addrs = {f"{names.ip(router.gateway_ip)}/{int(router.gateway_prefixlen or 32)}"}
    addrs |= {f"{names.ip(f.floating_ip)}/32" for f in router.floating_ips}
    return addrs


# --- host side ---------------------------------------------------------------

def _route_key(rec: dict) -> str:
    dst = rec.get("dst", "")
    if dst == "default":
        return dst
    return names.net(dst)


def sync_routes(netns: str, want: dict[str, str]) -> None:
    have = {}
    for rec in host.ip_json("-4", "route", "show", "proto", "static", netns=netns):
        have[_route_key(rec)] = rec.get("gateway")
    for dest, gw in have.items():
        if want.get(dest) != gw:
            host.ip("route", "del", dest, netns=netns, check=False)
    for dest, gw in want.items():
        if have.get(dest) != gw:
            # A next hop not (yet) on a connected subnet fails; the next pass
            # retries once the interface is there.
            host.ip("route", "replace", dest, "via", gw, "proto", "static", netns=netns,
                    check=False)


def ensure_forwarding(netns: str) -> None:
    host.sysctl(netns, "net.ipv4.ip_forward", "1")
    # A router answers ARP only for the interface that owns the address;
    # floating IPs sit on qg, which is where their ARP requests arrive.
    host.sysctl(netns, "net.ipv4.conf.all.arp_ignore", "1")
