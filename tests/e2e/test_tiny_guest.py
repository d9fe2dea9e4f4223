"""Boot the tiny guest with a config drive under QEMU and check its markers."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from stackbox.guest import configdrive
from stackbox.guest.tiny import HOSTKEY_DIR, build_tiny
from tests.e2e.guests import BOOT_TIMEOUT, MARK

pytestmark = pytest.mark.e2e


def _public_key(workdir: Path) -> str:
    if shutil.which("ssh-keygen"):
        key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e@stackbox",
                        "-f", str(key)], check=True, timeout=30)
        return (workdir / "id_ed25519.pub").read_text()
    # Any well-formed line will do for the marker check.
    return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2Er3cUGa4bkGGv8SzKbIqXBCh/UFn0mmI0tg9jZ4cE e2e\n"


def test_tiny_boots_from_config_drive(tiny_image, boot, workdir):
    if shutil.which("genisoimage") is None and shutil.which("mkisofs") is None:
        pytest.skip("genisoimage not installed")
    server_id = str(uuid.uuid4())
    meta = {"uuid": server_id, "name": "tiny-e2e", "hostname": "tiny-e2e.novalocal",
            "public_keys": {"e2e-key": _public_key(workdir)}}
    files = configdrive.openstack_layout(meta, b"#!/bin/sh\necho USERDATA-OK\n", None, None)
    iso = configdrive.build_config_drive(workdir / "cd.iso", files)

    guest = boot(tiny_image, ["-drive", f"file={iso},media=cdrom,if=ide,readonly=on",
                              "-nic", "none"])
    ready = guest.wait_for(f"{MARK} ready", BOOT_TIMEOUT)
    log = guest.log()
    print(f"tiny guest ready {ready:.1f} s after QEMU spawn (TCG)")
    assert f"{MARK} boot" in log
    assert f"{MARK} metadata source=configdrive uuid={server_id}" in log, log
    assert f"{MARK} ssh-key installed name=e2e-key" in log, log
    assert "USERDATA-OK" in log, log
    assert f"{MARK} user-data ran rc=0" in log, log
    assert f"{MARK} sshd started" in log, log
    lines = [ln for ln in log.splitlines() if ln.startswith(MARK)]
    assert lines[-1] == f"{MARK} ready", lines


def test_tiny_boots_without_metadata(tiny_image, boot):
    """No config drive, no NIC: the guest says so and still gets ready."""
    guest = boot(tiny_image, ["-nic", "none"])
    guest.wait_for(f"{MARK} ready", BOOT_TIMEOUT)
    log = guest.log()
    assert f"{MARK} network none" in log
    assert f"{MARK} metadata none" in log
    assert "ssh-key installed" not in log


def test_cached_rebuild_is_fast_and_identical(tiny_image, guest_cache):
    started = time.monotonic()
    again = build_tiny(guest_cache, progress=lambda line: None)
    assert time.monotonic() - started < 15  # only apt-cache lookups
    assert again == tiny_image
    assert hashlib.sha256(again.initramfs.read_bytes()).hexdigest() == \
        tiny_image.initramfs_sha256


def test_fresh_build_is_byte_identical(tiny_image, guest_cache, workdir):
    """A build from scratch (same packages, same host key) gives the same
    initramfs bytes: the archive and gzip are deterministic."""
    fresh = workdir / "cache"
    shutil.copytree(guest_cache / HOSTKEY_DIR, fresh / HOSTKEY_DIR)
    image = build_tiny(fresh, progress=lambda line: None)
    assert image.build_id == tiny_image.build_id
    assert image.initramfs_sha256 == tiny_image.initramfs_sha256
    assert image.kernel_sha256 == tiny_image.kernel_sha256
