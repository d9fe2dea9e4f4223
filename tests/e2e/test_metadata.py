"""The metadata service through real namespaces: plumbing + server, guests
simulated by source addresses in a client namespace (curl), and the tiny
guest under QEMU reading its own metadata at 169.254.169.254.

Every namespace is `sbx-` + a random suffix and is deleted in a finalizer;
veth pairs are created inside the namespaces, never in the host's."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import uuid

import pytest

from stackbox.metadata.content import InstanceMetadata, Interface
from stackbox.metadata.plumbing import METADATA_IP, MetadataPlumbing
from stackbox.metadata.server import MetadataServer, MetadataThread

pytestmark = pytest.mark.e2e


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("curl"):
        pytest.skip("needs root, iproute2 and curl")
    made: list[str] = []

    def make(kind: str) -> str:
        name = f"sbx-m{kind}-{secrets.token_hex(4)}"
        _ip("netns", "add", name)
        made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name
    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], timeout=30, capture_output=True)


def network(router_ns: str, client_ns: str, bridge: str, prefix: str, sources: list[str]) -> None:
    """A bridge with the gateway .1 in router_ns; a veth from client_ns into
    it carrying `sources` (each one a simulated instance)."""
    veth = f"v{bridge}"
    _ip("-n", router_ns, "link", "add", bridge, "type", "bridge")
    _ip("-n", router_ns, "addr", "add", f"{prefix}.1/24", "dev", bridge)
    _ip("-n", router_ns, "link", "set", bridge, "up")
    _ip("-n", router_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
        "netns", client_ns)
    _ip("-n", router_ns, "link", "set", veth, "master", bridge, "up")
    for src in sources:
        _ip("-n", client_ns, "addr", "add", f"{src}/24", "dev", "eth0")
    _ip("-n", client_ns, "link", "set", "eth0", "up")
    _ip("-n", client_ns, "route", "add", f"{METADATA_IP}/32", "via", f"{prefix}.1")


def instance(uid: str, net: str, ip: str, key: str = "") -> InstanceMetadata:
    return InstanceMetadata(
        uuid=uid, name=f"vm-{uid[:4]}", hostname=f"vm-{uid[:4]}", project_id="demo",
        public_keys=(("k", key or f"ssh-ed25519 KEY-{uid}"),),
        interfaces=(Interface(port_id=f"p-{uid}", mac="52:54:00:12:34:56", network_id=net,
                              ip=ip, cidr=ip.rsplit(".", 1)[0] + ".0/24",
                              gateway=ip.rsplit(".", 1)[0] + ".1"),))


class Service:
    """A MetadataServer on its own event loop thread, as in stackbox serve."""

    def __init__(self, instances: dict):
        self.instances = instances
        self.server = MetadataServer(lambda n, ip: self.instances.get((n, ip)), cache_seconds=1)
        self.runner = MetadataThread(self.server)
        self.plumbing = MetadataPlumbing(self.server, self.runner.loop)

    def stop(self) -> None:
        for ns in self.plumbing.namespaces():
            self.plumbing.remove(ns)
        self.runner.stop()


@pytest.fixture
def service():
    svc = Service({})
    yield svc
    svc.stop()


def curl(ns: str, source: str, path: str, max_time: int = 10) -> tuple[int, str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-s", "--max-time", str(max_time), "--interface", source,
         "-w", "\n%{http_code}", f"http://{METADATA_IP}{path}"],
        capture_output=True, text=True, timeout=30)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def test_two_instances_each_read_their_own_metadata(namespaces, service):
    dhcp, guests = namespaces("d"), namespaces("c")
    network(dhcp, guests, "br0", "10.91.0", ["10.91.0.5", "10.91.0.6", "10.91.0.7"])
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    service.instances.update({("net-1", "10.91.0.5"): instance(a, "net-1", "10.91.0.5"),
                              ("net-1", "10.91.0.6"): instance(b, "net-1", "10.91.0.6")})
    assert service.plumbing.ensure(dhcp, "net-1") is True
    assert service.plumbing.ensure(dhcp, "net-1") is False       # idempotent

    for src, uid in (("10.91.0.5", a), ("10.91.0.6", b)):
        code, body = curl(guests, src, "/openstack/latest/meta_data.json")
        assert code == 200, body
        md = json.loads(body)
        assert md["uuid"] == uid and md["public_keys"]["k"] == f"ssh-ed25519 KEY-{uid}"
        assert curl(guests, src, "/latest/meta-data/local-ipv4") == (200, src)
    code, body = curl(guests, "10.91.0.7", "/openstack/latest/meta_data.json")
    assert code == 404 and a not in body and b not in body

    # nothing in the host namespace: the address lives in the namespace only
    host_addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    assert METADATA_IP not in host_addrs

    assert service.plumbing.remove(dhcp) is True
    assert curl(guests, "10.91.0.5", "/openstack", max_time=2)[0] == 0   # nobody answers
    assert service.plumbing.remove(dhcp) is False


def test_router_namespace_networks_by_subnet_and_overlapping_routers(namespaces, service):
    r1, r2 = namespaces("r"), namespaces("r")
    g1, g2, g3 = namespaces("c"), namespaces("c"), namespaces("c")
    network(r1, g1, "br1", "10.92.1", ["10.92.1.5"])
    network(r1, g2, "br2", "10.92.2", ["10.92.2.5"])
    network(r2, g3, "br1", "10.92.1", ["10.92.1.5"])          # overlaps r1's first network
    ids = {key: str(uuid.uuid4()) for key in ("n1", "n2", "n3")}
    service.instances.update({
        ("n1", "10.92.1.5"): instance(ids["n1"], "n1", "10.92.1.5"),
        ("n2", "10.92.2.5"): instance(ids["n2"], "n2", "10.92.2.5"),
        ("n3", "10.92.1.5"): instance(ids["n3"], "n3", "10.92.1.5")})
    service.plumbing.ensure(r1, {"n1": ["10.92.1.0/24"], "n2": ["10.92.2.0/24"]})
    # the network agent's interface: one network id at a time, no subnets
    service.plumbing.ensure_metadata(r2, "n-other")
    service.plumbing.ensure_metadata(r2, "n3")
    for ns, src, key in ((g1, "10.92.1.5", "n1"), (g2, "10.92.2.5", "n2"),
                         (g3, "10.92.1.5", "n3")):
        code, body = curl(ns, src, "/openstack/latest/meta_data.json")
        assert code == 200 and json.loads(body)["uuid"] == ids[key], (key, body)
    # the router loses n2: its guests are unknown from then on
    assert service.plumbing.ensure(r1, {"n1": ["10.92.1.0/24"]}) is True
    assert curl(g2, "10.92.2.5", "/openstack")[0] == 404
    assert curl(g1, "10.92.1.5", "/openstack")[0] == 200


def test_recreated_namespace_is_plumbed_again(namespaces, service):
    dhcp, guests = namespaces("d"), namespaces("c")
    network(dhcp, guests, "br0", "10.93.0", ["10.93.0.5"])
    uid = str(uuid.uuid4())
    service.instances[("n", "10.93.0.5")] = instance(uid, "n", "10.93.0.5")
    service.plumbing.ensure(dhcp, "n")
    assert curl(guests, "10.93.0.5", "/openstack")[0] == 200
    # the network agent deletes and recreates the namespace under the same name
    _ip("netns", "del", dhcp)
    _ip("netns", "add", dhcp)
    _ip("-n", dhcp, "link", "set", "lo", "up")
    _ip("-n", guests, "link", "del", "eth0")
    network(dhcp, guests, "br0", "10.93.0", ["10.93.0.5"])
    assert curl(guests, "10.93.0.5", "/openstack", max_time=2)[0] == 0
    assert service.plumbing.ensure(dhcp, "n") is True
    code, body = curl(guests, "10.93.0.5", "/openstack/latest/meta_data.json")
    assert code == 200 and json.loads(body)["uuid"] == uid


def test_missing_namespace_is_an_error_and_leaves_nothing(service):
    with pytest.raises(FileNotFoundError):
        service.plumbing.ensure(f"sbx-nope-{secrets.token_hex(4)}", "n")
    assert service.plumbing.namespaces() == [] and service.server.listeners() == []


# --- a real guest ---------------------------------------------------------------

def _spawn(argv: list[str], log) -> subprocess.Popen:
    from tests.e2e.guests import die_with_parent
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)


@pytest.fixture
def daemons():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:            # `ip netns exec` execs in place: this pid is the daemon
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# namespaces and daemons before boot: teardown runs in reverse, so QEMU
# dies first, then dnsmasq, then the namespace.
def test_tiny_guest_reads_its_metadata(namespaces, daemons, service, tiny_image, boot,
                                       workdir):
    from tests.e2e.guests import BOOT_TIMEOUT, MARK
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(dnsmasq):
        pytest.skip("dnsmasq not installed")
    gw, guest_ip, mac = "10.94.0.1", "10.94.0.5", "52:54:00:12:34:56"
    ns = namespaces("g")
    for cmd in (["link", "add", "br0", "type", "bridge"],
                ["addr", "add", f"{gw}/24", "dev", "br0"],
                ["link", "set", "br0", "up"],
                ["tuntap", "add", "tap0", "mode", "tap"],
                ["link", "set", "tap0", "master", "br0", "up"]):
        _ip("-n", ns, *cmd)
    server_id = str(uuid.uuid4())
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTinyGuestOnly tiny@test"
    inst = instance(server_id, "net-t", guest_ip, key)
    service.instances[("net-t", guest_ip)] = dataclasses.replace(
        inst, public_keys=(("tinykey", key),), hostname="metaguest",
        user_data=b"#!/bin/sh\necho USERDATA-FROM-METADATA\n")
    service.plumbing.ensure(ns, "net-t")
    # With option 121 present the guest ignores the router option (RFC 3442).
    daemons.append(_spawn(
        ["ip", "netns", "exec", ns, dnsmasq, "--no-daemon", "--port=0", "--no-resolv",
         "--no-hosts", "--bind-interfaces", "--interface=br0", "--except-interface=lo",
         f"--dhcp-range={guest_ip},static,255.255.255.0", f"--dhcp-host={mac},{guest_ip}",
         f"--dhcp-leasefile={workdir}/leases",
         f"--dhcp-option=121,{METADATA_IP}/32,{gw},0.0.0.0/0,{gw}"], workdir / "dnsmasq.log"))

    guest = boot(tiny_image, ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                              "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
                 wrap=["ip", "netns", "exec", ns])
    guest.wait_for(f"{MARK} ready", BOOT_TIMEOUT)
    log = guest.log()
    assert f"{MARK} metadata source=metadata-service uuid={server_id}" in log, log
    assert f"{MARK} ssh-key installed name=tinykey" in log, log
    assert "USERDATA-FROM-METADATA" in log, log
    assert service.server.stats["requests"] >= 2
