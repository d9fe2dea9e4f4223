"""Probe tests: kill stackbox (and with it the compute agent) mid-boot, and
restart it while a VM runs. Workloads outlive the control plane; nothing is
orphaned."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.api.test_compute_cli import qemu_processes, wait_console, wait_status
from tests.conftest import Cloud

DEMO = "stackbox-demo"


@pytest.fixture
def own_cloud(tmp_path):
    c = Cloud(tmp_path, "sqlite", "")
    c.start()
    try:
        yield c
    finally:
        c.stop()            # --purge: no VM of this cloud outlives the test


def _pid(cloud) -> int:
    return int((cloud.data_dir / "stackbox.pid").read_text())


def test_kill_during_boot_then_restart(own_cloud):
    c = own_cloud
    server = c.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--nic",
                         "none", "vm-killed", cloud=DEMO)
    os.kill(_pid(c), signal.SIGKILL)
    time.sleep(0.5)
    c.start()
    shown = c.openstack("server", "show", server["id"], cloud=DEMO)
    deadline = time.monotonic() + 120
    while shown["status"] == "BUILD" and time.monotonic() < deadline:
        time.sleep(1)
        shown = c.openstack("server", "show", server["id"], cloud=DEMO)
    assert shown["status"] in ("ACTIVE", "ERROR")
    procs = qemu_processes(server["id"])
    if shown["status"] == "ACTIVE":
        assert len(procs) == 1
    else:
        assert shown["fault"]["message"] and not procs
    c.openstack("server", "delete", "--wait", server["id"], cloud=DEMO, as_json=False)
    assert not qemu_processes(server["id"])


def test_restart_keeps_the_vm_running_and_managed(own_cloud):
    c = own_cloud
    server = c.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--nic",
                         "none", "--wait", "vm-kept", cloud=DEMO)
    before = qemu_processes(server["id"])
    assert len(before) == 1
    c.stackbox("down")          # no --purge: workloads outlive the control plane
    assert qemu_processes(server["id"]) == before, "stopping stackbox must not stop VMs"
    c.start()
    assert c.openstack("server", "show", server["id"], cloud=DEMO)["status"] == "ACTIVE"
    assert qemu_processes(server["id"]) == before
    wait_console(c, "vm-kept", "STACKBOX-TINY: ready")
    c.openstack("server", "stop", server["id"], cloud=DEMO, as_json=False)
    wait_status(c, server["id"], "SHUTOFF")
    assert not qemu_processes(server["id"])
    c.openstack("server", "delete", "--wait", server["id"], cloud=DEMO, as_json=False)
    assert not (c.data_dir / "instances" / server["id"]).exists()
