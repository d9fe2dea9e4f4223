"""Issue 4's acceptance on a started stackbox, driven by the `openstack` CLI
as the demo user (SQLite only): a server on the default private network
behind router1 gets its address by DHCP (dnsmasq), its key from the metadata
service (no config drive), and is reached from an outside namespace on the
public bridge by its floating IP; deleting a whole topology leaves nothing on
the host; the debian guest's cloud-init uses the metadata service; two
servers are kept apart by their security group until an ICMP rule, and
neither can read the other's metadata. Host object names come from the
network agent's own helpers (tests/e2e/cloudnet.py)."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest

from tests.api.test_compute_cli import console, wait_console, wait_status
from tests.e2e.cloudnet import (DEMO, Undo, carrying, floating_ip_plumbed, guest_loop,
                                host_objects, last_round, outside_namespace, rounds, sh,
                                wait_ping, wait_round, wait_until)
from tests.e2e.test_debian_guest import FINISH_TIMEOUT, RUNCMD, _keypair, cloud_config
from tests.e2e.test_debian_guest import MARK as DEBIAN_MARK


@pytest.fixture
def outside(cloud):
    with outside_namespace(cloud.public_bridge) as ns:
        yield ns


def test_server_on_private_network_dhcp_metadata_floating_ip(cloud, outside, tmp_path):
    if cloud.backend != "sqlite":
        pytest.skip("the networked boot runs once, on SQLite")
    key = tmp_path / "id"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    name = f"net-{uuid.uuid4().hex[:6]}"
    with Undo(cloud) as undo:
        cloud.openstack("keypair", "create", "--public-key", f"{key}.pub", name, cloud=DEMO)
        undo.add("keypair", "delete", name)
        rule = cloud.openstack("security", "group", "rule", "create", "--protocol", "icmp",
                               "default", cloud=DEMO)
        undo.add("security", "group", "rule", "delete", rule["id"])
        server = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                                 "--network", "private", "--key-name", name, "--wait", name,
                                 cloud=DEMO)
        undo.add("server", "delete", "--wait", server["id"])
        addresses = str(server["addresses"])
        assert "private" in addresses and "10.0.0." in addresses
        out = wait_console(cloud, name, "STACKBOX-TINY: ready", timeout=180)
        assert "network eth0 10.0.0." in out, out[-2000:]
        assert f"metadata source=metadata-service uuid={server['id']}" in out, out[-2000:]
        assert f"ssh-key installed name={name}" in out
        fip = cloud.openstack("floating", "ip", "create", "public", cloud=DEMO)
        undo.add("floating", "ip", "delete", fip["id"])
        address = fip["floating_ip_address"]
        cloud.openstack("server", "add", "floating", "ip", name, address, cloud=DEMO,
                        as_json=False)
        wait_ping(outside, address)
        shown = cloud.openstack("server", "show", name, cloud=DEMO)
        assert address in str(shown["addresses"])


# --- deleting a whole topology through the API ------------------------------

def test_deleting_everything_leaves_nothing_on_the_host(cloud):
    """A network, subnet, router (gateway and interface), server and
    floating IP made and deleted with the CLI: every bridge, tap, veth,
    namespace, nft table, dnsmasq and QEMU process named after them goes."""
    if cloud.backend != "sqlite":
        pytest.skip("the networked boots run once, on SQLite")
    tag = uuid.uuid4().hex[:6]
    with Undo(cloud) as undo:
        net = cloud.openstack("network", "create", f"gone-{tag}", cloud=DEMO)
        undo.add("network", "delete", net["id"])
        subnet = cloud.openstack("subnet", "create", "--network", net["id"], "--subnet-range",
                                 f"10.251.{int(tag[:2], 16)}.0/24", f"gone-{tag}", cloud=DEMO)
        undo.add("subnet", "delete", subnet["id"])
        router = cloud.openstack("router", "create", f"gone-{tag}", cloud=DEMO)
        undo.add("router", "delete", router["id"])
        cloud.openstack("router", "set", "--external-gateway", "public", router["id"],
                        cloud=DEMO, as_json=False)
        undo.add("router", "unset", "--external-gateway", router["id"])
        cloud.openstack("router", "add", "subnet", router["id"], subnet["id"], cloud=DEMO,
                        as_json=False)
        undo.add("router", "remove", "subnet", router["id"], subnet["id"])
        server = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                                 "--network", net["id"], f"gone-{tag}", cloud=DEMO)
        undo.add("server", "delete", "--wait", server["id"])
        fip = cloud.openstack("floating", "ip", "create", "public", cloud=DEMO)
        undo.add("floating", "ip", "delete", fip["id"])
        wait_status(cloud, server["id"], "ACTIVE", timeout=180)
        cloud.openstack("server", "add", "floating", "ip", server["id"],
                        fip["floating_ip_address"], cloud=DEMO, as_json=False)
        port = cloud.openstack("port", "list", "--server", server["id"], cloud=DEMO)[0]["ID"]
        router_port = cloud.openstack("port", "list", "--router", router["id"],
                                      "--device-owner", "network:router_interface",
                                      cloud=DEMO)[0]["ID"]
        ids = dict(networks=[net["id"]], routers=[router["id"]], router_ports=[router_port],
                   ports=[port], servers=[server["id"]])
        # Everything exists first, so "nothing left" below cannot pass vacuously.
        wait_until(lambda: all(host_objects(**ids).values()), timeout=90,
                   what=f"every host object of the topology: {host_objects(**ids)}")
        address = fip["floating_ip_address"]
        wait_until(lambda: floating_ip_plumbed(router["id"], address), timeout=60,
                   what=f"{address} on the router's gateway and in its NAT table")
        every_id = [net["id"], subnet["id"], router["id"], router_port, port, server["id"],
                    fip["id"]]
        assert carrying(every_id)

        cloud.openstack("server", "delete", "--wait", server["id"], cloud=DEMO, as_json=False)
        # The server's port is gone, so its floating IP is no longer NATed.
        wait_until(lambda: not floating_ip_plumbed(router["id"], address), timeout=60,
                   what=f"{address} unplumbed once its server is deleted")
        cloud.openstack("floating", "ip", "delete", fip["id"], cloud=DEMO, as_json=False)
        cloud.openstack("router", "remove", "subnet", router["id"], subnet["id"], cloud=DEMO,
                        as_json=False)
        cloud.openstack("router", "unset", "--external-gateway", router["id"], cloud=DEMO,
                        as_json=False)
        cloud.openstack("router", "delete", router["id"], cloud=DEMO, as_json=False)
        cloud.openstack("subnet", "delete", subnet["id"], cloud=DEMO, as_json=False)
        cloud.openstack("network", "delete", net["id"], cloud=DEMO, as_json=False)
        undo.steps.clear()

        def left() -> list[str]:
            named = [what for what, present in host_objects(**ids).items() if present]
            if (cloud.data_dir / "instances" / server["id"]).exists():
                named.append(f"instance directory {server['id']}")
            return named + carrying(every_id)
        try:
            wait_until(lambda: not left(), timeout=60, what="the topology's host objects gone")
        except AssertionError:
            raise AssertionError(f"left on the host: {left()}") from None


# --- the debian guest's cloud-init against the metadata service -------------

DATASOURCE_RUNCMD = [
    f'echo "{DEBIAN_MARK} platform=$(cloud-init query v1.platform) '
    f'subplatform=$(cloud-init query v1.subplatform)"',
]


@pytest.mark.skipif(os.environ.get("STACKBOX_SKIP_DEBIAN_GUEST") == "1",
                    reason="STACKBOX_SKIP_DEBIAN_GUEST=1")
def test_debian_cloud_init_uses_the_metadata_service(cloud, debian_image, tmp_path):
    """No config drive: cloud-init finds the OpenStack datasource through
    169.254.169.254 (DMI says OpenStack), runs our runcmd and installs the
    key pair's key for the default user."""
    if cloud.backend != "sqlite":
        pytest.skip("the networked boots run once, on SQLite")
    tag = uuid.uuid4().hex[:6]
    public_key, fingerprint = _keypair(tmp_path)
    (tmp_path / "key.pub").write_text(public_key)
    user_data = tmp_path / "user-data"
    user_data.write_text(cloud_config(RUNCMD + DATASOURCE_RUNCMD))
    with Undo(cloud) as undo:
        images = {}
        for part, fmt, path in (("kernel", "aki", debian_image.kernel),
                                ("initrd", "ari", debian_image.initrd)):
            images[part] = cloud.openstack(
                "image", "create", f"deb-{tag}-{part}", "--disk-format", fmt,
                "--container-format", fmt, "--file", str(path), cloud=DEMO)["id"]
            undo.add("image", "delete", images[part])
        disk = cloud.openstack(
            "image", "create", f"deb-{tag}", "--disk-format", "qcow2", "--container-format",
            "bare", "--file", str(debian_image.disk), "--min-disk", "2", "--min-ram", "512",
            "--property", f"kernel_id={images['kernel']}",
            "--property", f"ramdisk_id={images['initrd']}",
            "--property", f"os_command_line={debian_image.cmdline}",
            "--property", "hw_rng_model=virtio", cloud=DEMO)
        undo.add("image", "delete", disk["id"])
        flavor = cloud.openstack("flavor", "create", "--ram", "512", "--disk", "3", "--vcpus",
                                 "2", f"deb-{tag}")
        undo.add("flavor", "delete", flavor["id"], cloud="stackbox")
        cloud.openstack("keypair", "create", "--public-key", str(tmp_path / "key.pub"),
                        f"deb-{tag}", cloud=DEMO)
        undo.add("keypair", "delete", f"deb-{tag}")
        server = cloud.openstack("server", "create", "--image", disk["id"], "--flavor",
                                 flavor["id"], "--network", "private", "--key-name",
                                 f"deb-{tag}", "--user-data", str(user_data), f"deb-{tag}",
                                 cloud=DEMO)
        undo.add("server", "delete", "--wait", server["id"])
        started = time.monotonic()
        wait_status(cloud, server["id"], "ACTIVE", timeout=300)
        assert not cloud.openstack("server", "show", server["id"], cloud=DEMO).get(
            "config_drive"), "the test is about the metadata service: no config drive"
        # Only cloud-init's final line ("Cloud-init v. X finished at ...
        # Datasource DataSourceOpenStack... Up N seconds") names the source.
        wait_console(cloud, server["id"], "Datasource DataSource", timeout=FINISH_TIMEOUT)
        print(f"debian guest: cloud-init finished {time.monotonic() - started:.0f} s after "
              "server create (TCG)")
        out = wait_console(cloud, server["id"], f"{DEBIAN_MARK} platform=", timeout=30)
        final = re.search(r"Cloud-init v\. \S+ finished at .*", out)
        assert final, out[-3000:]
        assert "DataSourceOpenStack" in final.group(0), final.group(0)
        assert f"{DEBIAN_MARK} platform=openstack subplatform=metadata " \
               "(http://169.254.169.254)" in out, out[-3000:]
        assert f"{DEBIAN_MARK} user-data ran instance-id={server['id']}" in out, out[-3000:]
        assert re.search(rf"{DEBIAN_MARK} authorized-key 256 {re.escape(fingerprint)} "
                         r"e2e@stackbox \(ED25519\)", out), out[-3000:]


# --- two servers on `private` with a security group of their own ------------

class Pair:
    """Servers a and b on `private` behind ports in group `sg` (no ICMP
    rule). Both run `guest_loop`: a pings b, b pings a, and a also tries,
    every round, to read the metadata service as b."""

    def __init__(self, sg, ports, servers):
        self.sg, self.ports, self.servers = sg, ports, servers
        self.ips = [p["fixed_ips"][0]["ip_address"] for p in ports]


@pytest.fixture(scope="module")
def pair(cloud, tmp_path_factory):
    # Its tests come last in the module: the guests' loops cost CPU under
    # TCG, so they run only while these tests do.
    if cloud.backend != "sqlite":
        pytest.skip("the networked boots run once, on SQLite")
    tag = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("pair")
    gateway = cloud.openstack("subnet", "show", "private-subnet", cloud=DEMO)["gateway_ip"]
    with Undo(cloud) as undo:
        sg = cloud.openstack("security", "group", "create", f"pair-{tag}", cloud=DEMO)
        undo.add("security", "group", "delete", sg["id"])
        ports = []
        for side in "ab":
            ports.append(cloud.openstack("port", "create", "--network", "private",
                                         "--security-group", sg["id"], f"pair-{tag}-{side}",
                                         cloud=DEMO))
            undo.add("port", "delete", ports[-1]["id"])
        ips = [p["fixed_ips"][0]["ip_address"] for p in ports]
        servers = []
        for i, side in enumerate("ab"):
            script = work / f"user-data-{side}"
            script.write_text(guest_loop(gateway=gateway, peer=ips[1 - i],
                                         spoof=ips[1] if side == "a" else ""))
            servers.append(cloud.openstack(
                "server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--port",
                ports[i]["id"], "--user-data", str(script), f"pair-{tag}-{side}",
                cloud=DEMO))
            undo.add("server", "delete", "--wait", servers[-1]["id"])
        for server in servers:
            wait_status(cloud, server["id"], "ACTIVE", timeout=180)
        for server in servers:
            wait_console(cloud, server["id"], "STACKBOX-TINY: ready", timeout=240)
        yield Pair(sg, ports, servers)


def test_security_group_blocks_ping_between_servers_until_an_icmp_rule(cloud, pair):
    a, b = (s["id"] for s in pair.servers)
    # Both guests are up and reach their router: their network works.
    start = {}
    for server in (a, b):
        wait_round(cloud, server, lambda r: r["gw"] == "ok", what="the gateway answering")
        start[server] = last_round(cloud, server)
    # Two full rounds while both are up: the group has no ICMP rule, so
    # each guest's pings to the other are dropped.
    for server in (a, b):
        wait_round(cloud, server, lambda r: True, after=start[server] + 1, what="a round")
        seen = [r for r in rounds(cloud, server) if r["n"] > start[server]]
        assert seen and all(r["peer"] == "fail" for r in seen), seen

    rule = cloud.openstack("security", "group", "rule", "create", "--protocol", "icmp",
                           pair.sg["id"], cloud=DEMO)
    try:
        for server in (a, b):
            wait_round(cloud, server, lambda r: r["peer"] == "ok",
                       after=last_round(cloud, server), what="the peer answering")
    finally:
        cloud.openstack("security", "group", "rule", "delete", rule["id"], cloud=DEMO,
                        as_json=False)
    # Without the rule, ping is dropped again.
    for server in (a, b):
        wait_round(cloud, server, lambda r: r["peer"] == "fail",
                   after=last_round(cloud, server), what="the peer dropped again")


def test_a_server_reads_only_its_own_metadata(cloud, pair):
    (a, b), (ip_a, ip_b) = ((s["id"] for s in pair.servers), pair.ips)
    for mine, other in ((a, b), (b, a)):
        out = console(cloud, mine)
        assert f"metadata source=metadata-service uuid={mine}" in out, out[-2000:]
        assert other not in out
    # a claims b's address (a second address, a route with it as source, an
    # ARP claim at the router) and asks for b's document: anti-spoofing
    # drops all of it at a's port.
    first = last_round(cloud, a)
    wait_round(cloud, a, lambda r: True, after=first + 1, what="two spoof attempts")
    tried = [r for r in rounds(cloud, a) if r["n"] > first]
    assert tried and all(r["spoof"] == "none" for r in tried), tried
    assert b not in console(cloud, a)

    # The control: with a's port security off, the same attempt does get
    # b's document, so "none" above is the anti-spoofing at work.
    port_a = pair.ports[0]["id"]
    cloud.openstack("port", "set", "--no-security-group", "--disable-port-security", port_a,
                    cloud=DEMO, as_json=False)
    try:
        wait_round(cloud, a, lambda r: r["spoof"] == b, after=last_round(cloud, a),
                   what=f"b's uuid read from {ip_b} by {ip_a} without port security")
    finally:
        cloud.openstack("port", "set", "--enable-port-security", "--security-group",
                        pair.sg["id"], port_a, cloud=DEMO, as_json=False)
    wait_round(cloud, a, lambda r: r["spoof"] == "none", after=last_round(cloud, a) + 1,
               what="the spoof dropped again with port security back on")
