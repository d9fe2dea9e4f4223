"""Issue 4's acceptance on a started stackbox: a server on the default private
network behind router1 gets its address by DHCP (dnsmasq), its key from the
metadata service (no config drive), and is reached from an outside namespace
on the public bridge by its floating IP."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.api.test_compute_cli import wait_console

DEMO = "stackbox-demo"


def sh(*argv, check=True, timeout=60):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=timeout)


@pytest.fixture
def outside(cloud):
    """A namespace standing for the outside world, plugged into the cloud's
    public bridge (which is connected to nothing else)."""
    ns, veth = f"sbx-out-{uuid.uuid4().hex[:6]}", f"sbx-o{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", cloud.public_bridge, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", "172.24.4.250/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", ns, check=False)


def test_server_on_private_network_dhcp_metadata_floating_ip(cloud, outside, tmp_path):
    if cloud.backend != "sqlite":
        pytest.skip("the networked boot runs once, on SQLite")
    key = tmp_path / "id"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    name = f"net-{uuid.uuid4().hex[:6]}"
    cloud.openstack("keypair", "create", "--public-key", f"{key}.pub", name, cloud=DEMO)
    cloud.openstack("security", "group", "rule", "create", "--protocol", "icmp", "default",
                    cloud=DEMO)
    server = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                             "--network", "private", "--key-name", name, "--wait", name,
                             cloud=DEMO)
    try:
        addresses = str(server["addresses"])
        assert "private" in addresses and "10.0.0." in addresses
        out = wait_console(cloud, name, "STACKBOX-TINY: ready", timeout=180)
        assert "network eth0 10.0.0." in out, out[-2000:]
        assert f"metadata source=metadata-service uuid={server['id']}" in out, out[-2000:]
        assert f"ssh-key installed name={name}" in out
        fip = cloud.openstack("floating", "ip", "create", "public", cloud=DEMO)
        address = fip["floating_ip_address"]
        cloud.openstack("server", "add", "floating", "ip", name, address, cloud=DEMO,
                        as_json=False)
        deadline = time.monotonic() + 90
        ok = False
        while time.monotonic() < deadline and not ok:
            ok = sh("ip", "netns", "exec", outside, "ping", "-c", "1", "-W", "2", address,
                    check=False).returncode == 0
        assert ok, f"the outside could not ping the floating IP {address}"
        shown = cloud.openstack("server", "show", name, cloud=DEMO)
        assert address in str(shown["addresses"])
    finally:
        cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, check=False,
                        as_json=False)
        cloud.openstack("keypair", "delete", name, cloud=DEMO, check=False, as_json=False)
