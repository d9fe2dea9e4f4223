"""Inspecting uploaded image data before it is accepted.

Two looks, neither of which follows a backing or data file:
1. the magic bytes, read here in Python, say what the file really is; it must
   be what the client declared (raw bytes declared qcow2, or qcow2 bytes
   declared raw, are refused). qemu-img is never asked to probe a format.
2. `qemu-img info -U --output=json -f <declared driver>` (under prlimit, as
   Glance runs it) parses the header, gives virtual_size and reports backing
   and data files, which are refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

from stackbox.common import hostops
from stackbox.image.errors import ImageRejected

# disk_format -> qemu block driver used to read it
QEMU_DRIVER = {"raw": "raw", "ami": "raw", "ari": "raw", "aki": "raw", "iso": "raw",
               "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx", "vdi": "vdi"}
DISK_FORMATS = tuple(QEMU_DRIVER)
CONTAINER_FORMATS = ("bare", "ovf", "aki", "ari", "ami", "ova", "docker", "compressed")

# what the bytes may be for each declared format; "raw" means "no known header"
ACCEPTS = {"raw": {"raw", "iso"}, "ami": {"raw", "iso"}, "ari": {"raw"}, "aki": {"raw"},
           "iso": {"iso"}, "qcow2": {"qcow2"}, "vmdk": {"vmdk"}, "vhd": {"vhd"},
           "vhdx": {"vhdx"}, "vdi": {"vdi"}}
VMDK_SAFE_TYPES = ("monolithicSparse", "streamOptimized")
QCOW2_INCOMPAT_DATA_FILE = 1 << 2

# limits Glance puts on qemu-img when it inspects untrusted data
ADDRESS_SPACE = 1024 ** 3
CPU_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Inspection:
    format: str          # what the bytes are (sniffed)
    virtual_size: int


def sniff(path: Path) -> str:
    """The format the first bytes (and the ISO 9660 descriptor) announce."""
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(0x8001)
        iso = f.read(5)
        f.seek(0, 2)
        end = f.tell()
        footer = b""
        if end >= 512:
            f.seek(end - 512)
            footer = f.read(8)
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:4] == b"KDMV" or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix" or footer == b"conectix":
        return "vhd"
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        return "vdi"
    for magic, name in ((b"QED\x00", "qed"), (b"LUKS\xba\xbe", "luks"),
                        (b"WithoutFreeSpace", "parallels"), (b"WithouFreSpacExt", "parallels")):
        if head.startswith(magic):
            return name
    if iso == b"CD001":
        return "iso"
    return "raw"


def _qcow2_header_refs(path: Path) -> list[str]:
    """Backing or external data file named in a qcow2 header (checked here as
    well as by qemu-img, so no qemu version can be talked into trusting one)."""
    with open(path, "rb") as f:
        header = f.read(104)
    problems = []
    if len(header) < 72:
        return ["a truncated qcow2 header"]
    version, backing_offset = struct.unpack_from(">IQ", header, 4)
    if backing_offset:
        problems.append("a backing file")
    if version >= 3 and len(header) >= 80:
        incompatible = struct.unpack_from(">Q", header, 72)[0]
        if incompatible & QCOW2_INCOMPAT_DATA_FILE:
            problems.append("an external data file")
    return problems


def qemu_img_info(path: Path, driver: str, *, timeout: float) -> dict:
    argv = ["qemu-img", "info", "-U", "--output=json", "-f", driver, str(path)]
    if shutil.which("prlimit"):
        argv = ["prlimit", f"--as={ADDRESS_SPACE}", f"--cpu={CPU_SECONDS}", *argv]
    try:
        out = hostops.run(argv, timeout=timeout).stdout
    except hostops.CommandError as e:
        tail = e.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no detail"]
        raise ImageRejected(f"Image data is not a valid {driver} image: {tail[0]}")
    except hostops.CommandTimeout:
        raise ImageRejected(f"Image data could not be inspected within {timeout:g} s.")
    return json.loads(out)


def inspect(path: Path, disk_format: str, *, timeout: float = 60) -> Inspection:
    """Check that `path` holds a safe image of `disk_format`; raise
    ImageRejected saying why not."""
    if disk_format not in QEMU_DRIVER:
        raise ImageRejected(f"Disk format {disk_format!r} is not supported; use one of "
                            f"{', '.join(DISK_FORMATS)}.")
    actual = sniff(path)
    if actual not in ACCEPTS[disk_format]:
        raise ImageRejected(f"Image data does not match the declared disk_format: declared "
                            f"{disk_format!r} but the data is {actual!r}. Set disk_format to "
                            f"what the file really is.")
    if actual == "qcow2":
        refs = _qcow2_header_refs(path)
        if refs:
            raise ImageRejected(f"qcow2 images that refer to {' and '.join(refs)} are not "
                                f"accepted: the image must be self-contained "
                                f"(qemu-img convert -O qcow2 it first).")
    info = qemu_img_info(path, QEMU_DRIVER[disk_format], timeout=timeout)
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageRejected("qcow2 images with a backing file are not accepted: the image "
                            "must be self-contained (qemu-img convert -O qcow2 it first).")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageRejected("qcow2 images with an external data file are not accepted.")
    if actual == "vmdk" and specific.get("create-type") not in VMDK_SAFE_TYPES:
        raise ImageRejected(f"VMDK create-type {specific.get('create-type')!r} is not "
                            f"accepted; use one of {', '.join(VMDK_SAFE_TYPES)}.")
    virtual_size = int(info.get("virtual-size") or 0)
    if QEMU_DRIVER[disk_format] == "raw":
        # qemu rounds raw sizes up to a sector; Glance reports the bytes
        virtual_size = path.stat().st_size
    return Inspection(format=actual, virtual_size=virtual_size)
