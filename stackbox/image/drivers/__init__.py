"""Image service drivers.

`Store` is the backend API for image data: a staged upload that is hashed as
it is written and becomes an image's data only by `commit`, then read, delete.
`local.LocalStore` keeps it under `<data_dir>/images`. `qemuimg.inspect` is the
one place image bytes are examined (`qemu-img info`, never following backing
files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol


class Staged(Protocol):
    """An upload in progress: bytes written so far, with their digests."""
    path: Path
    size: int

    def write(self, chunk: bytes) -> None: ...
    def md5(self) -> str: ...
    def sha512(self) -> str: ...
    def discard(self) -> None: ...


class Store(Protocol):
    """Where image data lives. This is the backend API."""

    def stage(self, *, check_size: Callable[[int], None] | None = None) -> Staged:
        """A new staged upload; `check_size(total)` runs after every write
        and may raise to stop it."""
        ...

    def commit(self, staged: Staged, image_id: str) -> None:
        """Make the staged bytes the image's data, durably and atomically."""
        ...

    def path(self, image_id: str) -> Path | None:
        """The image's data file, or None if it has none."""
        ...

    def delete(self, image_id: str) -> None: ...
