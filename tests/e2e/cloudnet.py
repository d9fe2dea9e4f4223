"""Helpers for end-to-end tests of a started stackbox's networking: an
`outside` namespace on the cloud's public bridge, polling, and what a
network, router or server leaves on the host, named by the same helpers the
network agent uses (so the tests never guess a name)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

from stackbox.network import hoststate
from stackbox.network.agent import dhcp_veth
from stackbox.network.linux import host, router, secgroup
from tests.api.test_compute_cli import console

DEMO = "stackbox-demo"
OUTSIDE_IP = "172.24.4.250"          # on the default public subnet 172.24.4.0/24
STRANGER_IP = "172.24.4.251"         # a second outside address, for "still filtered"


def sh(*argv, check=True, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=timeout)


@contextlib.contextmanager
def outside_namespace(public_bridge: str):
    """A namespace standing for the outside world, plugged into the cloud's
    public bridge (which is connected to nothing else)."""
    ns, veth = f"sbx-out-{uuid.uuid4().hex[:6]}", f"sbx-o{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", public_bridge, "up")
        for address in (OUTSIDE_IP, STRANGER_IP):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", ns, check=False)


def wait_until(predicate, *, timeout: float, what: str, interval: float = 1.0):
    """The first truthy predicate() within `timeout` seconds, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def pings(ns: str, address: str, *, source: str | None = None) -> bool:
    src = ["-I", source] if source else []
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", *src, address,
              check=False).returncode == 0


def wait_ping(ns: str, address: str, *, timeout: float = 90) -> float:
    """Seconds until `address` answers a ping from namespace `ns`."""
    started = time.monotonic()
    wait_until(lambda: pings(ns, address), timeout=timeout,
               what=f"{address} answers a ping from {ns}", interval=0.5)
    return time.monotonic() - started


def dnsmasq_pids(network_id: str) -> list[int]:
    """dnsmasq processes started for `network_id` (their --conf-file lives in
    a directory named after the network)."""
    wanted = f"/dhcp/{network_id}/dnsmasq.conf".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and any(wanted in a for a in argv):
            pids.append(int(entry.name))
    return sorted(pids)


def in_namespace(pid: int, ns: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == host.netns_inode(ns)
    except OSError:
        return False


def qemu_pids(server_id: str) -> list[int]:
    out = sh("pgrep", "-f", f"qemu-system.*{server_id}", check=False).stdout
    return [int(p) for p in out.split()]


def host_objects(*, networks=(), routers=(), router_ports=(), ports=(),
                 servers=()) -> dict[str, bool]:
    """'kind name' -> present on the host, for everything the agents make
    for these resources (ids as the API returns them)."""
    links, netns, tables = host.links(), host.netns_names(), host.nft_tables()
    out: dict[str, bool] = {}
    for net in networks:
        for name in (hoststate.bridge_name(net), dhcp_veth(net)):
            out[f"link {name}"] = name in links
        ns = hoststate.dhcp_namespace(net)
        out[f"netns {ns}"] = ns in netns
        out[f"dnsmasq {net}"] = bool(dnsmasq_pids(net))
        out[f"dhcp files {net}"] = any(Path("/run/stackbox").glob(f"*/dhcp/{net}"))
    for r in routers:
        ns = hoststate.router_namespace(r)
        out[f"netns {ns}"] = ns in netns
        gw = router.gateway_names(r)[0]
        out[f"link {gw}"] = gw in links
    for port in router_ports:
        name = router.interface_names(port)[0]
        out[f"link {name}"] = name in links
    for port in ports:
        tap = hoststate.tap_name(port)
        out[f"link {tap}"] = tap in links
        for family in ("bridge", "inet"):
            table = secgroup.table_name(port)
            out[f"table {family} {table}"] = (family, table) in tables
    for server in servers:
        out[f"qemu {server}"] = bool(qemu_pids(server))
    return out


def floating_ip_plumbed(router_id: str, address: str) -> bool:
    """The router's namespace holds `address` on its gateway interface and
    NATs it."""
    ns, qg = hoststate.router_namespace(router_id), router.gateway_names(router_id)[1]
    if ns not in host.netns_names():
        return False
    nat = host.nft_table_text("ip", router.NAT_TABLE, ns) or ""
    return f"{address}/32" in host.addresses(qg, ns) and "dnat to" in nat and address in nat


def carrying(ids) -> list[str]:
    """Every link, namespace, nft table (host and namespaces) and process on
    the host whose name or command line carries one of `ids`: names by the
    7 characters every host name keeps, command lines by the full id."""
    prefixes = [i.replace("-", "")[:7] for i in ids]
    found = [f"link {n}" for n in host.links() if any(p in n for p in prefixes)]
    for ns in sorted(host.netns_names()):
        if any(p in ns for p in prefixes):
            found.append(f"netns {ns}")
    found += [f"table {f} {n}" for f, n in host.nft_tables() if any(p in n for p in prefixes)]
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and entry.name != str(os.getpid()) and \
                any(i in argv for i in ids):
            found.append(f"process {entry.name} {argv.replace(chr(0), ' ')[:120]}")
    return found


# One line per round of the guest loop below.
ROUND = re.compile(r"STACKBOX-E2E: round=(\d+) gw=(\w+) peer=(\w+)(?: spoof=(\S+))?")


def guest_loop(*, gateway: str, peer: str, spoof: str = "") -> str:
    """User-data for the tiny guest: a background loop that, every round,
    pings the gateway and `peer` and, when `spoof` is an address, tries to
    read the metadata service pretending to be that address (its own source
    address and an ARP claim at the router); one console line per round.
    The addresses are changed only between the pings, never during them."""
    return f"""#!/bin/sh
GW={gateway} PEER={peer} SPOOF={spoof}
say() {{ echo "STACKBOX-E2E: $*" > /dev/ttyS0; }}
probe() {{ if "$@" >/dev/null 2>&1; then echo ok; else echo fail; fi; }}
uuid_of() {{ tr -d '\\r\\n' | sed -n 's/.*"uuid"[[:space:]]*:[[:space:]]*"\\([^"]*\\)".*/\\1/p'; }}
spoof() {{
    ip addr add "$SPOOF/32" dev eth0 2>/dev/null
    ip route replace 169.254.169.254/32 via "$GW" dev eth0 src "$SPOOF"
    arping -q -c 1 -w 1 -s "$SPOOF" -I eth0 "$GW" >/dev/null 2>&1
    got=$(timeout 6 wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json \\
          2>/dev/null | uuid_of)
    ip route del 169.254.169.254/32
    ip addr del "$SPOOF/32" dev eth0
    echo "${{got:-none}}"
}}
(
    n=0
    while true; do
        n=$((n + 1))
        line="round=$n gw=$(probe ping -c 1 -W 2 "$GW") peer=$(probe ping -c 1 -W 2 "$PEER")"
        [ -n "$SPOOF" ] && line="$line spoof=$(spoof)"
        say "$line"
        sleep 1
    done
) < /dev/null > /dev/null 2>&1 &
"""


def rounds(cloud, server: str) -> list[dict]:
    return [{"n": int(m[1]), "gw": m[2], "peer": m[3], "spoof": m[4]}
            for m in ROUND.finditer(console(cloud, server))]


def wait_round(cloud, server: str, predicate, *, after: int = 0, timeout: float = 90,
               what: str = "") -> dict:
    """The first round numbered above `after` for which predicate(round) holds."""
    def found():
        return next((r for r in rounds(cloud, server)
                     if r["n"] > after and predicate(r)), None)
    return wait_until(found, timeout=timeout, interval=2,
                      what=f"{server}: a round after {after} with {what}")


def last_round(cloud, server: str) -> int:
    return max((r["n"] for r in rounds(cloud, server)), default=0)


class Undo:
    """CLI commands run at teardown, last registered first, pass or fail
    (each may fail: what it removes may be gone already)."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.steps: list[tuple[tuple[str, ...], str]] = []

    def add(self, *args: str, cloud: str = DEMO) -> None:
        self.steps.append((args, cloud))

    def __enter__(self) -> "Undo":
        return self

    def __exit__(self, *exc) -> None:
        for args, cloud in reversed(self.steps):
            self.cloud.openstack(*args, cloud=cloud, check=False, as_json=False)
