"""Compute (Nova v2.1) through the `openstack` CLI against a started stackbox:
flavors, keypairs, quotas, hypervisors, and real servers (QEMU, TCG here)
through every action."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import OPENSTACK, run

DEMO = "stackbox-demo"


def wait_status(cloud, name, status, *, cloud_name=DEMO, timeout=120):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = cloud.openstack("server", "show", name, cloud=cloud_name)
        if seen["status"] == status:
            return seen
        if seen["status"] == "ERROR" and status != "ERROR":
            raise AssertionError(f"{name} went to ERROR: {seen.get('fault')}")
        time.sleep(0.5)
    raise AssertionError(f"{name} did not reach {status}: {seen and seen['status']}")


def console(cloud, name, *, cloud_name=DEMO) -> str:
    return cloud.openstack("console", "log", "show", name, cloud=cloud_name,
                           as_json=False).stdout


def wait_console(cloud, name, text, *, timeout=60) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = console(cloud, name)
        if text in out:
            return out
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the console of {name}:\n{out[-2000:]}")


def qemu_processes(uuid: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{uuid}"], capture_output=True,
                         text=True).stdout
    return out.split()


@pytest.fixture
def keypair(cloud, tmp_path, unique):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = unique("key")
    cloud.openstack("keypair", "create", "--public-key", f"{key}.pub", name, cloud=DEMO)
    yield name, Path(f"{key}.pub").read_text().strip()
    cloud.openstack("keypair", "delete", name, cloud=DEMO, check=False, as_json=False)


def test_default_flavors_and_tiny_image(cloud):
    flavors = {f["Name"]: f for f in cloud.openstack("flavor", "list", cloud=DEMO)}
    assert {"m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge", "c1.tiny"} <= set(flavors)
    assert flavors["m1.tiny"]["RAM"] == 512 and flavors["m1.tiny"]["Disk"] == 1
    images = {i["Name"]: i for i in cloud.openstack("image", "list", cloud=DEMO)}
    assert {"tiny", "tiny-kernel", "tiny-ramdisk"} <= set(images)
    tiny = cloud.openstack("image", "show", "tiny", cloud=DEMO)
    props = tiny["properties"]
    assert props["kernel_id"] == images["tiny-kernel"]["ID"]
    assert props["ramdisk_id"] == images["tiny-ramdisk"]["ID"]


def test_private_flavor_extra_specs_and_access(cloud, unique):
    name = unique("flv")
    f = cloud.openstack("flavor", "create", "--vcpus", "2", "--ram", "256", "--disk", "2",
                        "--private", "--property", "hw:cpu_policy=shared", name)
    assert f["os-flavor-access:is_public"] is False
    assert f["properties"] == {"hw:cpu_policy": "shared"}
    demo_names = [x["Name"] for x in cloud.openstack("flavor", "list", cloud=DEMO)]
    assert name not in demo_names
    demo_project = cloud.openstack("project", "show", "demo")["id"]
    cloud.openstack("flavor", "set", "--project", demo_project, name, as_json=False)
    assert name in [x["Name"] for x in cloud.openstack("flavor", "list", "--all",
                                                         cloud=DEMO)]
    shown = cloud.openstack("flavor", "show", name)
    assert demo_project in str(shown["access_project_ids"])
    # users cannot create flavors
    denied = cloud.openstack("flavor", "create", "--ram", "64", "--vcpus", "1", unique("x"),
                             cloud=DEMO, check=False)
    assert denied.returncode != 0 and "403" in denied.stderr
    cloud.openstack("flavor", "delete", name, as_json=False)
    gone = cloud.openstack("flavor", "show", name, check=False)
    assert gone.returncode != 0 and "No Flavor found" in gone.stderr + gone.stdout


def test_keypair_import_generate_and_bad_key(cloud, tmp_path, unique):
    name = unique("gen")
    created = cloud.openstack("keypair", "create", "--private-key", str(tmp_path / "priv"),
                              name, cloud=DEMO)
    assert created["fingerprint"].count(":") >= 15 or created["fingerprint"].startswith("SHA")
    assert (tmp_path / "priv").read_text().startswith("-----BEGIN")
    listed = [k["Name"] for k in cloud.openstack("keypair", "list", cloud=DEMO)]
    assert name in listed
    shown = cloud.openstack("keypair", "show", name, cloud=DEMO)
    assert shown["name"] == name
    # keypairs belong to their user: admin does not see demo's
    assert name not in [k["Name"] for k in cloud.openstack("keypair", "list")]
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa not-base64!! x\n")
    proc = cloud.openstack("keypair", "create", "--public-key", str(bad), unique("bad"),
                           cloud=DEMO, check=False)
    assert proc.returncode != 0 and "public_key" in proc.stderr
    dup = cloud.openstack("keypair", "create", "--public-key", str(bad), name, cloud=DEMO,
                          check=False)
    assert dup.returncode != 0
    cloud.openstack("keypair", "delete", name, cloud=DEMO, as_json=False)
    assert name not in [k["Name"] for k in cloud.openstack("keypair", "list", cloud=DEMO)]


def test_server_lifecycle_through_every_action(cloud, keypair, unique):
    """One real VM through create, console log, power actions, lock, metadata,
    tags, snapshot (and a boot from it), rebuild, resize, delete."""
    if cloud.backend != "sqlite":
        pytest.skip("the full VM lifecycle runs once, on SQLite (PostgreSQL boots one VM "
                    "in test_boot_and_delete)")
    key_name, public_key = keypair
    name = unique("vm")
    created = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                              "--key-name", key_name, "--config-drive", "true", "--nic",
                              "none", "--property", "role=test", "--wait", name, cloud=DEMO)
    sid = created["id"]
    assert created["status"] == "ACTIVE"
    assert created["OS-EXT-STS:power_state"] in (1, "Running")
    out = wait_console(cloud, name, "STACKBOX-TINY: ready")
    assert f"metadata source=configdrive uuid={sid}" in out
    assert f"ssh-key installed name={key_name}" in out
    assert len(qemu_processes(sid)) == 1

    for action, status in (("stop", "SHUTOFF"), ("start", "ACTIVE"), ("pause", "PAUSED"),
                           ("unpause", "ACTIVE"), ("suspend", "SUSPENDED"),
                           ("resume", "ACTIVE")):
        cloud.openstack("server", action, name, cloud=DEMO, as_json=False)
        wait_status(cloud, name, status)
    assert qemu_processes(sid), "the VM runs again after resume"
    for flag in ("--soft", "--hard"):
        cloud.openstack("server", "reboot", flag, "--wait", name, cloud=DEMO, as_json=False)
        assert wait_status(cloud, name, "ACTIVE")["OS-EXT-STS:task_state"] is None

    # an action that does not fit the state is refused with 409
    proc = cloud.openstack("server", "start", name, cloud=DEMO, check=False, as_json=False)
    assert proc.returncode != 0 and "409" in proc.stderr and "vm_state active" in proc.stderr

    # lock: the owner can no longer act; unlock restores it
    cloud.openstack("server", "lock", "--reason", "maintenance", name, cloud=DEMO,
                    as_json=False)
    shown = cloud.openstack("server", "show", name, cloud=DEMO)
    assert shown["locked"] is True and shown["locked_reason"] == "maintenance"
    proc = cloud.openstack("server", "stop", name, cloud=DEMO, check=False, as_json=False)
    assert proc.returncode != 0 and "locked" in proc.stderr
    cloud.openstack("server", "unlock", name, cloud=DEMO, as_json=False)

    cloud.openstack("server", "set", "--property", "a=1", "--tag", "blue", name, cloud=DEMO,
                    as_json=False)
    shown = cloud.openstack("server", "show", name, cloud=DEMO)
    assert shown["properties"] == {"role": "test", "a": "1"}
    assert "blue" in shown["tags"]
    cloud.openstack("server", "unset", "--property", "a", name, cloud=DEMO, as_json=False)
    assert cloud.openstack("server", "show", name, cloud=DEMO)["properties"] == {"role": "test"}

    actions = [a["Action"] for a in cloud.openstack("server", "event", "list", name,
                                                    cloud=DEMO)]
    for expected in ("create", "stop", "start", "pause", "suspend", "reboot", "lock"):
        assert expected in actions
    create_req = [a for a in cloud.openstack("server", "event", "list", name, cloud=DEMO)
                  if a["Action"] == "create"][0]["Request ID"]
    event = cloud.openstack("server", "event", "show", name, create_req, cloud=DEMO)
    assert event["events"][0]["event"] == "compute__do_build_and_run_instance"
    assert event["events"][0]["result"] == "Success"

    # snapshot into the image service, and the snapshot boots
    snap = unique("snap")
    cloud.openstack("server", "image", "create", "--name", snap, "--wait", name, cloud=DEMO)
    image = cloud.openstack("image", "show", snap, cloud=DEMO)
    assert image["status"] == "active" and image["disk_format"] == "qcow2"
    assert image["properties"]["instance_uuid"] == sid
    child = unique("vm")
    booted = cloud.openstack("server", "create", "--image", snap, "--flavor", "c1.tiny",
                             "--nic", "none", "--wait", child, cloud=DEMO)
    assert booted["status"] == "ACTIVE"
    wait_console(cloud, child, "STACKBOX-TINY: ready")
    cloud.openstack("server", "delete", "--wait", child, cloud=DEMO, as_json=False)

    cloud.openstack("server", "rebuild", "--image", "tiny", "--wait", name, cloud=DEMO)
    wait_status(cloud, name, "ACTIVE")

    cloud.openstack("server", "resize", "--flavor", "m1.tiny", "--wait", name, cloud=DEMO,
                    as_json=False)
    shown = wait_status(cloud, name, "VERIFY_RESIZE")
    assert "m1.tiny" in json.dumps(shown["flavor"])
    cloud.openstack("server", "resize", "confirm", name, cloud=DEMO, as_json=False)
    wait_status(cloud, name, "ACTIVE")
    cloud.openstack("server", "resize", "--flavor", "c1.tiny", "--wait", name, cloud=DEMO,
                    as_json=False)
    wait_status(cloud, name, "VERIFY_RESIZE")
    cloud.openstack("server", "resize", "revert", name, cloud=DEMO, as_json=False)
    shown = wait_status(cloud, name, "ACTIVE")
    assert "m1.tiny" in json.dumps(shown["flavor"])

    cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, as_json=False)
    assert not qemu_processes(sid)
    assert not (cloud.data_dir / "instances" / sid).exists()
    cloud.openstack("image", "delete", snap, cloud=DEMO, as_json=False)


def test_boot_and_delete(cloud, unique):
    name = unique("vm")
    server = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                             "--nic", "none", "--wait", name, cloud=DEMO)
    assert server["status"] == "ACTIVE"
    listed = cloud.openstack("server", "list", "--name", f"^{name}$", cloud=DEMO)
    assert [s["Name"] for s in listed] == [name]
    assert listed[0]["Status"] == "ACTIVE"
    # admins see every project's servers with --all-projects, users only theirs
    assert name in [s["Name"] for s in cloud.openstack("server", "list", "--all-projects")]
    assert name not in [s["Name"] for s in cloud.openstack("server", "list")]
    admin_view = cloud.openstack("server", "show", server["id"])
    assert admin_view["OS-EXT-SRV-ATTR:host"]
    cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, as_json=False)
    assert not qemu_processes(server["id"])
    gone = cloud.openstack("server", "show", name, cloud=DEMO, check=False)
    assert gone.returncode != 0


def test_bad_create_requests(cloud, tmp_path, unique):
    def fails(*args):
        proc = cloud.openstack("server", "create", *args, "--nic", "none", unique("bad"),
                               cloud=DEMO, check=False, as_json=False)
        assert proc.returncode != 0
        return proc.stderr
    err = fails("--image", "tiny", "--flavor", "no-such-flavor")
    assert "no-such-flavor" in err
    err = fails("--image", "no-such-image", "--flavor", "c1.tiny")
    assert "no-such-image" in err
    big = tmp_path / "user-data"
    big.write_bytes(os.urandom(60 * 1024))
    err = fails("--image", "tiny", "--flavor", "c1.tiny", "--user-data", str(big))
    assert "user_data" in err and "400" in err
    # a kernel image cannot boot on its own
    err = fails("--image", "tiny-kernel", "--flavor", "c1.tiny")
    assert "kernel" in err
    # nothing was created by any of them
    assert not [s for s in cloud.openstack("server", "list", cloud=DEMO)
                if s["Name"].startswith("bad-")]


def test_flavor_disk_smaller_than_image(cloud, tmp_path, unique):
    disk = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "3G"], check=True)
    image = unique("big")
    run([OPENSTACK, "--os-cloud", DEMO, "image", "create", "--disk-format", "qcow2",
         "--container-format", "bare", "--file", str(disk), image], env=cloud.env())
    proc = cloud.openstack("server", "create", "--image", image, "--flavor", "c1.tiny",
                           "--nic", "none", unique("vm"), cloud=DEMO, check=False,
                           as_json=False)
    assert proc.returncode != 0 and "Flavor's disk is too small" in proc.stderr
    cloud.openstack("image", "delete", image, cloud=DEMO, as_json=False)


def test_failed_boot_is_error_with_fault_and_nothing_running(cloud, unique):
    tiny = cloud.openstack("image", "show", "tiny", cloud=DEMO)
    props = tiny["properties"]
    disk = Path(cloud.root) / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    image = unique("broken")
    run([OPENSTACK, "--os-cloud", DEMO, "image", "create", "--disk-format", "qcow2",
         "--container-format", "bare", "--file", str(disk), "--property",
         f"kernel_id={props['kernel_id']}", "--property", f"ramdisk_id={props['ramdisk_id']}",
         "--property", "hw_machine_type=no-such-machine", image], env=cloud.env())
    name = unique("vm")
    server = cloud.openstack("server", "create", "--image", image, "--flavor", "c1.tiny",
                             "--nic", "none", name, cloud=DEMO)
    shown = wait_status(cloud, name, "ERROR")
    assert "no-such-machine" in shown["fault"]["message"]
    assert not qemu_processes(server["id"])
    cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, as_json=False)
    cloud.openstack("image", "delete", image, cloud=DEMO, as_json=False)


def test_quota_exceeded_names_quota_limit_and_usage(cloud, unique):
    project = unique("proj")
    user = unique("user")
    cloud.openstack("project", "create", project)
    cloud.openstack("user", "create", "--password", "pw-secret-1", user)
    cloud.openstack("role", "add", "--user", user, "--project", project, "member",
                    as_json=False)
    cloud.openstack("quota", "set", "--instances", "1", project, as_json=False)
    quota = cloud.openstack("quota", "show", "--compute", project)
    rows = quota if isinstance(quota, list) else [{"Resource": k, "Limit": v}
                                                  for k, v in quota.items()]
    assert {r["Resource"]: r["Limit"] for r in rows}["instances"] == 1
    env = cloud.user_env(user, "pw-secret-1", project)
    first = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                            "--nic", "none", unique("vm"), cloud=None, env=env)
    proc = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                           "--nic", "none", unique("vm"), cloud=None, env=env, check=False,
                           as_json=False)
    assert proc.returncode != 0 and "403" in proc.stderr
    assert "instances" in proc.stderr and "limit 1" in proc.stderr and "in use 1" in proc.stderr
    limits = cloud.openstack("limits", "show", "--absolute", cloud=None, env=env)
    values = {r["Name"]: r["Value"] for r in limits}
    assert values["instances"] == 1 and values["instances_used"] == 1   # SDK's names
    cloud.openstack("server", "delete", "--wait", first["id"], cloud=None, env=env,
                    as_json=False)


def test_hypervisors_services_zones(cloud):
    hypervisors = cloud.openstack("hypervisor", "list")
    assert len(hypervisors) == 1 and hypervisors[0]["State"] == "up"
    detail = cloud.openstack("--os-compute-api-version", "2.87", "hypervisor", "show",
                             hypervisors[0]["Hypervisor Hostname"])
    assert detail["vcpus"] >= 1 and detail["memory_mb"] > 0
    assert "running_vms" in detail
    stats = cloud.openstack("--os-compute-api-version", "2.87", "hypervisor", "stats", "show")
    assert stats["count"] == 1 and stats["vcpus"] == detail["vcpus"]
    services = cloud.openstack("compute", "service", "list")
    assert services[0]["Binary"] == "nova-compute" and services[0]["State"] == "up"
    zones = cloud.openstack("availability", "zone", "list", "--compute", cloud=DEMO)
    assert zones[0]["Zone Name"] == "nova"
    denied = cloud.openstack("hypervisor", "list", cloud=DEMO, check=False, as_json=False)
    assert denied.returncode != 0 and "403" in denied.stderr


def test_server_groups_anti_affinity(cloud, unique):
    group = cloud.openstack("server", "group", "create", "--policy", "anti-affinity",
                            unique("grp"), cloud=DEMO)
    assert group["policy"] == "anti-affinity"
    a = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--nic",
                        "none", "--hint", f"group={group['id']}", unique("vm"), cloud=DEMO)
    b = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--nic",
                        "none", "--hint", f"group={group['id']}", unique("vm"), cloud=DEMO)
    wait_status(cloud, a["id"], "ACTIVE")
    # one host only: the second member has nowhere to go
    second = wait_status(cloud, b["id"], "ERROR")
    assert "No valid host" in second["fault"]["message"]
    members = cloud.openstack("server", "group", "show", group["id"], cloud=DEMO)["members"]
    assert a["id"] in str(members) and b["id"] in str(members)
    for s in (a, b):
        cloud.openstack("server", "delete", "--wait", s["id"], cloud=DEMO, as_json=False)
    cloud.openstack("server", "group", "delete", group["id"], cloud=DEMO, as_json=False)


def test_user_data_runs_in_the_guest(cloud, tmp_path, unique):
    script = tmp_path / "ud.sh"
    script.write_text("#!/bin/sh\necho USERDATA-MARKER-$((6*7))\n")
    name = unique("vm")
    created = cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny",
                              "--nic", "none", "--config-drive", "true", "--user-data",
                              str(script), "--wait", name, cloud=DEMO)
    out = wait_console(cloud, name, "STACKBOX-TINY: ready")
    assert "USERDATA-MARKER-42" in out
    shown = cloud.openstack("server", "show", created["id"])     # admin sees user_data
    assert base64.b64decode(shown["OS-EXT-SRV-ATTR:user_data"]).startswith(b"#!/bin/sh")
    cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, as_json=False)

