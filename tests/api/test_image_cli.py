"""The image service (Glance v2) through the `openstack` CLI, against a
started stackbox (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
import subprocess

import json

import pytest

from tests.conftest import OPENSTACK, run


def qcow2(path, *, size="16M", data: bytes = b"") -> str:
    """A small self-contained qcow2; `data` is written at its start."""
    raw = f"{path}.raw"
    with open(raw, "wb") as f:
        f.write(data or os.urandom(300 * 1024))
        f.truncate(1024 * 1024)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, str(path)],
                   check=True)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(path), size], check=True)
    os.unlink(raw)
    return str(path)


def create(cloud, *args, cloud_name: str | None = "stackbox", env=None, check=True):
    """`openstack image create`; without --file the CLI uploads its stdin, so
    give it an empty one rather than whatever the test runner's is."""
    argv = [OPENSTACK] + (["--os-cloud", cloud_name] if cloud_name else [])
    proc = run(argv + ["image", "create", *args, "-f", "json"], env=env or cloud.env(),
               check=check, input="")
    return json.loads(proc.stdout) if check else proc


def md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_create_show_list_save(cloud, tmp_path, unique):
    name = unique("img")
    src = qcow2(tmp_path / "disk.qcow2")
    img = cloud.openstack("image", "create", "--file", src, "--disk-format", "qcow2",
                          "--container-format", "bare", "--property", "os_type=linux",
                          "--property", "hw_disk_bus=virtio", "--tag", "first", name)
    try:
        assert img["status"] == "active" and img["name"] == name
        assert img["checksum"] == md5(src)
        assert img["size"] == os.path.getsize(src)
        assert img["virtual_size"] == 16 * 1024 * 1024
        assert img["disk_format"] == "qcow2" and img["container_format"] == "bare"
        props = img["properties"]
        assert props["os_hash_algo"] == "sha512"
        assert props["os_hash_value"] == hashlib.sha512(open(src, "rb").read()).hexdigest()
        assert props["os_type"] == "linux" and props["hw_disk_bus"] == "virtio"
        assert img["tags"] == ["first"]
        shown = cloud.openstack("image", "show", name)
        assert shown["id"] == img["id"] and shown["created_at"].endswith("Z")
        listed = cloud.openstack("image", "list", "--name", name)
        assert [i["ID"] for i in listed] == [img["id"]]
        assert cloud.openstack("image", "list", "--tag", "first", "--long")
        out = tmp_path / "back.qcow2"
        cloud.openstack("image", "save", "--file", str(out), name, as_json=False)
        assert md5(out) == md5(src)
    finally:
        cloud.openstack("image", "delete", img["id"], as_json=False)
    res = cloud.openstack("image", "show", img["id"], check=False)
    assert res.returncode != 0 and "No Image found" in res.stderr
    assert not (cloud.data_dir / "images" / img["id"]).exists()


def test_set_and_unset(cloud, unique):
    name = unique("img")
    img = create(cloud, "--disk-format", "raw", "--container-format", "bare", name)
    try:
        # no --file: the CLI uploads its (empty) stdin, as against Glance
        assert img["status"] == "active" and img["size"] == 0
        assert img["visibility"] == "shared"
        cloud.openstack("image", "set", "--property", "os_distro=debian", "--tag", "t1",
                        "--tag", "t2", "--min-disk", "2", "--min-ram", "128", name,
                        as_json=False)
        got = cloud.openstack("image", "show", name)
        assert got["properties"]["os_distro"] == "debian"
        assert sorted(got["tags"]) == ["t1", "t2"]
        assert got["min_disk"] == 2 and got["min_ram"] == 128
        cloud.openstack("image", "set", "--name", name + "-2", "--private", name,
                        as_json=False)
        got = cloud.openstack("image", "show", name + "-2")
        assert got["visibility"] == "private"
        cloud.openstack("image", "unset", "--property", "os_distro", "--tag", "t1",
                        name + "-2", as_json=False)
        got = cloud.openstack("image", "show", name + "-2")
        assert "os_distro" not in got["properties"] and got["tags"] == ["t2"]
    finally:
        cloud.openstack("image", "delete", img["id"], as_json=False)


def test_protected_image_cannot_be_deleted(cloud, unique):
    img = create(cloud, "--protected", "--disk-format", "raw", "--container-format", "bare",
                 unique("img"))
    res = cloud.openstack("image", "delete", img["id"], check=False, as_json=False)
    assert res.returncode != 0 and "protected" in res.stderr
    assert cloud.openstack("image", "show", img["id"])["protected"] is True
    cloud.openstack("image", "set", "--unprotected", img["id"], as_json=False)
    cloud.openstack("image", "delete", img["id"], as_json=False)


def test_sharing_between_projects(cloud, unique):
    """admin shares an image with demo; demo lists it once it accepts."""
    name = unique("shared")
    img = create(cloud, "--shared", "--disk-format", "raw", "--container-format", "bare",
                 name)
    try:
        demo = cloud.openstack("project", "show", "demo")["id"]
        assert not cloud.openstack("image", "list", "--name", name, cloud="stackbox-demo")
        member = cloud.openstack("image", "add", "project", img["id"], demo)
        assert member["status"] == "pending"
        # pending: not listed, but a member may already look at it (as in Glance)
        assert not cloud.openstack("image", "list", "--name", name, cloud="stackbox-demo")
        assert cloud.openstack("image", "show", img["id"], cloud="stackbox-demo")["id"]
        cloud.openstack("image", "set", "--accept", img["id"], cloud="stackbox-demo",
                        as_json=False)
        listed = cloud.openstack("image", "list", "--name", name, cloud="stackbox-demo")
        assert [i["ID"] for i in listed] == [img["id"]]
        members = cloud.openstack("image", "member", "list", img["id"])
        assert [(m["Member ID"], m["Status"]) for m in members] == [(demo, "accepted")]
        # the member cannot change or delete what it does not own
        res = cloud.openstack("image", "set", "--name", "x", img["id"],
                              cloud="stackbox-demo", check=False, as_json=False)
        assert res.returncode != 0 and "403" in res.stderr
        cloud.openstack("image", "remove", "project", img["id"], demo, as_json=False)
        res = cloud.openstack("image", "show", img["id"], cloud="stackbox-demo", check=False)
        assert res.returncode != 0
    finally:
        cloud.openstack("image", "delete", img["id"], as_json=False)


def test_visibility_rules(cloud, unique):
    tag = unique("vis")
    made = {}
    try:
        for vis in ("public", "private", "community", "shared"):
            made[vis] = create(cloud, f"--{vis}", "--tag", tag, "--disk-format", "raw",
                               "--container-format", "bare", unique(vis))["id"]
        demo_sees = {i["ID"] for i in cloud.openstack("image", "list", "--tag", tag,
                                                      cloud="stackbox-demo")}
        assert demo_sees == {made["public"]}
        community = {i["ID"] for i in cloud.openstack(
            "image", "list", "--community", "--tag", tag, cloud="stackbox-demo")}
        assert community == {made["community"]}
        for vis in ("private", "shared"):
            res = cloud.openstack("image", "show", made[vis], cloud="stackbox-demo",
                                  check=False)
            assert res.returncode != 0, vis
        assert cloud.openstack("image", "show", made["community"],
                               cloud="stackbox-demo")["visibility"] == "community"
        # demo may not publish images (publicize_image is admin-only)
        res = create(cloud, "--public", "--disk-format", "raw", "--container-format",
                     "bare", unique("pub"), cloud_name="stackbox-demo", check=False)
        assert res.returncode != 0 and "403" in res.stderr
    finally:
        for image_id in made.values():
            cloud.openstack("image", "delete", image_id, as_json=False)


@pytest.mark.parametrize("declared", ["raw", "iso"])
def test_mismatched_format_rejected_and_nothing_kept(cloud, tmp_path, unique, declared):
    src = qcow2(tmp_path / "real.qcow2")
    name = unique("liar")
    res = cloud.openstack("image", "create", "--file", src, "--disk-format", declared,
                          "--container-format", "bare", name, check=False)
    assert res.returncode != 0
    assert "400" in res.stderr and "qcow2" in res.stderr, res.stderr
    store = cloud.data_dir / "images"
    assert list((store / "staging").iterdir()) == []
    # the SDK deletes the image it created when the upload fails
    assert not cloud.openstack("image", "list", "--name", name)


def test_reader_cannot_create(cloud, unique, tmp_path):
    user = unique("reader")
    cloud.openstack("user", "create", "--password", "pw-reader", user)
    cloud.openstack("role", "add", "--user", user, "--project", "demo", "reader",
                    as_json=False)
    env = cloud.user_env(user, "pw-reader", "demo")
    try:
        res = create(cloud, "--disk-format", "raw", "--container-format", "bare",
                     unique("r"), cloud_name=None, env=env, check=False)
        assert res.returncode != 0 and "403" in res.stderr, res.stderr
        # reading is allowed
        assert isinstance(cloud.openstack("image", "list", cloud=None, env=env), list)
    finally:
        cloud.openstack("user", "delete", user, as_json=False)
