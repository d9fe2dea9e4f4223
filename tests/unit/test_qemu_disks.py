"""Disk handling of the QEMU driver on stopped instances (real qemu-img,
no guest): rebuild, resize, snapshot, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from stackbox.compute.drivers.base import DriverError, ImageFile, InstanceSpec
from stackbox.compute.drivers.qemu import QemuDriver

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
GiB = 1024 ** 3


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="sbx-d-"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         check=True, capture_output=True, timeout=30).stdout
    return json.loads(out)


def image(root: Path, name: str, size: str = "64M", fmt: str = "qcow2") -> ImageFile:
    path = root / name
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True,
                   timeout=30)
    return ImageFile(name, path, fmt)


def spec(uid: str, img: ImageFile | None, **kw) -> InstanceSpec:
    base = dict(uuid=uid, name="d", vcpus=1, memory_mb=64, root_gb=1, image=img)
    base.update(kw)
    return InstanceSpec(**base)


def test_rebuild_resize_snapshot_destroy(root):
    driver = QemuDriver(root / "inst", accel="tcg")
    uid = str(uuid.uuid4())
    base = image(root, "img-a")
    driver.rebuild(spec(uid, base, ephemeral_gb=1, swap_mb=16))
    paths = driver.paths(uid)
    disk = info(paths.root_disk)
    assert disk["virtual-size"] == GiB and disk["backing-filename"] == str(base.path)
    assert disk["backing-filename-format"] == "qcow2"
    assert paths.ephemeral_disk.stat().st_size == GiB
    assert paths.swap_disk.stat().st_size == 16 * 1024 ** 2
    if shutil.which("blkid"):
        label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL",
                                str(paths.ephemeral_disk)], capture_output=True, text=True,
                               timeout=30).stdout.strip()
        assert label == "ephemeral0"
    assert driver.images_in_use() == {"img-a"}

    # Grow the root, change ephemeral, drop swap; a smaller root never shrinks.
    driver.resize_disks(spec(uid, base, root_gb=2, ephemeral_gb=2))
    assert info(paths.root_disk)["virtual-size"] == 2 * GiB
    assert paths.ephemeral_disk.stat().st_size == 2 * GiB
    assert not paths.swap_disk.exists()
    driver.resize_disks(spec(uid, base, root_gb=1, ephemeral_gb=2))
    assert info(paths.root_disk)["virtual-size"] == 2 * GiB

    # A snapshot of a stopped instance is one flat qcow2.
    dest = root / "snap.qcow2"
    assert driver.snapshot(uid, dest) == "qcow2"
    flat = info(dest)
    assert "backing-filename" not in flat and flat["virtual-size"] == 2 * GiB
    subprocess.run(["qemu-img", "check", str(dest)], check=True, capture_output=True,
                   timeout=30)

    # Rebuild on another (raw) image: a fresh overlay with the new backing file.
    other = image(root, "img-b", fmt="raw")
    driver.rebuild(spec(uid, other, ephemeral_gb=2))
    disk = info(paths.root_disk)
    assert disk["backing-filename"] == str(other.path)
    assert disk["backing-filename-format"] == "raw"
    assert driver.images_in_use() == {"img-b"}

    driver.destroy(uid)
    assert not paths.dir.exists() and driver.list_instances() == []


def test_root_smaller_than_image_is_refused(root):
    driver = QemuDriver(root / "inst", accel="tcg")
    uid = str(uuid.uuid4())
    big = image(root, "big", size="2G")
    with pytest.raises(DriverError, match=r"root disk \(1 GiB\) is smaller than image big"):
        driver.rebuild(spec(uid, big))
    assert not driver.paths(uid).root_disk.exists()
    assert [p.name for p in driver.paths(uid).dir.iterdir()] == ["instance.json"]
    # root_gb 0: the image's own size.
    driver.rebuild(spec(uid, big, root_gb=0))
    assert info(driver.paths(uid).root_disk)["virtual-size"] == 2 * GiB


@pytest.mark.parametrize("fmt", ["iso", "aki"])
def test_formats_that_cannot_be_a_root_disk(root, fmt):
    driver = QemuDriver(root / "inst", accel="tcg")
    img = ImageFile("x", root / "x", fmt)
    (root / "x").write_bytes(b"\0" * 4096)
    with pytest.raises(DriverError, match="cannot be a root disk; allowed: ami"):
        driver.rebuild(spec(str(uuid.uuid4()), img))


def test_image_missing_from_the_cache(root):
    driver = QemuDriver(root / "inst", accel="tcg")
    img = ImageFile("gone", root / "gone", "qcow2")
    with pytest.raises(DriverError, match="not in the host's image cache"):
        driver.rebuild(spec(str(uuid.uuid4()), img))


def test_power_on_without_a_root_disk_is_refused(root):
    driver = QemuDriver(root / "inst", accel="tcg")
    uid = str(uuid.uuid4())
    base = image(root, "img")
    driver.rebuild(spec(uid, base))
    driver.paths(uid).root_disk.unlink()
    with pytest.raises(DriverError, match="root disk of instance .* is missing"):
        driver.power_on(spec(uid, base))
