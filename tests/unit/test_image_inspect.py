"""Upload inspection with the real qemu-img: declared format against the bytes,
backing and data files refused, virtual size reported."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from stackbox.image.drivers.local import LocalStore
from stackbox.image.drivers.qemuimg import inspect, sniff
from stackbox.image.errors import ImageRejected

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def images(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(1000))
    qcow2 = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow2), "10M")
    over = tmp_path / "over.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(qcow2), "-F", "qcow2", str(over))
    datafile = tmp_path / "df.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'x.raw'}",
             str(datafile), "1M")
    iso = tmp_path / "cd.iso"
    with open(iso, "wb") as f:
        f.seek(0x8001)
        f.write(b"CD001" + b"\0" * 2043)
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(vmdk), "1M")
    flat = tmp_path / "flat.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat), "1M")
    return {"raw": raw, "qcow2": qcow2, "over": over, "datafile": datafile, "iso": iso,
            "vmdk": vmdk, "flat": flat}


def test_sniff(images):
    assert {k: sniff(p) for k, p in images.items()} == {
        "raw": "raw", "qcow2": "qcow2", "over": "qcow2", "datafile": "qcow2", "iso": "iso",
        "vmdk": "vmdk", "flat": "vmdk"}


def test_accepted(images):
    assert inspect(images["qcow2"], "qcow2").virtual_size == 10 * 1024 * 1024
    assert inspect(images["raw"], "raw").virtual_size == 1000
    assert inspect(images["raw"], "aki").format == "raw"
    assert inspect(images["iso"], "iso").format == "iso"
    assert inspect(images["iso"], "raw").format == "iso"
    assert inspect(images["vmdk"], "vmdk").virtual_size == 1024 * 1024


@pytest.mark.parametrize("name,declared,why", [
    ("qcow2", "raw", "declared 'raw' but the data is 'qcow2'"),
    ("qcow2", "iso", "declared 'iso' but the data is 'qcow2'"),
    ("raw", "qcow2", "declared 'qcow2' but the data is 'raw'"),
    ("raw", "iso", "declared 'iso' but the data is 'raw'"),
    ("over", "qcow2", "a backing file"),
    ("datafile", "qcow2", "an external data file"),
    ("flat", "vmdk", "monolithicFlat"),
    ("raw", "floppy", "not supported"),
])
def test_refused(images, name, declared, why):
    with pytest.raises(ImageRejected) as err:
        inspect(images[name], declared)
    assert why in str(err.value)


def test_local_store_stages_and_commits(tmp_path):
    store = LocalStore(tmp_path / "images")
    seen = []
    staged = store.stage(check_size=seen.append)
    staged.write(b"abc")
    staged.write(b"def")
    assert seen == [3, 6] and staged.size == 6
    assert staged.md5() == "e80b5017098950fc58aad83c8c14978e"
    store.commit(staged, "img1")
    assert store.path("img1").read_bytes() == b"abcdef"
    assert list(store.staging.iterdir()) == []
    dropped = store.stage()
    dropped.write(b"x")
    dropped.discard()
    assert list(store.staging.iterdir()) == [] and store.path("img2") is None
    store.delete("img1")
    assert store.path("img1") is None
    with pytest.raises(ValueError):
        store.path("../etc")
