"""Security groups and anti-spoofing for one port, as nftables rule sets.

Two tables per port, named after the port so ports never share state:

- `bridge sbx-p-<port>` (stateless, layer 2): frames from the port's tap may
  only carry its MAC and its (MAC, IP) pairs, ARP included; the port may ask
  for DHCP but not answer it, and may not send router advertisements.
- `inet sbx-p-<port>` (stateful): the kernel hands bridged IP packets to the
  inet hooks (br_netfilter, `bridge-nf-call-iptables=1`), where conntrack
  works. There the in/out interface is the bridge, so the port is told apart
  by its addresses — trustworthy because the bridge table already dropped
  spoofed sources. Default deny ingress, the groups' rules (remote groups as
  sets of member IPs), DHCP and metadata always allowed.

Each table lives in its own base chain, so a packet between two ports must
pass both ports' tables (an accept in one table does not skip the other).
Everything here is pure text building; `apply_port` and `remove_port` are
the only functions touching the host. A rule set is replaced atomically:
create-if-missing, delete, define again, all in one `nft -f` transaction.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

from stackbox.network.hoststate import PortState, SecurityGroupRuleState, SecurityGroupState
from stackbox.network.linux import host, names

TABLE_PREFIX = "sbx-p-"
METADATA_IP = "169.254.169.254"

# Neutron accepts these names for `protocol`; nft wants numbers for most.
PROTOCOL_NUMBERS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "icmp": 1, "icmpv6": 58,
    "igmp": 2, "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113,
    "rsvp": 46, "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
_PORTED = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
_ND_TYPES = "{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }"


def table_name(port_id: str) -> str:
    return TABLE_PREFIX + names.short(port_id)


def _set_block(name: str, kind: str, elements: Iterable[str], *, interval: bool = True) -> list[str]:
    elems = sorted(set(elements))
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if interval:
        lines.append("\t\tflags interval")
    if elems:
        lines.append(f"\t\telements = {{ {', '.join(elems)} }}")
    lines.append("\t}")
    return lines


def _port_addresses(port: PortState) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(mac, ip-or-prefix) pairs the port may send from, per IP version."""
    mac = names.mac(port.mac)
    v4, v6 = [], []
    pairs = [(mac, ip) for _, ip in port.fixed_ips]
    pairs += [(names.mac(pmac or port.mac), ip) for ip, pmac in port.allowed_address_pairs]
    for m, ip in pairs:
        (v4 if names.version(ip) == 4 else v6).append((m, names.net(ip)))
    return v4, v6


def bridge_table(port: PortState) -> str:
    """The layer-2 anti-spoofing table for one port (pure)."""
    table = table_name(port.id)
    tap = names.ifname(port.tap)
    v4, v6 = _port_addresses(port)
    macs = {names.mac(port.mac)} | {m for m, _ in v4 + v6}
    v6 = v6 + [(m, "fe80::/10") for m in sorted(macs)]
    lines = [f"table bridge {table} {{", f'\tcomment "stackbox port {port.id}"']
    lines += _set_block("macs", "ether_addr", macs, interval=False)
    lines += _set_block("allowed4", "ether_addr . ipv4_addr", (f"{m} . {ip}" for m, ip in v4))
    lines += _set_block("allowed6", "ether_addr . ipv6_addr", (f"{m} . {ip}" for m, ip in v6))
    lines += [
        "\tchain base {",
        "\t\ttype filter hook forward priority -200; policy accept;",
        f'\t\tiifname "{tap}" jump from_port',
        "\t}",
        "\tchain from_port {",
        "\t\tether saddr != @macs drop",
        # RFC 5227 probes come from 0.0.0.0 before an address is in use.
        "\t\tether type arp arp saddr ip 0.0.0.0 accept",
        "\t\tether type arp arp saddr ether . arp saddr ip != @allowed4 drop",
        "\t\tether type arp accept",
        "\t\tether type ip udp sport 68 udp dport 67 accept",
        "\t\tether type ip udp sport 67 drop",
        "\t\tether type ip ether saddr . ip saddr != @allowed4 drop",
        "\t\tether type ip6 icmpv6 type nd-router-advert drop",
        "\t\tether type ip6 udp sport 547 drop",
        "\t\tether type ip6 ip6 saddr :: accept",
        "\t\tether type ip6 ether saddr . ip6 saddr != @allowed6 drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _protocol(rule: SecurityGroupRuleState, version: int) -> tuple[str, int | None]:
    p = (rule.protocol or "").lower()
    if p in ("", "any", "0"):
        return "", None
    if p == "icmp" and version == 6:
        p = "icmpv6"
    number = PROTOCOL_NUMBERS.get(p)
    if number is None:
        try:
            number = int(p)
        except ValueError:
            raise ValueError(f"security group rule {rule.id}: unknown protocol {rule.protocol!r}")
        if not 0 <= number <= 255:
            raise ValueError(f"security group rule {rule.id}: protocol {number} out of 0-255")
    return f"meta l4proto {number}", number


def _ports(rule: SecurityGroupRuleState, number: int | None) -> str:
    lo, hi = rule.port_range_min, rule.port_range_max
    if number in _PORTED and lo is not None:
        hi = lo if hi is None else hi
        rng = str(lo) if lo == hi else f"{int(lo)}-{int(hi)}"
        return f"{_PORTED[number]} dport {rng}"
    if number in (1, 58) and lo is not None:
        name = "icmp" if number == 1 else "icmpv6"
        expr = f"{name} type {int(lo)}"
        if hi is not None:
            expr += f" {name} code {int(hi)}"
        return expr
    return ""


def rule_expr(rule: SecurityGroupRuleState, version: int) -> str | None:
    """One accept rule in nft syntax, or None when it does not apply to
    `version` (an IPv6 rule in the IPv4 half, say)."""
    want = 4 if rule.ethertype.lower() == "ipv4" else 6
    if want != version:
        return None
    fam = "ip" if version == 4 else "ip6"
    parts = [f"meta nfproto ipv{version}"]
    side = "saddr" if rule.direction == "ingress" else "daddr"
    if rule.remote_ip_prefix:
        if names.version(rule.remote_ip_prefix) != version:
            return None
        prefix = names.net(rule.remote_ip_prefix)
        if prefix not in ("0.0.0.0/0", "::/0"):
            parts.append(f"{fam} {side} {prefix}")
    elif rule.remote_group_id:
        parts.append(f"{fam} {side} @{group_set(rule.remote_group_id, version)}")
    proto, number = _protocol(rule, version)
    if proto:
        parts.append(proto)
        ports = _ports(rule, number)
        if ports:
            parts.append(ports)
    return " ".join(parts) + " accept"


def group_set(group_id: str, version: int) -> str:
    return f"sg-{names.short(group_id)}-{version}"


def inet_table(port: PortState, *, bridge: str,
               groups: Mapping[str, SecurityGroupState]) -> str:
    """The stateful filter for one port (pure). `groups` holds at least the
    port's groups and every group their rules name as remote group."""
    table = table_name(port.id)
    br = names.ifname(bridge)
    v4, v6 = _port_addresses(port)
    rules = [r for gid in port.security_group_ids if gid in groups for r in groups[gid].rules]
    remote = sorted({r.remote_group_id for r in rules if r.remote_group_id})
    lines = [f"table inet {table} {{", f'\tcomment "stackbox port {port.id}"']
    for gid in remote:
        members = groups[gid].member_ips if gid in groups else ()
        for version in (4, 6):
            kind = "ipv4_addr" if version == 4 else "ipv6_addr"
            lines += _set_block(group_set(gid, version), kind,
                                (names.net(m) for m in members if names.version(m) == version))
    lines += ["\tchain base {", "\t\ttype filter hook forward priority 0; policy accept;"]
    for fam, addrs in (("ip", v4), ("ip6", v6)):
        if addrs:
            own = ", ".join(sorted({ip for _, ip in addrs}))
            lines.append(f'\t\tiifname "{br}" {fam} saddr {{ {own} }} jump egress')
            lines.append(f'\t\toifname "{br}" {fam} daddr {{ {own} }} jump ingress')
    lines.append("\t}")
    for direction in ("ingress", "egress"):
        lines += [f"\tchain {direction} {{",
                  "\t\tct state established,related accept",
                  "\t\tct state invalid drop",
                  f"\t\ticmpv6 type {_ND_TYPES} accept"]
        if direction == "ingress":
            lines.append("\t\tudp sport 67 udp dport 68 accept")
        else:
            lines.append("\t\tudp sport 68 udp dport 67 accept")
            lines.append(f"\t\tip daddr {METADATA_IP} tcp dport 80 accept")
        exprs = []
        for rule in rules:
            if rule.direction != direction:
                continue
            for version in (4, 6):
                expr = rule_expr(rule, version)
                if expr and expr not in exprs:
                    exprs.append(expr)
        lines += [f"\t\t{e}" for e in exprs]
        lines += ["\t\tdrop", "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def port_ruleset(port: PortState, *, bridge: str,
                 groups: Mapping[str, SecurityGroupState]) -> str:
    """The whole `nft -f` script for one port: both tables replaced in one
    transaction (declare so `delete` cannot fail, delete, define)."""
    table = table_name(port.id)
    head = []
    for family in ("bridge", "inet"):
        head += [f"table {family} {table} {{}}", f"delete table {family} {table}"]
    return "\n".join(head) + "\n" + bridge_table(port) + inet_table(
        port, bridge=bridge, groups=groups)


def digest(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()[:16]


def filtered(port: PortState) -> bool:
    """Ports with port security off get no filter at all (as in Neutron)."""
    return port.port_security_enabled


# --- host side ---------------------------------------------------------------

def apply_port(script: str) -> None:
    host.nft_apply(script)


def existing_tables() -> set[str]:
    """Names of port tables present on the host (either family)."""
    return {name for fam, name in host.nft_tables()
            if fam in ("bridge", "inet") and name.startswith(TABLE_PREFIX)}


def remove_table(name: str) -> None:
    for family in ("bridge", "inet"):
        host.nft_delete_table(family, name)


BRIDGE_NF = ("/proc/sys/net/bridge/bridge-nf-call-iptables",
             "/proc/sys/net/bridge/bridge-nf-call-ip6tables")


def ensure_bridge_netfilter() -> bool:
    """Stateful filtering of bridged traffic needs the bridge to hand IP
    packets to the inet hooks (br_netfilter; per network namespace since
    Linux 5.3). Cheap to call every pass: True when it had to switch it on."""
    changed = False
    for path in BRIDGE_NF:
        try:
            if Path(path).read_text().strip() == "1":
                continue
        except FileNotFoundError:
            raise RuntimeError("br_netfilter is not loaded (modprobe br_netfilter): "
                               "security groups cannot filter bridged traffic statefully")
        Path(path).write_text("1\n")
        changed = True
    return changed


__all__ = ["port_ruleset", "bridge_table", "inet_table", "rule_expr", "table_name",
           "apply_port", "remove_table", "existing_tables"]
