"""A deterministic `newc` cpio writer for initramfs images.

Written in Python rather than with `find | cpio` so the archive does not
depend on the host's file order, owners, umask or clock: entries are sorted
by path, owned by root, stamped with one fixed mtime and numbered in order.
The same tree therefore always gives the same bytes (and, gzipped with
mtime=0, the same initramfs), which makes the build cache checkable.
Device nodes are written as archive entries, so no mknod on the host.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
# 2000-01-01: any constant works; 0 makes some tools print 1970 and warn.
FIXED_MTIME = 946684800


@dataclass(frozen=True)
class Entry:
    mode: int  # full st_mode, type bits included
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


class Tree:
    """An in-memory file tree that serialises to a newc archive."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    @staticmethod
    def _norm(path: str) -> str:
        norm = str(PurePosixPath("/", path)).lstrip("/")
        if not norm or ".." in PurePosixPath(norm).parts:
            raise ValueError(f"bad archive path {path!r}")
        return norm

    def _put(self, path: str, entry: Entry) -> None:
        path = self._norm(path)
        self._parents(path)
        old = self.entries.get(path)
        if old is not None and stat.S_ISDIR(old.mode) != stat.S_ISDIR(entry.mode):
            raise ValueError(f"{path} added both as a directory and a file")
        self.entries[path] = entry

    def _parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents[:-1]):
            self.entries.setdefault(str(parent), Entry(stat.S_IFDIR | 0o755))

    def dir(self, path: str, perm: int = 0o755) -> None:
        self._put(path, Entry(stat.S_IFDIR | perm))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._put(path, Entry(stat.S_IFREG | perm, bytes(data)))

    def symlink(self, path: str, target: str) -> None:
        self._put(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._put(path, Entry(stat.S_IFCHR | perm, b"", (major, minor)))

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self.entries

    def cpio(self) -> bytes:
        return newc_archive(self.entries)

    def initramfs(self) -> bytes:
        return gzip_deterministic(self.cpio())


def _header(ino: int, entry: Entry, name: bytes, size: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, FIXED_MTIME, size, 0, 0,
              entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: dict[str, Entry]) -> bytes:
    """Serialise path -> Entry as a newc archive, sorted by path (a parent
    sorts before its children because it is their prefix)."""
    out = bytearray()
    for ino, path in enumerate(sorted(entries), start=1):
        entry = entries[path]
        name = path.encode()
        hdr = _header(ino, entry, name, len(entry.data))
        out += hdr + name + b"\0"
        out += _pad(len(hdr) + len(name) + 1)
        out += entry.data + _pad(len(entry.data))
    name = TRAILER.encode()
    hdr = _header(0, Entry(0), name, 0)
    out += hdr + name + b"\0" + _pad(len(hdr) + len(name) + 1)
    # The kernel reads initramfs in 512-byte blocks; cpio(1) pads likewise.
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def gzip_deterministic(data: bytes, level: int = 9) -> bytes:
    # mtime=0 and no file name in the gzip header: same input, same bytes.
    return gzip.compress(data, compresslevel=level, mtime=0)


def read_newc(data: bytes) -> dict[str, Entry]:
    """Parse a newc archive (for tests and inspection)."""
    entries: dict[str, Entry] = {}
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = (fields[1], fields[6], fields[9],
                                            fields[10], fields[11])
        start = pos + 110
        name = data[start:start + namesize - 1].decode()
        pos = start + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == TRAILER:
            return entries
        entries[name] = Entry(mode, body, (rmaj, rmin))
