"""What `stackbox up` prepares so a first boot needs nothing else: the default
flavors and the bundled `tiny` guest registered in the image service (a
kernel `aki`, a ramdisk `ari` and a small qcow2 root disk pointing at them with
`kernel_id`/`ramdisk_id`, as Glance describes such images)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from stackbox.common import hostops
from stackbox.common.db import Database
from stackbox.common.http.context import RequestContext
from stackbox.compute.flavors import FlavorService

TINY = "tiny"
ROOT_DISK_SIZE = "64M"


def ensure_flavors(db: Database) -> None:
    FlavorService(db).ensure_defaults()


def _admin_ctx(identity) -> RequestContext:
    probe = RequestContext(request_id="req-bootstrap", user_id="stackbox", roles=("admin",))
    admin = identity.list_projects(probe, name="admin")[0]
    return RequestContext(request_id="req-bootstrap", user_id="stackbox", project_id=admin.id,
                          roles=("admin",))


def _upload(image, ctx, image_id: str, path: Path) -> None:
    upload = image.begin_upload(ctx, image_id)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                upload.staged.write(chunk)
        image.finish_upload(ctx, upload)
    except BaseException:
        image.abort_upload(ctx, upload)
        raise


def _create(image, ctx, *, name: str, disk_format: str, container_format: str,
            path: Path, properties: dict[str, str]) -> str:
    img = image.create_image(ctx, image_id=None, core={
        "name": name, "disk_format": disk_format, "container_format": container_format,
        "visibility": "public"}, properties=properties)
    try:
        _upload(image, ctx, img.id, path)
    except BaseException:
        image.delete_image(ctx, img.id)
        raise
    return img.id


def register_tiny(db: Database, settings, *, identity, image, cache_dir: Path,
                  progress: Callable[[str], None] = lambda _: None) -> str:
    """Build (cached) and register `tiny` unless an image of the same build is
    there already; returns what it did, for the progress line."""
    from stackbox.guest.tiny import build_tiny
    built = build_tiny(cache_dir, progress=progress)
    ctx = _admin_ctx(identity)
    from stackbox.image.service import ListQuery
    existing = [i for i in image.list_images(ctx, ListQuery(visibility="public"))
                if i.name == TINY and i.status == "active"]
    if any((i.properties or {}).get("stackbox_build") == built.version for i in existing):
        return f"{TINY} {built.version} registered already"
    build = {"stackbox_build": built.version}
    kernel_id = _create(image, ctx, name=f"{TINY}-kernel", disk_format="aki",
                        container_format="aki", path=built.kernel, properties=build)
    ramdisk_id = _create(image, ctx, name=f"{TINY}-ramdisk", disk_format="ari",
                         container_format="ari", path=built.initramfs, properties=build)
    with tempfile.TemporaryDirectory(prefix="sbx-tiny-") as tmp:
        root = Path(tmp) / "root.qcow2"
        hostops.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root), ROOT_DISK_SIZE],
                    timeout=60)
        _create(image, ctx, name=TINY, disk_format="qcow2", container_format="bare",
                path=root, properties={**build, "kernel_id": kernel_id,
                                       "ramdisk_id": ramdisk_id,
                                       "os_command_line": built.cmdline,
                                       "hw_rng_model": "virtio",
                                       # no acpid in the guest: power-off is a hard stop
                                       "os_shutdown_timeout": "2",
                                       "architecture": "x86_64", "os_distro": "tiny"})
    from stackbox.image.schemas import PatchOp
    for old in existing:     # an older build keeps serving its servers under another name
        version = (old.properties or {}).get("stackbox_build", old.id[:8])
        image.update_image(ctx, old.id, [PatchOp("replace", "name", f"{TINY}-{version}")])
    return f"{TINY} {built.version} registered"
