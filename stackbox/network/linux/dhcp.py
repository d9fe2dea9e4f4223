"""DHCP for one network: a dnsmasq in the namespace `sbx-dhcp-<net>`, on a
veth whose other end sits in the network's bridge.

Three files per network under `/run/stackbox/<agent>/dhcp/<network id>/`: `dnsmasq.conf`
(interfaces and ranges: a change restarts dnsmasq), `hosts` (MAC -> IP,
hostname per port) and `opts` (per-subnet options): changes to these two are
picked up on SIGHUP without dropping anything. The builders are pure; the
`Dnsmasq` class starts, reloads, adopts and stops the processes.

Options follow RFC 3442: a client that receives option 121 ignores the router
option, so whenever 121 is sent it carries the default route too; 249 is the
same list for older Windows clients. On a network without a router, guests
reach the metadata service through the DHCP namespace: a host route to
169.254.169.254/32 via the DHCP port ("isolated metadata").
"""

from __future__ import annotations

import ipaddress
import logging
import hashlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from stackbox.common.fsutil import atomic_write
from stackbox.network.hoststate import NetworkState, PortState, SubnetState
from stackbox.network.linux import host, names

log = logging.getLogger("stackbox.network.dhcp")

METADATA_CIDR = "169.254.169.254/32"
LEASE_SECONDS = 86400
DHCP_OWNER = "network:dhcp"
NS_IFACE = "sbx-dhcp0"          # inside the namespace, so one name serves every network


def dhcp_port(network: NetworkState) -> PortState | None:
    for port in network.ports:
        if port.device_owner == DHCP_OWNER:
            return port
    return None


def dhcp_subnets(network: NetworkState) -> list[SubnetState]:
    """Subnets dnsmasq serves (IPv4 with DHCP enabled)."""
    return [s for s in network.subnets if s.enable_dhcp and s.ip_version == 4]


def wants_dhcp(network: NetworkState) -> bool:
    return bool(dhcp_subnets(network)) and dhcp_port(network) is not None


def tag(subnet: SubnetState) -> str:
    return "s-" + names.short(subnet.id)


def port_interface_addresses(network: NetworkState) -> list[str]:
    """'ip/prefixlen' of the DHCP port on each of the network's subnets."""
    port = dhcp_port(network)
    if port is None:
        return []
    by_id = {s.id: s for s in network.subnets}
    out = []
    for subnet_id, ip in port.fixed_ips:
        subnet = by_id.get(subnet_id)
        if subnet is not None:
            out.append(f"{names.ip(ip)}/{ipaddress.ip_network(subnet.cidr).prefixlen}")
    return out


def dnsmasq_conf(network: NetworkState, *, directory: Path) -> str:
    lines = [
        f"# stackbox DHCP for network {network.id}",
        "port=0",                      # no DNS: guests get the subnet's dns_nameservers
        "bind-interfaces",
        f"interface={NS_IFACE}",
        "except-interface=lo",
        "no-resolv",
        "no-hosts",
        "no-ping",
        "dhcp-authoritative",
        "leasefile-ro",                # every answer comes from the hosts file
        f"dhcp-hostsfile={directory / 'hosts'}",
        f"dhcp-optsfile={directory / 'opts'}",
        f"pid-file={directory / 'pid'}",
        f"log-facility={directory / 'log'}",
    ]
    for subnet in dhcp_subnets(network):
        n = ipaddress.ip_network(subnet.cidr, strict=False)
        lines.append(f"dhcp-range=set:{tag(subnet)},{n.network_address},static,"
                     f"{n.netmask},{LEASE_SECONDS}s")
    return "\n".join(lines) + "\n"


def hosts_file(network: NetworkState) -> str:
    """One line per port with an address on a served subnet:
    `mac,ip,hostname` (hostname left out when unusable or taken)."""
    served = {s.id: s for s in dhcp_subnets(network)}
    seen_names: set[str] = set()
    lines = []
    for port in sorted(network.ports, key=lambda p: p.id):
        if port.device_owner == DHCP_OWNER or not port.admin_state_up:
            continue
        ips = [ip for sid, ip in port.fixed_ips if sid in served]
        if not ips:
            continue
        ip = names.ip(ips[0])
        name = names.hostname(port.hostname) or "host-" + ip.replace(".", "-")
        fields = [names.mac(port.mac), ip]
        if name not in seen_names:
            seen_names.add(name)
            fields.append(name)
        lines.append(",".join(fields))
    return "\n".join(lines) + ("\n" if lines else "")


def classless_routes(network: NetworkState, subnet: SubnetState) -> list[tuple[str, str]]:
    """Option 121/249 entries (destination, next hop) for `subnet`."""
    routes: list[tuple[str, str]] = []
    for other in network.subnets:
        if other.id != subnet.id and other.ip_version == 4:
            routes.append((names.net(other.cidr), "0.0.0.0"))   # on-link
    if not network.has_router:
        port = dhcp_port(network)
        own = [ip for sid, ip in (port.fixed_ips if port else ()) if sid == subnet.id]
        if own:
            routes.append((METADATA_CIDR, names.ip(own[0])))
    for dest, nexthop in subnet.host_routes:
        if names.version(dest) == 4:
            routes.append((names.net(dest), names.ip(nexthop)))
    if routes and subnet.gateway_ip:
        if not any(d in ("0.0.0.0/0", "0.0.0.0") for d, _ in routes):
            routes.append(("0.0.0.0/0", names.ip(subnet.gateway_ip)))
    seen, out = set(), []
    for dest, hop in routes:
        dest = dest if "/" in dest else f"{dest}/32"
        if dest not in seen:
            seen.add(dest)
            out.append((dest, hop))
    return out


def opts_file(network: NetworkState) -> str:
    lines = []
    for subnet in dhcp_subnets(network):
        t = f"tag:{tag(subnet)}"
        # An empty router option stops dnsmasq from offering itself as the
        # router, so a subnet without a gateway gives no default route.
        gw = names.ip(subnet.gateway_ip) if subnet.gateway_ip else ""
        lines.append(f"{t},option:router{',' + gw if gw else ''}")
        dns = [names.ip(a) for a in subnet.dns_nameservers if names.version(a) == 4]
        lines.append(f"{t},option:dns-server{''.join(',' + a for a in dns)}")
        lines.append(f"{t},option:mtu,{int(network.mtu)}")
        routes = classless_routes(network, subnet)
        if routes:
            flat = ",".join(f"{d},{h}" for d, h in routes)
            lines.append(f"{t},option:classless-static-route,{flat}")
            lines.append(f"{t},249,{flat}")
    return "\n".join(lines) + ("\n" if lines else "")


def removed_hosts(old: str, new: str) -> set[str]:
    """`mac,ip` pairs in the old hosts file that the new one no longer has."""
    def pairs(text: str) -> set[str]:
        return {",".join(line.split(",")[:2]) for line in text.splitlines() if line}
    return pairs(old) - pairs(new)


# --- processes ---------------------------------------------------------------

@dataclass
class Files:
    conf: str
    hosts: str
    opts: str


def render(network: NetworkState, directory: Path) -> Files:
    return Files(dnsmasq_conf(network, directory=directory), hosts_file(network),
                 opts_file(network))


def _write_readable(path: Path, text: str) -> None:
    atomic_write(path, text.encode())
    path.chmod(0o644)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


RUNTIME_ROOT = Path("/run/stackbox")


def default_runtime_dir(state_dir: Path) -> Path:
    """The agent's directory under /run: one per state dir, so agents of
    several clouds on one host never share files."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return RUNTIME_ROOT / digest


class Dnsmasq:
    """The dnsmasq processes of one agent, found again through their pid
    files (a restarted agent adopts them; they outlive it)."""

    def __init__(self, state_dir: Path, *, binary: str | None = None,
                 runtime_dir: Path | None = None):
        # dnsmasq drops root for `nobody` and then reads its hosts files, so
        # they must not sit under a data dir that others cannot enter (a
        # 0700 data dir is common): they live under /run/stackbox/<id of
        # the state dir>/, one directory per agent, rebuilt every pass.
        if runtime_dir is None:
            runtime_dir = default_runtime_dir(state_dir)
        for path in (runtime_dir.parent, runtime_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        self.root = runtime_dir / "dhcp"
        self.binary = binary or shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

    def directory(self, network_id: str) -> Path:
        return self.root / names.safe_id(network_id)

    def pid(self, network_id: str, netns: str | None = None) -> int | None:
        """The live dnsmasq serving `network_id` (in `netns`, when given)."""
        d = self.directory(network_id)
        try:
            pid = int((d / "pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if not cmdline or not cmdline[0].endswith(b"dnsmasq") or \
                f"--conf-file={d / 'dnsmasq.conf'}".encode() not in cmdline:
            return None
        if netns is not None:
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino != host.netns_inode(netns):
                    return None   # its namespace was deleted and made again
            except OSError:
                return None
        return pid

    def ensure(self, network: NetworkState, netns: str) -> str:
        """Converge files and process; returns what it did (for the log)."""
        d = self.directory(network.id)
        d.mkdir(parents=True, exist_ok=True)
        # dnsmasq reads the hosts and options files after dropping root
        # (to nobody), on start and on every SIGHUP.
        for path in (self.root, d):
            path.chmod(0o755)
        files = render(network, d)
        conf_changed = _read(d / "dnsmasq.conf") != files.conf
        # dnsmasq keeps leases in memory and will not hand a configured
        # address to a new MAC while an old lease holds it ("not using
        # configured address ... because it is leased to ..."). Leases are
        # not kept on disk (leasefile-ro), so a restart forgets them: do that
        # when a host entry goes away; additions only need SIGHUP.
        if removed_hosts(_read(d / "hosts") or "", files.hosts):
            conf_changed = True
        reload = False
        for name, text in (("hosts", files.hosts), ("opts", files.opts)):
            if _read(d / name) != text:
                _write_readable(d / name, text)
                reload = True
        if conf_changed:
            atomic_write(d / "dnsmasq.conf", files.conf.encode())
        pid = self.pid(network.id, netns)
        if pid is not None and not conf_changed:
            if reload:
                os.kill(pid, signal.SIGHUP)
                return "reloaded"
            return "unchanged"
        self._kill(network.id)   # also one left in a namespace deleted by hand
        host.run_in(netns, [self.binary, f"--conf-file={d / 'dnsmasq.conf'}"])
        return "restarted" if pid else "started"

    def _kill(self, network_id: str) -> None:
        pid = self.pid(network_id)
        if pid is not None:
            terminate(pid)

    def stop(self, network_id: str) -> None:
        self._kill(network_id)
        shutil.rmtree(self.directory(network_id), ignore_errors=True)

    def remove_runtime_dir(self) -> None:
        """Remove this agent's directories under /run once no network has
        files there (the agent is being cleaned up: nothing may stay)."""
        for path in (self.root, self.root.parent):
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                return          # not empty: a network still has its files

    def known(self) -> set[str]:
        """Network ids with a state directory (running or not)."""
        try:
            return {p.name for p in self.root.iterdir() if p.is_dir()}
        except OSError:
            return set()


def terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pid)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


__all__ = ["Dnsmasq", "dnsmasq_conf", "hosts_file", "opts_file", "classless_routes"]
