"""Image data as one file per image under <data_dir>/images.

Uploads are written to `staging/` on the same filesystem, hashed while
written, and renamed into place only when the service accepts them: a
rejected or interrupted upload leaves nothing behind but its (removed)
temporary file."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable

from stackbox.common.fsutil import fsync_dir


class StagedFile:
    def __init__(self, path: Path, check_size: Callable[[int], None] | None):
        self.path = path
        self.size = 0
        self._check = check_size
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha512 = hashlib.sha512()
        self._file = open(path, "xb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._check is not None:
            self._check(self.size)
        self._file.write(chunk)
        self._md5.update(chunk)
        self._sha512.update(chunk)

    def finish(self) -> None:
        """Flush and fsync; the bytes are on disk before anyone inspects them."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def md5(self) -> str:
        return self._md5.hexdigest()

    def sha512(self) -> str:
        return self._sha512.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        # A crash mid-upload leaves a staging file that no image refers to.
        for leftover in self.staging.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def stage(self, *, check_size: Callable[[int], None] | None = None) -> StagedFile:
        return StagedFile(self.staging / f"{uuid.uuid4().hex}.part", check_size)

    def commit(self, staged: StagedFile, image_id: str) -> None:
        staged.finish()
        os.replace(staged.path, self._data(image_id))
        fsync_dir(self.root)

    def path(self, image_id: str) -> Path | None:
        p = self._data(image_id)
        return p if p.exists() else None

    def delete(self, image_id: str) -> None:
        self._data(image_id).unlink(missing_ok=True)

    def _data(self, image_id: str) -> Path:
        if not image_id or "/" in image_id or image_id.startswith("."):
            raise ValueError(f"bad image id {image_id!r}")
        return self.root / image_id
