"""Compute through openstacksdk (the library Ansible and most scripts use)."""

from __future__ import annotations

import pytest


def test_flavors_and_keypairs(demo, admin, unique):
    names = {f.name for f in demo.compute.flavors()}
    assert "c1.tiny" in names
    flavor = demo.compute.find_flavor("c1.tiny")
    assert flavor.ram == 128 and flavor.vcpus == 1
    name = unique("sdkkey")
    kp = demo.compute.create_keypair(name=name)
    assert kp.private_key.startswith("-----BEGIN") and kp.public_key.startswith("ssh-rsa ")
    assert demo.compute.get_keypair(name).fingerprint == kp.fingerprint
    demo.compute.delete_keypair(name)
    assert demo.compute.find_keypair(name) is None


def test_server_create_console_and_delete(demo, unique):
    image = demo.image.find_image("tiny")
    flavor = demo.compute.find_flavor("c1.tiny")
    server = demo.compute.create_server(name=unique("sdkvm"), image_id=image.id,
                                        flavor_id=flavor.id, networks="none",
                                        config_drive=True, metadata={"k": "v"})
    server = demo.compute.wait_for_server(server, status="ACTIVE", wait=180)
    assert server.metadata == {"k": "v"}
    assert server.flavor.original_name == "c1.tiny"
    assert server.power_state == 1
    output = ""
    for _ in range(60):
        output = demo.compute.get_server_console_output(server)["output"]
        if "STACKBOX-TINY: ready" in output:
            break
        import time
        time.sleep(1)
    assert f"uuid={server.id}" in output
    tail = demo.compute.get_server_console_output(server, length=2)["output"]
    assert len(tail.splitlines()) <= 2
    demo.compute.delete_server(server)
    demo.compute.wait_for_delete(server, wait=120)


def test_server_groups_and_quotas(demo, admin, unique):
    group = demo.compute.create_server_group(name=unique("grp"), policy="soft-anti-affinity")
    assert group.policy == "soft-anti-affinity"
    assert group.id in [g.id for g in demo.compute.server_groups()]
    demo.compute.delete_server_group(group)
    project = admin.identity.find_project("demo")
    quota = admin.compute.get_quota_set(project.id)
    assert quota.instances == 10 and quota.cores == 20
    bad = pytest.raises(Exception, demo.compute.create_server_group, name=unique("g"),
                        policy="sideways")
    assert "policy" in str(bad.value)
