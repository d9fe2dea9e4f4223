"""The network agent: converges this host to a `HostState`.

Level-triggered: every pass reads the whole desired state, looks at what the
host has (`ip -j`, nft, pid files) and changes only the difference, so a
restarted agent, a bridge or namespace deleted by hand or a killed dnsmasq
are all repaired by the next pass. One failing network or router is logged
and retried without holding up the others.

What the agent created is remembered in `<state_dir>/owned.json` (names
only). That is what it may delete: a network that leaves the desired state
takes its bridge, veths, namespace, dnsmasq, files and nft tables with it,
while `sbx` objects of another agent or test on the same host are left
alone. `cleanup_all(everything=True)` is the host-wide purge.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from stackbox.common.fsutil import atomic_write
from stackbox.network import hoststate
from stackbox.network.hoststate import HostState, NetworkState, RouterState
from stackbox.network.linux import bridge, dhcp, host, router, secgroup

log = logging.getLogger("stackbox.network.agent")

# Kinds of host object the agent makes, by name prefix (for the purge).
LINK_PREFIXES = (bridge.OWNED_BRIDGE_PREFIX, bridge.VLAN_PREFIX, "sbx-dh-",
                 router.HOST_IF_PREFIX, router.HOST_GW_PREFIX)
NETNS_PREFIXES = ("sbx-dhcp-", "sbx-r-")


class MetadataPlumbing(Protocol):
    """How guests reach the metadata service from a namespace the agent owns
    (stackbox.metadata.plumbing.MetadataPlumbing implements it). Both calls
    are idempotent; the agent makes them on every pass."""

    def ensure(self, namespace: str, networks: Mapping[str, Iterable[str]] | str) -> bool:
        """Serve 169.254.169.254:80 in `namespace`: for one network id (a
        DHCP namespace) or {network id: subnet cidrs} (a router namespace,
        where the source address picks the network)."""

    def remove(self, namespace: str) -> bool:
        """Stop serving in `namespace` (which may already be gone)."""


class NoMetadata:
    def ensure(self, namespace, networks) -> bool:
        return False

    def remove(self, namespace: str) -> bool:
        return False


def dhcp_veth(network_id: str) -> str:
    return "sbx-dh-" + network_id[:8]


@dataclass
class Report:
    """What one pass did; `errors` empty means the host matches."""
    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def change(self, what: str) -> None:
        self.changes.append(what)
        log.info("%s", what)

    def error(self, what: str, exc: BaseException) -> None:
        self.errors.append(f"{what}: {exc}")
        log.warning("%s: %s", what, exc)


class Ledger:
    """Names of host objects this agent created, persisted atomically."""

    KINDS = ("links", "netns", "tables")

    def __init__(self, path: Path):
        self.path = path
        self.items: dict[str, set[str]] = {k: set() for k in self.KINDS}
        try:
            doc = json.loads(path.read_text())
            for k in self.KINDS:
                self.items[k] = set(doc.get(k, ()))
        except (OSError, ValueError):
            pass
        self._saved = self._doc()

    def _doc(self) -> str:
        return json.dumps({"format": 1, **{k: sorted(v) for k, v in self.items.items()}},
                          sort_keys=True)

    def add(self, kind: str, name: str) -> None:
        self.items[kind].add(name)

    def discard(self, kind: str, name: str) -> None:
        self.items[kind].discard(name)

    def save(self) -> None:
        doc = self._doc()
        if doc != self._saved:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, doc.encode())
            self._saved = doc


class NetworkAgent:
    def __init__(self, *, state_dir: Path, desired: Callable[[], HostState],
                 bridge_mappings: Mapping[str, str] | None = None,
                 metadata: MetadataPlumbing | None = None,
                 interval: float = 5.0, max_backoff: float = 60.0):
        self.state_dir = Path(state_dir)
        self.desired = desired
        self.mappings = dict(bridge_mappings or {})
        self.metadata = metadata or NoMetadata()
        self.interval = interval
        self.max_backoff = max_backoff
        self.dnsmasq = dhcp.Dnsmasq(self.state_dir)
        self.ledger = Ledger(self.state_dir / "owned.json")
        self._applied: dict[tuple[str | None, str], str] = {}   # (netns, table) -> digest
        self._lock = threading.Lock()
        self._table_cache: dict[str | None, set[tuple[str, str]]] = {}
        self._forwarding: dict[str, int | None] = {}
        self._links: dict[str, dict] = {}
        self._passes = 0
        self.verify_every = 12
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, settings, *, desired: Callable[[], HostState],
                      metadata: MetadataPlumbing | None = None) -> "NetworkAgent":
        net = settings.network
        return cls(state_dir=Path(settings.data_dir) / "network", desired=desired,
                   bridge_mappings=parse_mappings(getattr(net, "bridge_mappings", {})),
                   metadata=metadata)

    # --- the pass -------------------------------------------------------------

    def reconcile_once(self) -> Report:
        with self._lock:
            report = Report()
            self._passes += 1
            self._table_cache = {}
            self._links = {}
            state = self.desired()
            # Everything the desired state names is kept, converged or not:
            # a network whose pass fails this time must not be torn down.
            keep = _Keep.wanted(state, self.mappings)
            bridges = self._networks(state, report, keep)
            self._routers(state, bridges, report, keep)
            self._security(state, bridges, report, keep)
            self._collect(keep, report)
            self.ledger.save()
            return report

    def _networks(self, state: HostState, report: Report, keep: "_Keep") -> dict[str, str]:
        """Bridges, taps and DHCP; returns network id -> bridge name."""
        links = host.links()
        bridges: dict[str, str] = {}
        taps = {p.tap: p for p in state.bound_ports}
        for net in state.networks:
            for port in net.ports:
                taps.setdefault(port.tap, port)
        for net in state.networks:
            try:
                p = bridge.plan(net, self.mappings, lambda n: (
                    host.link_kind(links[n]) if n in links else None))
                keep.link(p.bridge)
                if p.owned and p.bridge not in links:
                    report.change(f"bridge {p.bridge} for network {net.id}")
                    self.ledger.add("links", p.bridge)
                if p.vlan:
                    keep.link(p.vlan[0])
                    self.ledger.add("links", p.vlan[0])
                bridge.ensure_bridge(p, net.mtu, links)
                bridges[net.id] = p.bridge
            except Exception as e:  # one network must not stop the others
                report.error(f"network {net.id}", e)
        if report.changes or report.errors:
            links = host.links()
        self._links = links
        for tap, port in taps.items():
            br = bridges.get(port.network_id)
            if br and tap in links:
                mtu = next((n.mtu for n in state.networks if n.id == port.network_id), None)
                try:
                    if links[tap].get("master") != br:
                        report.change(f"tap {tap} into {br}")
                    bridge.plug(tap, br, links, mtu=mtu, up=port.admin_state_up)
                except Exception as e:
                    report.error(f"tap {tap}", e)
        for net in state.networks:
            if net.id in bridges and dhcp.wants_dhcp(net):
                try:
                    self._dhcp(net, bridges[net.id], links, report, keep)
                except Exception as e:
                    report.error(f"dhcp for network {net.id}", e)
        return bridges

    def _dhcp(self, net: NetworkState, br: str, links: dict, report: Report,
              keep: "_Keep") -> None:
        ns = hoststate.dhcp_namespace(net.id)
        veth = dhcp_veth(net.id)
        keep.netns.add(ns)
        keep.link(veth)
        keep.dhcp.add(net.id)
        self.ledger.add("netns", ns)
        self.ledger.add("links", veth)
        if host.ensure_netns(ns):
            report.change(f"namespace {ns}")
        port = dhcp.dhcp_port(net)
        ns_links = host.links(ns)
        made = bridge.ensure_veth(veth, ns, dhcp.NS_IFACE, bridge=br, mac=port.mac,
                                  mtu=net.mtu, links=links, ns_links=ns_links)
        host.sync_addresses(dhcp.NS_IFACE, set(dhcp.port_interface_addresses(net)), ns,
                            rec=None if made else ns_links.get(dhcp.NS_IFACE))
        did = self.dnsmasq.ensure(net, ns)
        if did != "unchanged":
            report.change(f"dnsmasq for network {net.id} {did}")
        if not net.has_router:
            self._metadata(ns, net.id, report)

    def _routers(self, state: HostState, bridges: dict[str, str], report: Report,
                 keep: "_Keep") -> None:
        mtus = {n.id: n.mtu for n in state.networks}
        links = self._links
        for r in state.routers:
            try:
                self._router(r, bridges, mtus, links, report, keep)
            except Exception as e:
                report.error(f"router {r.id}", e)

    def _router(self, r: RouterState, bridges: dict[str, str], mtus: dict[str, int],
                links: dict, report: Report, keep: "_Keep") -> None:
        ns = hoststate.router_namespace(r.id)
        keep.netns.add(ns)
        self.ledger.add("netns", ns)
        if host.ensure_netns(ns):
            report.change(f"namespace {ns}")
        # sysctls live as long as the namespace: set once per namespace
        # instance (a namespace made again has a new inode).
        inode = host.netns_inode(ns)
        if self._forwarding.get(ns) != inode:
            router.ensure_forwarding(ns)
            self._forwarding[ns] = inode
        ns_links = host.links(ns)
        inside = set()
        for port_id, itfs in router.interfaces_by_port(r).items():
            itf = itfs[0]
            br = bridges.get(itf.network_id)
            if br is None:
                raise RuntimeError(f"interface {port_id}: network {itf.network_id} "
                                   f"is not on this host")
            outer, inner = router.interface_names(port_id)
            keep.link(outer)
            self.ledger.add("links", outer)
            inside.add(inner)
            made = bridge.ensure_veth(outer, ns, inner, bridge=br, mac=itf.mac,
                                      mtu=mtus.get(itf.network_id, 1500), links=links,
                                      ns_links=ns_links)
            # One port may carry several subnets' addresses (IPv4 and IPv6).
            host.sync_addresses(inner, {f"{i.ip}/{i.prefixlen}" for i in itfs}, ns,
                                rec=None if made else ns_links.get(inner))
        if r.gateway_network_id and r.gateway_ip:
            br = bridges.get(r.gateway_network_id)
            if br is None:
                raise RuntimeError(f"external network {r.gateway_network_id} is not on this host")
            outer, inner = router.gateway_names(r.id)
            keep.link(outer)
            self.ledger.add("links", outer)
            inside.add(inner)
            made = bridge.ensure_veth(outer, ns, inner, bridge=br, mac=r.gateway_mac,
                                      mtu=mtus.get(r.gateway_network_id, 1500), links=links,
                                      ns_links=ns_links)
            host.sync_addresses(inner, router.gateway_addresses(r), ns,
                                rec=None if made else ns_links.get(inner))
        for name in ns_links:
            if name.startswith(("qr-", "qg-")) and name not in inside:
                report.change(f"remove {name} from {ns}")
                host.delete_link(name, ns)
        router.sync_routes(ns, router.desired_routes(r))
        self._apply_table(ns, router.NAT_TABLE, ("ip",), router.nat_ruleset(r), report,
                          instance=inode)
        networks: dict[str, list[str]] = {}
        for itf in r.interfaces:
            cidr = str(ipaddress.ip_interface(f"{itf.ip}/{itf.prefixlen}").network)
            networks.setdefault(itf.network_id, []).append(cidr)
        if networks:
            self._metadata(ns, networks, report)

    def _metadata(self, ns: str, networks, report: Report) -> None:
        # Metadata trouble must not hold up addresses and routes: report it
        # and let the next pass try again.
        try:
            if self.metadata.ensure(ns, networks):
                report.change(f"metadata served in {ns}")
        except Exception as e:
            report.error(f"metadata in {ns}", e)

    def _security(self, state: HostState, bridges: dict[str, str], report: Report,
                  keep: "_Keep") -> None:
        groups = {g.id: g for g in state.security_groups}
        ports = [p for p in state.bound_ports if secgroup.filtered(p)]
        if ports:
            try:
                if secgroup.ensure_bridge_netfilter():
                    report.change("bridged traffic handed to netfilter (br_netfilter)")
            except Exception as e:
                report.error("security groups", e)
        for port in ports:
            br = bridges.get(port.network_id)
            if br is None:
                continue
            table = secgroup.table_name(port.id)
            keep.tables.add(table)
            self.ledger.add("tables", table)
            try:
                script = secgroup.port_ruleset(port, bridge=br, groups=groups)
                self._apply_table(None, table, ("bridge", "inet"), script, report)
            except Exception as e:
                report.error(f"security groups of port {port.id}", e)

    def _apply_table(self, netns: str | None, table: str, families: tuple[str, ...],
                     script: str, report: Report, *, instance: int | None = None) -> None:
        """Apply `script` unless this rule set is known to be in place. In the
        host namespace presence is checked every pass (one `nft` call for all
        port tables); inside a namespace (an `ip netns exec` each) only when
        the namespace was made again, and on every `verify_every`-th pass."""
        key = (netns, table)
        digest = f"{secgroup.digest(script)}@{instance}"
        if self._applied.get(key) == digest:
            if netns is not None and self._passes % self.verify_every:
                return
            if all((family, table) in self._tables(netns) for family in families):
                return
        host.nft_apply(script, netns)
        self._applied[key] = digest
        report.change(f"nft table {table}{' in ' + netns if netns else ''}")

    def _tables(self, netns: str | None) -> set[tuple[str, str]]:
        cache = self._table_cache
        if netns not in cache:
            cache[netns] = host.nft_tables(netns)
        return cache[netns]

    # --- garbage ---------------------------------------------------------------

    def _collect(self, keep: "_Keep", report: Report) -> None:
        for ns in sorted(self.ledger.items["netns"] - keep.netns):
            self._remove_netns(ns, report)
        for net_id in sorted(self.dnsmasq.known() - keep.dhcp):
            self.dnsmasq.stop(net_id)
            report.change(f"dnsmasq for network {net_id} stopped")
        links = host.links() if not self._links else self._links
        self._links = {}
        for name in sorted(self.ledger.items["links"] - keep.links):
            if name in links:
                host.delete_link(name)
                report.change(f"remove link {name}")
            self.ledger.discard("links", name)
        for table in sorted(self.ledger.items["tables"] - keep.tables):
            secgroup.remove_table(table)
            self._applied.pop((None, table), None)
            self.ledger.discard("tables", table)
            report.change(f"remove nft table {table}")

    def _remove_netns(self, ns: str, report: Report) -> None:
        try:
            self.metadata.remove(ns)
        except Exception as e:
            report.error(f"metadata in {ns}", e)
        if ns.startswith("sbx-dhcp-"):
            for net_id in self.dnsmasq.known():
                if hoststate.dhcp_namespace(net_id) == ns:
                    self.dnsmasq.stop(net_id)
        if ns in host.netns_names():
            # Nothing may outlive its namespace unseen (a dnsmasq whose
            # state directory is gone, say): stop whatever still runs in it.
            for pid in host.netns_pids(ns):
                dhcp.terminate(pid)
            host.delete_netns(ns)
            report.change(f"remove namespace {ns}")
        self._applied = {k: v for k, v in self._applied.items() if k[0] != ns}
        self.ledger.discard("netns", ns)

    def cleanup_all(self, *, everything: bool = False) -> Report:
        """Remove every host object this agent made (`everything`: every
        object of the agent's kinds on the host, whoever made it)."""
        with self._lock:
            report = Report()
            self._links = {}
            if everything:
                for ns in host.netns_names():
                    if ns.startswith(NETNS_PREFIXES):
                        self.ledger.add("netns", ns)
                for name in host.links():
                    if name.startswith(LINK_PREFIXES):
                        self.ledger.add("links", name)
                for table in secgroup.existing_tables():
                    self.ledger.add("tables", table)
            self._collect(_Keep(), report)
            self.dnsmasq.remove_runtime_dir()
            self.ledger.save()
            return report

    # --- the loop ---------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass now (thread-safe; e.g. after an API change)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set: every `interval` seconds when
        the host converges, backing off (doubling, up to `max_backoff`)
        while passes fail."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            try:
                report = await asyncio.to_thread(self.reconcile_once)
                failures = failures + 1 if report.errors else 0
            except Exception:
                log.exception("network agent pass failed")
                failures += 1
            delay = self.interval if not failures else min(
                self.max_backoff, self.interval * 2 ** failures)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()



class _Keep:
    """Names the current pass wants to keep."""

    def __init__(self):
        self.links: set[str] = set()
        self.netns: set[str] = set()
        self.tables: set[str] = set()
        self.dhcp: set[str] = set()

    def link(self, name: str) -> None:
        self.links.add(name)

    @classmethod
    def wanted(cls, state: HostState, mappings: Mapping[str, str]) -> "_Keep":
        """Every host object name `state` implies (names only: no checks)."""
        keep = cls()
        for net in state.networks:
            keep.link(net.bridge)
            if net.network_type == "vlan":
                keep.link(bridge.vlan_device(net.id))
            if net.physical_network in mappings:
                keep.link(mappings[net.physical_network])
            if dhcp.wants_dhcp(net):
                keep.netns.add(hoststate.dhcp_namespace(net.id))
                keep.link(dhcp_veth(net.id))
                keep.dhcp.add(net.id)
        for r in state.routers:
            keep.netns.add(hoststate.router_namespace(r.id))
            keep.link(router.gateway_names(r.id)[0])
            for itf in r.interfaces:
                keep.link(router.interface_names(itf.port_id)[0])
        for port in state.bound_ports:
            if secgroup.filtered(port):
                keep.tables.add(secgroup.table_name(port.id))
        return keep


def parse_mappings(value) -> dict[str, str]:
    """`{"physnet1": "br-ex"}` or "physnet1:br-ex,physnet2:br-ex2" (Neutron's
    spelling) or a list of "physnet:interface" strings."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out = {}
    for item in items:
        item = item.strip()
        if item:
            physnet, _, iface = item.partition(":")
            out[physnet.strip()] = iface.strip()
    return out


__all__ = ["NetworkAgent", "MetadataPlumbing", "Report", "parse_mappings"]
