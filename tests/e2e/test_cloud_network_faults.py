"""Faults through a started stackbox (a cloud of this module's own, since
one test kills it): a server on `private` with a floating IP answers an
`outside` namespace on the public bridge; then its network's bridge is
deleted, its dnsmasq killed, its DHCP and router namespaces and its port's
nft tables deleted, and stackbox itself killed with SIGKILL and started
again. Each time the network agent's
next pass (inside the stackbox process) puts the host back, and the server
is reachable again. Host object names come from the agent's own helpers."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from stackbox.network import hoststate
from stackbox.network.agent import dhcp_veth
from stackbox.network.linux import dhcp, host, secgroup
from tests.api.test_compute_cli import wait_console, wait_status
from tests.conftest import Cloud
from tests.e2e.cloudnet import (DEMO, OUTSIDE_IP, STRANGER_IP, Undo, carrying, dnsmasq_pids,
                                in_namespace, outside_namespace, pings, qemu_pids, sh,
                                wait_ping, wait_until)

REPAIR_TIMEOUT = 60      # the agent passes every 5 s; a loaded machine is slow


@pytest.fixture(scope="module")
def own_cloud():
    root = Path(tempfile.mkdtemp(prefix="sbx-nf-"))
    c = Cloud(root, "sqlite", "")
    try:
        c.start()
        yield c
    finally:
        c.stop()            # --purge: nothing of this cloud outlives the module
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Served:
    cloud: Cloud
    server: str
    port: str
    network: str
    router: str
    fip: str
    key: Path
    outside: str

    def ssh(self, command: str, *, tries: int = 3):
        """Run `command` on the guest over SSH to its floating IP."""
        argv = ["ip", "netns", "exec", self.outside, "ssh", "-i", str(self.key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                f"root@{self.fip}", command]
        for attempt in range(tries):
            proc = sh(*argv, check=False, timeout=60)
            if proc.returncode != 255:      # 255: ssh itself failed
                return proc
            time.sleep(2)
        return proc


@pytest.fixture(scope="module")
def served(own_cloud, tmp_path_factory):
    """A tiny server on `private` (demo project) with a floating IP; its
    group lets the outside namespace's first address ping it and log in;
    its second address (a stranger) is dropped."""
    if shutil.which("ssh") is None:
        pytest.skip("openssh-client not installed")
    c, tag = own_cloud, uuid.uuid4().hex[:6]
    key = tmp_path_factory.mktemp("served") / "id"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    with Undo(c) as undo, outside_namespace(c.public_bridge) as outside:
        c.openstack("keypair", "create", "--public-key", f"{key}.pub", f"f-{tag}", cloud=DEMO)
        undo.add("keypair", "delete", f"f-{tag}")
        sg = c.openstack("security", "group", "create", f"f-{tag}", cloud=DEMO)["id"]
        undo.add("security", "group", "delete", sg)
        for proto, extra in (("icmp", ()), ("tcp", ("--dst-port", "22"))):
            c.openstack("security", "group", "rule", "create", "--protocol", proto, *extra,
                        "--remote-ip", f"{OUTSIDE_IP}/32", sg, cloud=DEMO)
        server = c.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                             "--network", "private", "--key-name", f"f-{tag}",
                             "--security-group", sg, f"f-{tag}", cloud=DEMO)["id"]
        undo.add("server", "delete", "--wait", server)
        fip = c.openstack("floating", "ip", "create", "public", cloud=DEMO)
        undo.add("floating", "ip", "delete", fip["id"])
        wait_status(c, server, "ACTIVE", timeout=180)
        wait_console(c, server, "STACKBOX-TINY: ready", timeout=240)
        c.openstack("server", "add", "floating", "ip", server, fip["floating_ip_address"],
                    cloud=DEMO, as_json=False)
        port = c.openstack("port", "list", "--server", server, cloud=DEMO)[0]["ID"]
        network = c.openstack("network", "show", "private", cloud=DEMO)["id"]
        router = c.openstack("router", "show", "router1", cloud=DEMO)["id"]
        s = Served(c, server, port, network, router, fip["floating_ip_address"], key, outside)
        wait_ping(outside, s.fip)
        _still_filtered(s)
        yield s


def _still_filtered(s: Served) -> None:
    """The group still decides: a source it does not allow is dropped."""
    assert not pings(s.outside, s.fip, source=STRANGER_IP), \
        f"{STRANGER_IP} may not ping {s.fip}: its security group allows only {OUTSIDE_IP}"


def _dhcp_answers(s: Served) -> None:
    """A fresh DHCP exchange from the guest is answered (the script is
    /bin/true: the guest's address is left alone)."""
    proc = s.ssh("udhcpc -n -q -t 4 -T 2 -i eth0 -s /bin/true")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _metadata_answers(s: Served) -> bool:
    """The guest reads its own meta_data.json from 169.254.169.254."""
    proc = s.ssh("timeout 10 wget -q -O - "
                 "http://169.254.169.254/openstack/latest/meta_data.json")
    return proc.returncode == 0 and s.server in proc.stdout


def _wait_metadata(s: Served) -> None:
    wait_until(lambda: _metadata_answers(s), timeout=REPAIR_TIMEOUT, interval=2,
               what="the guest reads its metadata")


def test_deleted_bridge_is_rebuilt(served):
    s = served
    bridge, tap = hoststate.bridge_name(s.network), hoststate.tap_name(s.port)
    assert host.links()[tap].get("master") == bridge
    sh("ip", "link", "del", bridge)
    assert bridge not in host.links() and tap in host.links()
    # The bridge comes back with the server's tap and the DHCP veth in it
    # (the router's veth too, or the floating IP would not answer).
    wait_until(lambda: all(host.links().get(name, {}).get("master") == bridge
                           for name in (tap, dhcp_veth(s.network))),
               timeout=REPAIR_TIMEOUT, what=f"{bridge} rebuilt with {tap} plugged")
    print(f"floating IP answers {wait_ping(s.outside, s.fip):.1f} s after the repair")
    _still_filtered(s)
    _dhcp_answers(s)
    _wait_metadata(s)


def _one_new_dnsmasq(network: str, ns: str, old: int) -> bool:
    pids = dnsmasq_pids(network)
    return len(pids) == 1 and pids[0] != old and in_namespace(pids[0], ns)


def test_killed_dnsmasq_is_restarted(served):
    s = served
    ns = hoststate.dhcp_namespace(s.network)
    [old] = dnsmasq_pids(s.network)
    assert in_namespace(old, ns)
    os.kill(old, signal.SIGKILL)
    # exactly one, and a new one: while dnsmasq daemonizes, its parent and
    # the daemon both run for a moment
    wait_until(lambda: _one_new_dnsmasq(s.network, ns, old),
               timeout=REPAIR_TIMEOUT, what=f"one new dnsmasq in {ns}")
    _dhcp_answers(s)
    wait_ping(s.outside, s.fip)
    _still_filtered(s)


def test_deleted_dhcp_namespace_is_rebuilt(served):
    s = served
    ns = hoststate.dhcp_namespace(s.network)
    [old] = dnsmasq_pids(s.network)
    sh("ip", "netns", "del", ns)     # dnsmasq keeps running in the orphaned namespace
    # the orphaned dnsmasq replaced by exactly one in the new namespace
    wait_until(lambda: ns in host.netns_names() and _one_new_dnsmasq(s.network, ns, old),
               timeout=REPAIR_TIMEOUT, what=f"{ns} made again with one new dnsmasq in it")
    _dhcp_answers(s)


def test_deleted_port_tables_are_restored(served):
    s = served
    table = secgroup.table_name(s.port)
    for family in ("bridge", "inet"):
        sh("nft", "delete", "table", family, table)
    wait_until(lambda: {("bridge", table), ("inet", table)} <= host.nft_tables(),
               timeout=REPAIR_TIMEOUT, what=f"the tables {table} restored")
    _still_filtered(s)
    wait_ping(s.outside, s.fip)


def test_deleted_router_namespace_is_rebuilt(served):
    s = served
    ns = hoststate.router_namespace(s.router)
    sh("ip", "netns", "del", ns)
    wait_until(lambda: ns in host.netns_names(), timeout=REPAIR_TIMEOUT,
               what=f"namespace {ns} made again")
    # NAT for the floating IP and the metadata listener are back in it.
    wait_ping(s.outside, s.fip, timeout=REPAIR_TIMEOUT)
    _wait_metadata(s)
    _still_filtered(s)


def test_killed_stackbox_leaves_the_workloads_running_and_adopts_them(served):
    s, c = served, served.cloud
    pid = int((c.data_dir / "stackbox.pid").read_text())
    vm, dnsmasq = qemu_pids(s.server), dnsmasq_pids(s.network)
    assert len(vm) == 1 and len(dnsmasq) == 1
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30,
               what=f"stackbox (pid {pid}) gone")
    # Workloads outlive the control plane.
    assert qemu_pids(s.server) == vm
    assert dnsmasq_pids(s.network) == dnsmasq
    wait_ping(s.outside, s.fip, timeout=30)
    _dhcp_answers(s)

    c.start()
    assert c.openstack("server", "show", s.server, cloud=DEMO)["status"] == "ACTIVE"
    # The metadata listeners died with the process: only a pass of the new
    # agent plumbs them again, so once the guest reads its metadata a pass
    # has run, and what it found running it kept.
    _wait_metadata(s)
    assert qemu_pids(s.server) == vm
    assert dnsmasq_pids(s.network) == dnsmasq, "the running dnsmasq is adopted"
    _dhcp_answers(s)
    wait_ping(s.outside, s.fip, timeout=30)
    _still_filtered(s)


def test_down_purge_leaves_nothing_of_the_cloud(served):
    """Last in the module: `stackbox down --purge` stops the cloud and
    removes all it runs on the host, its directory under /run included."""
    s, c = served, served.cloud
    ids = [s.server, s.port, s.network, s.router]
    ids += [p["ID"] for p in c.openstack("port", "list", "--router", s.router, cloud=DEMO)]
    runtime = dhcp.default_runtime_dir(c.data_dir / "network")
    assert carrying(ids) and runtime.is_dir()
    c.stackbox("down", "--purge")
    assert carrying(ids) == []
    assert not runtime.exists(), sorted(str(p) for p in runtime.rglob("*"))
