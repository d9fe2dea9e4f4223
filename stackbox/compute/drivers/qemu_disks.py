"""Disk files of an instance, made with qemu-img (and mkfs for ephemeral
and swap, as nova formats them so cloud-init can mount `ephemeral0`).

Every failure becomes a DriverError carrying the tool's own stderr line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stackbox.common import hostops
from stackbox.compute.drivers.base import DriverError, ImageFile

GiB = 1024 ** 3
MiB = 1024 ** 2
# Glance disk_format -> qemu-img format of a backing file.
BACKING_FORMATS = {"qcow2": "qcow2", "raw": "raw", "ami": "raw", "vmdk": "vmdk",
                   "vdi": "vdi", "vhd": "vpc", "vhdx": "vhdx"}


def _tool_error(what: str, exc: Exception) -> DriverError:
    if isinstance(exc, hostops.CommandError):
        lines = [ln.strip() for ln in exc.stderr.decode(errors="replace").splitlines()
                 if ln.strip()]
        return DriverError(f"{what}: {lines[-1] if lines else exc}",
                           details="\n".join(lines))
    return DriverError(f"{what}: {exc}")


def _run(argv: list[str], what: str, timeout: float) -> bytes:
    try:
        return hostops.run(argv, timeout=timeout).stdout
    except (hostops.CommandError, hostops.CommandTimeout, OSError) as exc:
        raise _tool_error(what, exc) from None


def virtual_size(path: Path, *, timeout: float = 60) -> int:
    # -U: the file may be open read-write by a running QEMU.
    out = _run(["qemu-img", "info", "-U", "--output=json", str(path)],
               f"cannot inspect {path.name}", timeout)
    return int(json.loads(out)["virtual-size"])


def backing_format(image: ImageFile) -> str:
    fmt = BACKING_FORMATS.get(image.disk_format)
    if fmt is None:
        raise DriverError(f"image {image.id} has disk_format {image.disk_format!r}, which "
                          f"cannot be a root disk; allowed: {', '.join(sorted(BACKING_FORMATS))}")
    return fmt


def create_root(dest: Path, image: ImageFile | None, root_gb: int, *,
                timeout: float = 120) -> None:
    """A qcow2 overlay on the cached image (or a blank qcow2), at least
    root_gb large. The temp name keeps a half-made disk from being reused."""
    tmp = dest.with_name(f".{dest.name}.new")
    tmp.unlink(missing_ok=True)
    try:
        if image is None:
            _run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), f"{root_gb}G"],
                 "cannot create the root disk", timeout)
        else:
            if image.path is None or not Path(image.path).is_file():
                raise DriverError(f"image {image.id} is not in the host's image cache "
                                  f"({image.path})")
            fmt = backing_format(image)
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
                  "-b", str(Path(image.path).resolve()), str(tmp)],
                 "cannot create the root disk overlay", timeout)
            size = virtual_size(tmp, timeout=timeout)
            wanted = root_gb * GiB
            if wanted and wanted < size:
                raise DriverError(f"the flavor's root disk ({root_gb} GiB) is smaller "
                                  f"than image {image.id} ({size / GiB:.2f} GiB virtual)")
            if wanted > size:
                grow(tmp, wanted, timeout=timeout)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def grow(path: Path, size: int, *, timeout: float = 120) -> bool:
    """Grow a qcow2 disk to `size` bytes; never shrinks. True if grown."""
    if size <= virtual_size(path, timeout=timeout):
        return False
    _run(["qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(size)],
         f"cannot grow {path.name}", timeout)
    return True


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def create_ephemeral(dest: Path, size_gb: int, *, timeout: float = 120) -> None:
    """A sparse raw disk with an ext4 file system labelled ephemeral0."""
    tmp = dest.with_name(f".{dest.name}.new")
    try:
        _sparse(tmp, size_gb * GiB)
        if shutil.which("mkfs.ext4"):
            _run(["mkfs.ext4", "-q", "-F", "-L", "ephemeral0", str(tmp)],
                 "cannot format the ephemeral disk", timeout)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def create_swap(dest: Path, size_mb: int, *, timeout: float = 60) -> None:
    tmp = dest.with_name(f".{dest.name}.new")
    try:
        _sparse(tmp, size_mb * MiB)
        if shutil.which("mkswap"):
            _run(["mkswap", "-L", "swap0", str(tmp)], "cannot format the swap disk",
                 timeout)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def flatten(src: Path, dest: Path, *, timeout: float) -> None:
    """qemu-img convert the disk and its backing chain into one qcow2."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        _run(["qemu-img", "convert", "-U", "-O", "qcow2", str(src), str(tmp)],
             "cannot write the snapshot", timeout)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
