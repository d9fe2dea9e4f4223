"""A change counter that the processes of one host share, so a cache in one
process learns that another process changed what it caches.

The object store can serve its port from several processes (the stackbox
process and its object-store workers, docs/objectstore.md). Each keeps small
caches (container metadata and ACLs, account quotas, token validations, EC2
credentials). A process that changes any of those bumps the counter; a cache
entry remembers the counter it was filled under and is used only while the
counter still has that value. Reading it is one load from a shared memory
page; bumps are rare (metadata and identity changes, not object PUTs).

`LocalGeneration` is the same counter for one process (unit tests, tools).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

_U64 = struct.Struct("=Q")


class LocalGeneration:
    """The counter for a single process."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def value(self) -> int:
        return self._value

    def bump(self) -> None:
        with self._lock:
            self._value += 1

    def close(self) -> None:
        pass


class SharedGeneration:
    """The counter in an 8-byte file mapped by every process of this host.
    A torn read (a reader racing a bump) only ever looks like a change, which
    costs a cache refill, never a stale answer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _U64.size:
            os.ftruncate(self._fd, _U64.size)
        self._map = mmap.mmap(self._fd, _U64.size)
        self._lock = threading.Lock()

    def value(self) -> int:
        return _U64.unpack_from(self._map)[0]

    def bump(self) -> None:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                _U64.pack_into(self._map, 0, (self.value() + 1) & 0xFFFF_FFFF_FFFF_FFFF)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
