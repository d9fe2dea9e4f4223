"""Kernel module dependencies without kmod on the host.

A kernel .deb ships no modules.dep (depmod runs at postinst, which we never
run) and the host may have no `modinfo`, so read the `depends=` entry from
each module's ELF `.modinfo` section ourselves and order the modules so that
every module is loaded after the ones it needs (busybox insmod does not
resolve dependencies)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path


def modinfo(data: bytes) -> dict[str, str]:
    """key=value pairs of a (not compressed) ELF64 little-endian .ko."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info: dict[str, str] = {}
            for entry in data[off:off + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)  # first wins (alias repeats)
            return info
    return {}


def index_modules(moddir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores, as the kernel does) -> .ko path.
    Debian after bookworm ships .ko.xz; read_module unpacks those."""
    found = {}
    for suffix in (".ko.xz", ".ko"):
        for p in sorted(moddir.rglob(f"*{suffix}")):
            found[p.name[:-len(suffix)].replace("-", "_")] = p
    return found


def read_module(path: Path) -> bytes:
    """Plain ELF bytes of a module: busybox insmod may lack xz support."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def load_order(wanted: list[str], modules: dict[str, Path],
               builtin: set[str] = frozenset()) -> list[str]:
    """`wanted` plus their dependencies, dependencies first, otherwise in the
    order given. Built-in modules are skipped; missing ones raise KeyError."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin:
            return
        if name in visiting:
            raise ValueError(f"module dependency cycle at {name}")
        if name not in modules:
            raise KeyError(f"kernel module {name} not found")
        visiting.add(name)
        depends = modinfo(read_module(modules[name])).get("depends", "")
        for dep in filter(None, depends.split(",")):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def builtin_names(modules_builtin: Path) -> set[str]:
    """Names listed in lib/modules/<ver>/modules.builtin."""
    try:
        lines = modules_builtin.read_text().split()
    except OSError:
        return set()
    return {Path(line).name.removesuffix(".ko").replace("-", "_")
            for line in lines}
