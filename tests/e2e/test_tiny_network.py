"""The tiny guest on a private network: DHCP (with option 121), the
metadata service at 169.254.169.254, and SSH with the injected key.

Everything lives in a network namespace made for the test: a bridge, the
guest's tap, dnsmasq and a static HTTP server holding the metadata files.
No traffic leaves the namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stackbox.guest import configdrive
from tests.e2e.guests import BOOT_TIMEOUT, MARK, die_with_parent

pytestmark = pytest.mark.e2e

GW = "10.77.0.1"
GUEST_IP = "10.77.0.5"
MAC = "52:54:00:12:34:56"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)


def _stop(proc: subprocess.Popen) -> None:
    # `ip netns exec` execs in place: the pid we spawned is the daemon's.
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def netns(workdir):
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    if not shutil.which("dnsmasq") and not os.path.exists("/usr/sbin/dnsmasq"):
        pytest.skip("dnsmasq not installed")
    name = f"sbx-tiny-{os.getpid()}"
    procs: list[subprocess.Popen] = []
    _ip("netns", "add", name)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "br0", "type", "bridge"],
                    ["addr", "add", f"{GW}/24", "dev", "br0"],
                    ["addr", "add", "169.254.169.254/32", "dev", "br0"],
                    ["link", "set", "br0", "up"],
                    ["tuntap", "add", "tap0", "mode", "tap"],
                    ["link", "set", "tap0", "master", "br0", "up"]):
            _ip("-n", name, *cmd)
        yield name, procs
    finally:
        for proc in procs:
            _stop(proc)
        subprocess.run(["ip", "netns", "del", name], timeout=30, capture_output=True)


# netns before boot: teardown runs in reverse, so QEMU dies before its
# network does.
def test_tiny_dhcp_metadata_service_and_ssh(tiny_image, netns, boot, workdir):
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("openssh-client not installed")
    ns, procs = netns
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)
    server_id = str(uuid.uuid4())
    meta = {"uuid": server_id, "hostname": "netguest",
            "public_keys": {"netkey": (workdir / "id_ed25519.pub").read_text()}}
    docroot = workdir / "metadata"
    files = configdrive.openstack_layout(meta, b"#!/bin/sh\necho USERDATA-NET\n", None, None)
    for rel, body in files.items():
        (docroot / rel).parent.mkdir(parents=True, exist_ok=True)
        (docroot / rel).write_bytes(body)

    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    # With option 121 present the guest ignores the router option (RFC
    # 3442), so the default route goes into 121 as well.
    procs.append(_spawn(
        ["ip", "netns", "exec", ns, dnsmasq, "--no-daemon", "--port=0", "--no-resolv",
         "--no-hosts", "--bind-interfaces", "--interface=br0", "--except-interface=lo",
         f"--dhcp-range={GUEST_IP},static,255.255.255.0",
         f"--dhcp-host={MAC},{GUEST_IP}", f"--dhcp-leasefile={workdir}/leases",
         f"--dhcp-option=121,169.254.169.254/32,{GW},0.0.0.0/0,{GW}"],
        workdir / "dnsmasq.log"))
    procs.append(_spawn(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind",
         "169.254.169.254", "--directory", str(docroot), "80"], workdir / "http.log"))

    guest = boot(tiny_image, [
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"],
        wrap=["ip", "netns", "exec", ns])
    ready = guest.wait_for(f"{MARK} ready", BOOT_TIMEOUT)
    log = guest.log()
    print(f"tiny guest on the network ready {ready:.1f} s after spawn")
    assert f"{MARK} network eth0 {GUEST_IP}/24" in log, log
    assert f"{MARK} metadata source=metadata-service uuid={server_id}" in log, log
    assert f"{MARK} ssh-key installed name=netkey" in log, log
    assert "USERDATA-NET" in log, log

    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "ssh", "-i", str(key), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=10", f"root@{GUEST_IP}", "hostname; ip route"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "netguest"
    assert any(ln.startswith(f"default via {GW}") for ln in lines), lines
    assert any(ln.startswith(f"169.254.169.254 via {GW}") for ln in lines), lines
