"""The image service through openstacksdk (conn.image.*), against a started
stackbox (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from openstack import exceptions

from tests.api.test_image_cli import qcow2




def test_create_upload_download(admin, tmp_path, unique):
    src = qcow2(tmp_path / "sdk.qcow2", size="32M")
    name = unique("sdk")
    img = admin.image.create_image(name, filename=src, disk_format="qcow2",
                                   container_format="bare", validate_checksum=True,
                                   os_type="linux", hw_qemu_guest_agent="yes",
                                   kernel_id="6c2b4d0c-8b5b-4a80-9e9a-3a4c0e6b9f1e")
    try:
        img = admin.image.get_image(img.id)
        data = open(src, "rb").read()
        assert img.status == "active" and img.size == len(data)
        assert img.checksum == hashlib.md5(data).hexdigest()
        assert img.hash_algo == "sha512" and img.hash_value == hashlib.sha512(data).hexdigest()
        assert img.virtual_size == 32 * 1024 * 1024
        assert img.os_type == "linux" and img.hw_qemu_guest_agent == "yes"
        assert img.kernel_id == "6c2b4d0c-8b5b-4a80-9e9a-3a4c0e6b9f1e"
        out = tmp_path / "out.qcow2"
        admin.image.download_image(img, output=str(out))  # verifies sha512 itself
        assert out.read_bytes() == data
        assert admin.image.download_image(img).content == data
        assert admin.image.find_image(name).id == img.id
        assert img.id in {i.id for i in admin.image.images(status="active")}
        img = admin.image.update_image(img, hw_disk_bus="scsi", min_ram=256)
        assert img.hw_disk_bus == "scsi" and img.min_ram == 256
        admin.image.add_tag(img, "gold")
        assert "gold" in admin.image.get_image(img.id).tags
        admin.image.remove_tag(img, "gold")
        assert admin.image.get_image(img.id).tags == []
    finally:
        admin.image.delete_image(img.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.image.get_image(img.id)


def test_upload_to_existing_image(admin, unique):
    img = admin.image.create_image(unique("later"), disk_format="raw",
                                   container_format="bare")
    try:
        assert admin.image.get_image(img.id).status == "queued"
        img.data = b"\0" * 4096
        assert img.upload(admin.image).status_code == 204
        got = admin.image.get_image(img.id)
        assert got.status == "active" and got.size == 4096 and got.virtual_size == 4096
    finally:
        admin.image.delete_image(img.id)


def test_members_between_admin_and_demo(admin, demo, unique):
    demo_project = demo.current_project_id
    img = admin.image.create_image(unique("share"), disk_format="raw",
                                   container_format="bare", visibility="shared",
                                   data=b"shared bytes", validate_checksum=False)
    try:
        member = admin.image.add_member(img, member_id=demo_project)
        assert member.status == "pending"
        assert img.id not in {i.id for i in demo.image.images()}
        demo.image.update_member(member, img, status="accepted")
        assert img.id in {i.id for i in demo.image.images()}
        assert demo.image.download_image(img).content == b"shared bytes"
        assert [m.member_id for m in admin.image.members(img)] == [demo_project]
        assert admin.image.get_member(demo_project, img).status == "accepted"
        with pytest.raises(exceptions.ForbiddenException):
            demo.image.delete_image(img.id)
        demo.image.update_member(demo_project, img, status="rejected")
        assert img.id not in {i.id for i in demo.image.images()}
        assert img.id in {i.id for i in demo.image.images(member_status="rejected")}
        admin.image.remove_member(demo_project, img)
        with pytest.raises(exceptions.NotFoundException):
            demo.image.get_image(img.id)
        # members are for shared images only
        private = admin.image.create_image(unique("priv"), disk_format="raw",
                                           container_format="bare", visibility="private")
        try:
            with pytest.raises(exceptions.ForbiddenException):
                admin.image.add_member(private, member_id=demo_project)
        finally:
            admin.image.delete_image(private.id)
    finally:
        admin.image.delete_image(img.id)


def test_protected_delete_refused(demo, unique):
    img = demo.image.create_image(unique("prot"), disk_format="raw",
                                  container_format="bare", is_protected=True)
    with pytest.raises(exceptions.ForbiddenException) as err:
        demo.image.delete_image(img.id)
    assert "protected" in str(err.value)
    demo.image.update_image(img, is_protected=False)
    demo.image.delete_image(img.id)


def test_backing_file_upload_refused_and_cleaned_up(demo, cloud, tmp_path, unique):
    base = qcow2(tmp_path / "base.qcow2")
    over = tmp_path / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                    str(over)], check=True)
    name = unique("backed")
    with pytest.raises(exceptions.BadRequestException) as err:
        demo.image.create_image(name, filename=str(over), disk_format="qcow2",
                                container_format="bare")
    assert "backing file" in str(err.value)
    assert demo.image.find_image(name) is None
    assert list((cloud.data_dir / "images" / "staging").iterdir()) == []


def test_owner_cannot_answer_for_its_members(admin, demo, unique):
    """Only the member project sets its status (admin aside, as in Glance)."""
    img = demo.image.create_image(unique("owned"), disk_format="raw",
                                  container_format="bare", visibility="shared")
    try:
        demo.image.add_member(img, member_id=admin.current_project_id)
        with pytest.raises(exceptions.ForbiddenException):
            demo.image.update_member(admin.current_project_id, img, status="accepted")
        admin.image.update_member(admin.current_project_id, img, status="accepted")
        assert demo.image.get_member(admin.current_project_id, img).status == "accepted"
    finally:
        demo.image.delete_image(img.id)
