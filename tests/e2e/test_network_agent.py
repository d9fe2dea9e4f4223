"""The network agent against real Linux networking and real guests.

The desired state is a HostState built by hand (no API). The test plays the
other parts: it creates the taps compute would create, an external bridge
(the operator's `br-ex`, connected to nothing) with an "outside world"
namespace on it, and boots two tiny guests on one private network behind a
router. Every name carries random ids, and everything is removed in
finalizers, pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from stackbox.guest import configdrive
from stackbox.network import hoststate as hs
from stackbox.network.agent import NetworkAgent
from stackbox.network.linux import host
from tests.e2e import guests
from tests.e2e.guests import MARK, die_with_parent

pytestmark = pytest.mark.e2e

PRIVATE = "10.93.0"
OUTSIDE = "198.51.100"        # TEST-NET-2, only ever inside the test's bridge
FIP = f"{OUTSIDE}.50"
ROUTER_GW = f"{OUTSIDE}.10"


def uid() -> str:
    return str(uuid.uuid4())


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=timeout)


def _need_host_tools():
    if os.geteuid() != 0:
        pytest.skip("needs root for bridges and namespaces")
    for tool in ("ip", "nft", "ethtool", "ping"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    if not (shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")):
        pytest.skip("dnsmasq not installed")


class World:
    """Ids, the desired state, and the test's own host objects."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.suffix = uuid.uuid4().hex[:6]
        self.physnet = f"ext-{self.suffix}"
        self.ext_bridge = f"sbx-x{self.suffix}"
        self.outside = f"sbx-o{self.suffix}"       # namespace and its veth's host end
        self.net, self.sub = uid(), uid()
        self.ext, self.ext_sub = uid(), uid()
        self.dhcp_port = hs.PortState(
            id=uid(), network_id=self.net, mac="fa:16:3e:5e:00:02",
            fixed_ips=((self.sub, f"{PRIVATE}.2"),), device_owner="network:dhcp",
            device_id="dhcp")
        self.sg = uid()
        self.vm_ports = [hs.PortState(
            id=uid(), network_id=self.net, mac=f"fa:16:3e:5e:00:{11 + i:02x}",
            fixed_ips=((self.sub, f"{PRIVATE}.{11 + i}"),), device_owner="compute:nova",
            device_id=uid(), hostname=f"vm{i}", security_group_ids=(self.sg,))
            for i in range(2)]
        self.router_port = uid()
        self.router = hs.RouterState(
            id=uid(), gateway_network_id=self.ext, gateway_ip=ROUTER_GW,
            gateway_prefixlen=24, gateway_mac="fa:16:3e:5e:01:01",
            external_gateway=f"{OUTSIDE}.1",
            interfaces=(hs.RouterInterfaceState(
                port_id=self.router_port, network_id=self.net, mac="fa:16:3e:5e:00:01",
                ip=f"{PRIVATE}.1", prefixlen=24),),
            floating_ips=(hs.FloatingIpState(id=uid(), floating_ip=FIP,
                                             fixed_ip=f"{PRIVATE}.11",
                                             port_id=self.vm_ports[0].id),))
        self.rules = [
            hs.SecurityGroupRuleState(id=uid(), direction="egress", ethertype="IPv4",
                                      protocol=None),
            hs.SecurityGroupRuleState(id=uid(), direction="ingress", ethertype="IPv4",
                                      protocol="tcp", port_range_min=22, port_range_max=22,
                                      remote_ip_prefix="0.0.0.0/0"),
        ]
        self.present = True

    # --- desired state -----------------------------------------------------------

    def state(self) -> hs.HostState:
        if not self.present:
            return hs.HostState(host_id="test")
        private = hs.NetworkState(
            id=self.net, mtu=1450, network_type="local", has_router=True,
            subnets=(hs.SubnetState(id=self.sub, cidr=f"{PRIVATE}.0/24", ip_version=4,
                                    gateway_ip=f"{PRIVATE}.1", enable_dhcp=True),),
            ports=(self.dhcp_port, *self.vm_ports))
        external = hs.NetworkState(
            id=self.ext, mtu=1500, network_type="flat", physical_network=self.physnet,
            external=True,
            subnets=(hs.SubnetState(id=self.ext_sub, cidr=f"{OUTSIDE}.0/24", ip_version=4,
                                    gateway_ip=f"{OUTSIDE}.1", enable_dhcp=False),))
        group = hs.SecurityGroupState(
            id=self.sg, rules=tuple(self.rules),
            member_ips=tuple(ip for p in self.vm_ports for _, ip in p.fixed_ips))
        return hs.HostState(host_id="test", networks=(private, external),
                            routers=(self.router,), security_groups=(group,),
                            bound_ports=tuple(self.vm_ports))

    def ids(self) -> list[str]:
        return [self.net, self.ext, self.router.id, self.router_port, self.dhcp_port.id,
                *(p.id for p in self.vm_ports)]

    def leftovers(self) -> list[str]:
        """Host objects named after any of this test's ids."""
        marks = {i.replace("-", "")[:7] for i in self.ids()}
        found = [f"link {n}" for n in host.links() if n.startswith("sbx")]
        found += [f"netns {n}" for n in host.netns_names() if n.startswith("sbx")]
        found += [f"nft {f} {n}" for f, n in host.nft_tables() if n.startswith("sbx")]
        return [f for f in found if any(m in f.replace("-", "") for m in marks)]


@pytest.fixture
def world(workdir):
    _need_host_tools()
    # dnsmasq reads its hosts file as `nobody`: the path must be traversable.
    workdir.chmod(0o755)
    w = World(workdir)
    procs: list[subprocess.Popen] = []
    sh("ip", "link", "add", w.ext_bridge, "type", "bridge")
    sh("ip", "link", "set", w.ext_bridge, "up")
    sh("ip", "netns", "add", w.outside)
    agent = NetworkAgent(state_dir=workdir / "agent", desired=w.state,
                         bridge_mappings={w.physnet: w.ext_bridge})
    try:
        sh("ip", "link", "add", w.outside, "type", "veth", "peer", "name", "eth0",
           "netns", w.outside)
        sh("ip", "link", "set", w.outside, "master", w.ext_bridge, "up")
        for cmd in (["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
                    ["addr", "add", f"{OUTSIDE}.1/24", "dev", "eth0"]):
            sh("ip", "-n", w.outside, *cmd)
        (workdir / "www").mkdir()
        with open(workdir / "http.log", "wb") as log:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", w.outside, sys.executable, "-m", "http.server",
                 "--bind", f"{OUTSIDE}.1", "--directory", str(workdir / "www"), "8000"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent))
        for port in w.vm_ports:          # what compute does before starting QEMU
            sh("ip", "tuntap", "add", port.tap, "mode", "tap")
        w.agent = agent
        yield w
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        agent.cleanup_all()
        for port in w.vm_ports:
            sh("ip", "link", "del", port.tap, check=False)
        sh("ip", "link", "del", w.outside, check=False)
        sh("ip", "netns", "del", w.outside, check=False)
        sh("ip", "link", "del", w.ext_bridge, check=False)


def converge(w: World, passes: int = 1):
    for _ in range(passes):
        report = w.agent.reconcile_once()
        assert report.errors == [], report.errors
    again = w.agent.reconcile_once()
    assert again.errors == [] and again.changes == [], again
    return report


def config_drive(w: World, i: int, pub: str, user_data: bytes) -> Path:
    meta = {"uuid": w.vm_ports[i].device_id, "hostname": f"vm{i}",
            "public_keys": {"testkey": pub}}
    files = configdrive.openstack_layout(meta, user_data, None, None)
    return configdrive.build_config_drive(w.workdir / f"cd{i}.iso", files)


def ssh_argv(w: World, key: Path, command: str) -> list[str]:
    return ["ip", "netns", "exec", w.outside, "ssh", "-i", str(key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", f"root@{FIP}", command]


def on_vm0(w: World, key: Path, command: str, *, tries: int = 3) -> subprocess.CompletedProcess:
    """Run `command` on the first guest through its floating IP; retried on
    SSH's own failures (255), never on the command's."""
    for attempt in range(tries):
        proc = sh(*ssh_argv(w, key, command), check=False, timeout=90)
        if proc.returncode != 255:
            return proc
        time.sleep(2)
    return proc


def outside_ping(w: World, ip: str) -> bool:
    proc = sh("ip", "netns", "exec", w.outside, "ping", "-c", "2", "-W", "2", ip, check=False)
    assert proc.returncode in (0, 1), proc.stderr     # 1: no reply; anything else: broken
    return proc.returncode == 0


def test_two_guests_dhcp_security_groups_floating_ip_snat_and_faults(
        world, tiny_image, boot, workdir, monkeypatch):
    w = world
    if not shutil.which("ssh"):
        pytest.skip("openssh-client not installed")
    # The guests live through the whole scenario, not just one boot.
    monkeypatch.setattr(guests, "BOOT_TIMEOUT", 300)
    key = workdir / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    pub = (workdir / "id_ed25519.pub").read_text()

    first = converge(w)
    assert any("dnsmasq" in c for c in first.changes)
    for port in w.vm_ports:
        assert host.links()[port.tap].get("master") == hs.bridge_name(w.net)

    # vm1 keeps asking the outside world for a page: the requests show
    # the address the router's SNAT gives a guest without a floating IP.
    poll = (f"#!/bin/sh\n( while true; do timeout 3 wget -q -O /dev/null "
            f"http://{OUTSIDE}.1:8000/from-vm1; sleep 1; done ) >/dev/null 2>&1 &\n").encode()
    vms = []
    for i, port in enumerate(w.vm_ports):
        iso = config_drive(w, i, pub, poll if i == 1 else b"#!/bin/sh\necho no-op\n")
        vms.append(boot(tiny_image, [
            "-netdev", f"tap,id=n0,ifname={port.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={port.mac}",
            "-drive", f"file={iso},media=cdrom,if=ide,readonly=on"]))
    for i, vm in enumerate(vms):
        took = vm.wait_for(f"{MARK} network eth0 {PRIVATE}.{11 + i}/24", 240)
        print(f"vm{i} got its DHCP address {took:.1f} s after spawn")
        vm.wait_for(f"{MARK} ready", 240)

    # SSH through the floating IP (DNAT) is allowed by the tcp/22 rule.
    proc = on_vm0(w, key, "hostname; ip route")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "vm0"
    assert f"default via {PRIVATE}.1" in proc.stdout

    # No ICMP rule yet: vm0 cannot ping vm1, the outside cannot ping vm0.
    ping_vm1 = f"ping -c 2 -W 2 {PRIVATE}.12"
    assert on_vm0(w, key, ping_vm1).returncode == 1
    assert not outside_ping(w, FIP)

    # ICMP from members of the group: vm0 -> vm1 works, the outside still not.
    w.rules.append(hs.SecurityGroupRuleState(id=uid(), direction="ingress",
                                             ethertype="IPv4", protocol="icmp",
                                             remote_group_id=w.sg))
    converge(w)
    assert on_vm0(w, key, ping_vm1).returncode == 0
    assert not outside_ping(w, FIP)
    w.rules.append(hs.SecurityGroupRuleState(id=uid(), direction="ingress",
                                             ethertype="IPv4", protocol="icmp",
                                             remote_ip_prefix="0.0.0.0/0"))
    converge(w)
    assert outside_ping(w, FIP)
    # Hairpin: from inside, the floating IP leads back to the guest.
    assert on_vm0(w, key, f"ping -c 2 -W 2 {FIP}").returncode == 0

    # Outbound: vm0 leaves as its floating IP, vm1 as the router's gateway.
    proc = on_vm0(w, key, f"timeout 5 wget -q -O /dev/null http://{OUTSIDE}.1:8000/from-vm0")
    http_log = lambda: (workdir / "http.log").read_text(errors="replace")  # noqa: E731
    assert re.search(rf"^{re.escape(FIP)} .*GET /from-vm0", http_log(), re.M), http_log()
    deadline = time.monotonic() + 60
    while not re.search(rf"^{re.escape(ROUTER_GW)} .*GET /from-vm1", http_log(), re.M):
        assert time.monotonic() < deadline, http_log()
        time.sleep(1)

    # Faults: each repaired by the next pass.
    bridge = hs.bridge_name(w.net)
    sh("ip", "link", "del", bridge)
    converge(w)
    assert host.links()[w.vm_ports[1].tap].get("master") == bridge
    assert on_vm0(w, key, ping_vm1).returncode == 0

    ns = hs.dhcp_namespace(w.net)
    pid_before = w.agent.dnsmasq.pid(w.net)
    sh("ip", "netns", "del", ns)
    converge(w)
    pid_after = w.agent.dnsmasq.pid(w.net, ns)
    assert pid_after and pid_after != pid_before
    assert not os.path.exists(f"/proc/{pid_before}/cmdline") or \
        b"dnsmasq" not in Path(f"/proc/{pid_before}/cmdline").read_bytes()

    os.kill(pid_after, 9)
    time.sleep(0.2)
    converge(w)
    assert w.agent.dnsmasq.pid(w.net, ns) not in (None, pid_after)
    # A fresh DHCP exchange from the guest is answered by the new dnsmasq.
    proc = on_vm0(w, key, "udhcpc -n -q -t 4 -T 2 -i eth0 -s /bin/true")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    sh("ip", "netns", "del", hs.router_namespace(w.router.id))
    converge(w)
    assert outside_ping(w, FIP)

    # A restarted agent adopts everything and changes nothing.
    fresh = NetworkAgent(state_dir=workdir / "agent", desired=w.state,
                         bridge_mappings={w.physnet: w.ext_bridge})
    fresh.reconcile_once()
    assert fresh.reconcile_once().changes == []

    # The network and router leave the desired state: nothing is left.
    w.present = False
    for vm in vms:
        vm.kill()
    report = w.agent.reconcile_once()
    assert report.errors == []
    assert w.leftovers() == [f"link {p.tap}" for p in w.vm_ports], w.leftovers()
    assert list(w.agent.dnsmasq.root.iterdir()) == []
    assert w.ext_bridge in host.links()          # the operator's bridge stays


def test_isolated_network_converges_and_leaves_nothing(world):
    """No guests: a network without a router, its DHCP namespace and
    options, a tap plugged late, and removal."""
    w = world
    w.router = replace(w.router, interfaces=(), floating_ips=(), gateway_ip=None,
                       gateway_network_id=None)
    w.vm_ports[1] = replace(w.vm_ports[1], admin_state_up=False)
    state = w.state()
    private = replace(state.networks[0], has_router=False)
    state = replace(state, networks=(private,), routers=())
    agent = NetworkAgent(state_dir=w.workdir / "iso", desired=lambda: state)
    try:
        report = agent.reconcile_once()
        assert report.errors == [], report.errors
        ns = hs.dhcp_namespace(w.net)
        assert ns in host.netns_names()
        assert host.addresses("sbx-dhcp0", ns) == {f"{PRIVATE}.2/24"}
        opts = (agent.dnsmasq.directory(w.net) / "opts").read_text()
        assert f"classless-static-route,169.254.169.254/32,{PRIVATE}.2,0.0.0.0/0,{PRIVATE}.1" in opts
        # Every bound port has its pair of tables.
        tables = host.nft_tables()
        for port in w.vm_ports:
            assert ("inet", f"sbx-p-{port.id.replace('-', '')[:8]}") in tables
            assert ("bridge", f"sbx-p-{port.id.replace('-', '')[:8]}") in tables
        assert agent.reconcile_once().changes == []
        # Plugged when they appear; a port that is administratively down stays down.
        links = host.links()
        assert links[w.vm_ports[0].tap]["master"] == hs.bridge_name(w.net)
        assert links[w.vm_ports[1].tap]["master"] == hs.bridge_name(w.net)
        assert host.link_up(links[w.vm_ports[0].tap])
        assert not host.link_up(links[w.vm_ports[1].tap])
        hosts = agent.dnsmasq.directory(w.net) / "hosts"
        assert "fa:16:3e:5e:00:0c" not in hosts.read_text()
        # A new port is a SIGHUP; a port going away restarts dnsmasq so its
        # in-memory lease cannot block the address for the next MAC.
        pid = agent.dnsmasq.pid(w.net, ns)
        extra = hs.PortState(id=uid(), network_id=w.net, mac="fa:16:3e:5e:00:99",
                             fixed_ips=((w.sub, f"{PRIVATE}.99"),), device_owner="compute:nova",
                             device_id=uid())
        base = state
        state = replace(base, networks=(replace(private, ports=private.ports + (extra,)),))
        assert f"dnsmasq for network {w.net} reloaded" in agent.reconcile_once().changes
        assert agent.dnsmasq.pid(w.net, ns) == pid
        assert f"fa:16:3e:5e:00:99,{PRIVATE}.99" in hosts.read_text()
        state = base
        assert f"dnsmasq for network {w.net} restarted" in agent.reconcile_once().changes
        assert agent.dnsmasq.pid(w.net, ns) not in (None, pid)
        state = replace(state, networks=(), bound_ports=())
        report = agent.reconcile_once()
        assert report.errors == []
        assert ns not in host.netns_names()
        assert hs.bridge_name(w.net) not in host.links()
        assert not any(n.startswith("sbx-p-") and n[6:] in
                       {p.id.replace("-", "")[:8] for p in w.vm_ports}
                       for _, n in host.nft_tables())
    finally:
        agent.cleanup_all()


class StaticMetadata:
    """Stands in for stackbox.metadata.plumbing: serves fixed files on
    169.254.169.254:80 inside the namespaces the agent asks for."""

    def __init__(self, docroot: Path, logdir: Path):
        self.docroot, self.logdir = docroot, logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.calls: list[tuple[str, object]] = []

    def ensure(self, namespace, networks) -> bool:
        self.calls.append((namespace, networks))
        if namespace in self.procs and self.procs[namespace].poll() is None:
            return False
        sh("ip", "-n", namespace, "addr", "replace", "169.254.169.254/32", "dev", "lo")
        with open(self.logdir / f"md-{namespace}.log", "wb") as log:
            self.procs[namespace] = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server",
                 "--bind", "169.254.169.254", "--directory", str(self.docroot), "80"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent)
        return True

    def remove(self, namespace) -> bool:
        proc = self.procs.pop(namespace, None)
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        return proc is not None


def test_isolated_network_guest_gets_metadata_through_dhcp_namespace(
        world, tiny_image, boot, workdir):
    """No router: option 121 routes 169.254.169.254 via the DHCP port, the
    metadata hook serves it in the DHCP namespace, and a port whose group
    has no rules at all still gets DHCP and metadata."""
    w = world
    port = w.vm_ports[0]
    meta = {"uuid": port.device_id, "hostname": "isolated"}
    for rel, body in configdrive.openstack_layout(meta, None, None, None).items():
        (workdir / "md" / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "md" / rel).write_bytes(body)
    plumbing = StaticMetadata(workdir / "md", workdir)
    net = replace(w.state().networks[0], has_router=False, ports=(w.dhcp_port, port))
    state = hs.HostState(host_id="test", networks=(net,),
                         security_groups=(hs.SecurityGroupState(id=w.sg),),
                         bound_ports=(port,))
    agent = NetworkAgent(state_dir=workdir / "iso-agent", desired=lambda: state,
                         metadata=plumbing)
    try:
        report = agent.reconcile_once()
        assert report.errors == [], report.errors
        ns = hs.dhcp_namespace(w.net)
        assert plumbing.calls[-1] == (ns, w.net)
        vm = boot(tiny_image, [
            "-netdev", f"tap,id=n0,ifname={port.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={port.mac}"])
        vm.wait_for(f"{MARK} network eth0 {PRIVATE}.11/24", 240)
        took = vm.wait_for(f"{MARK} metadata source=metadata-service uuid={port.device_id}", 240)
        print(f"isolated guest had its metadata {took:.1f} s after spawn")
        state = hs.HostState(host_id="test")
        assert agent.reconcile_once().errors == []
        assert ns not in plumbing.procs and ns not in host.netns_names()
    finally:
        agent.cleanup_all()
        for namespace in list(plumbing.procs):
            plumbing.remove(namespace)


def _vlan_supported(parent: str) -> bool:
    probe = f"sbx-q{uuid.uuid4().hex[:6]}"
    ok = sh("ip", "link", "add", "link", parent, "name", probe, "type", "vlan", "id", "4000",
            check=False).returncode == 0
    sh("ip", "link", "del", probe, check=False)
    return ok


@pytest.mark.parametrize("with_vlan", [False, True], ids=["flat", "vlan"])
def test_provider_networks_and_several_external_bridges(world, with_vlan):
    """bridge_mappings: a flat network on a plain interface (one end of a
    veth pair made by the test) or a VLAN network on it, a flat network on
    an existing bridge and one on a bridge that does not exist yet (the agent
    makes it). Removal takes what the agent made, not the operator's devices."""
    w = world
    uplink = f"sbx-u{w.suffix}"
    missing = f"sbx-m{w.suffix}"
    sh("ip", "link", "add", uplink, "type", "veth", "peer", "name", f"sbx-w{w.suffix}")
    try:
        if with_vlan and not _vlan_supported(uplink):
            pytest.skip("this kernel has no VLAN devices (8021q)")
        ids = {kind: uid() for kind in ("tenant", "flat_br", "flat_new")}
        tenant = hs.NetworkState(id=ids["tenant"], mtu=1500, network_type="flat",
                                 physical_network="tenant")
        if with_vlan:
            tenant = replace(tenant, network_type="vlan", segmentation_id=42)
        nets = (
            tenant,
            hs.NetworkState(id=ids["flat_br"], mtu=1500, network_type="flat",
                            physical_network="public", external=True),
            hs.NetworkState(id=ids["flat_new"], mtu=1500, network_type="flat",
                            physical_network="public2", external=True),
        )
        state = hs.HostState(host_id="test", networks=nets)
        agent = NetworkAgent(state_dir=w.workdir / "prov", desired=lambda: state,
                             bridge_mappings={"tenant": uplink, "public": w.ext_bridge,
                                              "public2": missing})
        try:
            report = agent.reconcile_once()
            assert report.errors == [], report.errors
            links = host.links()
            vlan_dev = f"sbx-vl-{ids['tenant'][:8]}"
            if with_vlan:
                assert links[vlan_dev]["linkinfo"]["info_data"]["id"] == 42
                assert links[vlan_dev]["link"] == uplink
                assert links[vlan_dev]["master"] == hs.bridge_name(ids["tenant"])
                assert links[uplink].get("master") is None
            else:
                assert links[uplink]["master"] == hs.bridge_name(ids["tenant"])
            assert hs.bridge_name(ids["flat_br"]) not in links      # uses the mapped bridge
            assert host.link_kind(links[missing]) == "bridge"
            assert agent.reconcile_once().changes == []

            state = hs.HostState(host_id="test")
            assert agent.reconcile_once().errors == []
            links = host.links()
            for gone in (vlan_dev, missing, *(hs.bridge_name(i) for i in ids.values())):
                assert gone not in links, gone
            assert uplink in links and w.ext_bridge in links
        finally:
            agent.cleanup_all()
    finally:
        sh("ip", "link", "del", uplink, check=False)
        sh("ip", "link", "del", missing, check=False)


def test_unmapped_physical_network_is_reported_and_others_converge(world):
    """A network that cannot be built is reported; the others converge, and
    one that worked before and fails now is not torn down."""
    w = world
    sub, flat_id = uid(), uid()
    flat = hs.NetworkState(
        id=flat_id, mtu=1500, network_type="flat", physical_network="public",
        subnets=(hs.SubnetState(id=sub, cidr="10.95.0.0/24", ip_version=4,
                                gateway_ip=None, enable_dhcp=True),),
        ports=(hs.PortState(id=uid(), network_id=flat_id, mac="fa:16:3e:5f:00:02",
                            fixed_ips=((sub, "10.95.0.2"),), device_owner="network:dhcp",
                            device_id="dhcp"),))
    bad = hs.NetworkState(id=uid(), mtu=1500, network_type="flat", physical_network="nowhere")
    good = hs.NetworkState(id=uid(), mtu=1500, network_type="local")
    agent = NetworkAgent(state_dir=w.workdir / "bad", bridge_mappings={"public": w.ext_bridge},
                         desired=lambda: hs.HostState(host_id="test", networks=(flat, bad, good)))
    try:
        report = agent.reconcile_once()
        assert len(report.errors) == 1
        assert "'nowhere' is not in bridge_mappings" in report.errors[0]
        assert hs.bridge_name(good.id) in host.links()
        ns = hs.dhcp_namespace(flat.id)
        pid = agent.dnsmasq.pid(flat.id, ns)
        assert pid
        agent.mappings = {}          # the operator broke the mapping
        report = agent.reconcile_once()
        assert len(report.errors) == 2
        assert ns in host.netns_names() and agent.dnsmasq.pid(flat.id, ns) == pid
    finally:
        agent.cleanup_all()
    assert hs.bridge_name(good.id) not in host.links()
    assert hs.dhcp_namespace(flat.id) not in host.netns_names()


def test_router_gateway_extra_routes_set_and_cleared(world):
    """The router namespace: gateway and floating addresses on qg-, the
    default route, extra routes added (`router set --route`) and removed
    (`--no-route`) while connected routes stay."""
    w = world
    agent = w.agent
    ns = hs.router_namespace(w.router.id)
    qg = f"qg-{w.router.id[:8]}"
    qr = f"qr-{w.router_port[:8]}"

    def routes() -> set[tuple[str, str | None]]:
        return {(r["dst"], r.get("gateway"))
                for r in host.ip_json("-4", "route", "show", netns=ns)}

    v6 = replace(w.router.interfaces[0], ip="fd00:93::1", prefixlen=64)
    w.router = replace(w.router, interfaces=w.router.interfaces + (v6,),
                       routes=(("192.0.2.0/24", f"{PRIVATE}.254"),
                               ("203.0.113.0/25", f"{OUTSIDE}.1")))
    converge(w)
    assert host.addresses(qg, ns) == {f"{ROUTER_GW}/24", f"{FIP}/32"}
    assert host.addresses(qr, ns) == {f"{PRIVATE}.1/24", "fd00:93::1/64"}
    assert {("default", f"{OUTSIDE}.1"), ("192.0.2.0/24", f"{PRIVATE}.254"),
            ("203.0.113.0/25", f"{OUTSIDE}.1")} <= routes()
    assert outside_ping(w, ROUTER_GW)

    w.router = replace(w.router, routes=(("192.0.2.0/24", f"{PRIVATE}.254"),))
    converge(w)
    assert ("203.0.113.0/25", f"{OUTSIDE}.1") not in routes()
    assert ("192.0.2.0/24", f"{PRIVATE}.254") in routes()

    w.router = replace(w.router, routes=())
    converge(w)
    have = routes()
    assert not any(dst in ("192.0.2.0/24", "203.0.113.0/25") for dst, _ in have), have
    assert (f"{PRIVATE}.0/24", None) in have and ("default", f"{OUTSIDE}.1") in have

    # Detaching the floating IP and the interface empties NAT and qr-.
    w.router = replace(w.router, floating_ips=(), interfaces=())
    converge(w)
    assert host.addresses(qg, ns) == {f"{ROUTER_GW}/24"}
    assert qr not in host.links(ns)
    assert f"sbx-ri-{w.router_port[:8]}" not in host.links()
    nat = host.nft_table_text("ip", "sbx-router", ns)
    assert "dnat" not in nat and "snat" not in nat
