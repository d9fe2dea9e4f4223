"""Per-host cache of image files (root disk backing files, kernels, ramdisks).

`fetch` streams an image into a temp file, checks its size and sha512
(Glance's os_hash_value), and renames it into place, so a cached file is
always whole and verified. Concurrent fetches of one image (threads or
processes) serialise on a per-image flock: the first downloads, the rest
find the file. A small JSON sidecar remembers the hash the file was
verified against, so a changed checksum means a fresh download.

Backing files are referenced by absolute path from instance overlays: the
caller must keep every image in use (QemuDriver.images_in_use()) when it
prunes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from stackbox.common.fsutil import atomic_write, fsync_dir, makedirs_durable
from stackbox.compute.drivers.base import DriverError

log = logging.getLogger(__name__)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX512 = re.compile(r"^[0-9a-f]{128}$")
TEMP_PREFIX = ".part-"
# A temp file untouched this long belongs to a fetch that died.
STALE_TEMP_SECONDS = 3600


class ImageFetchError(DriverError):
    """The image could not be fetched or did not match its checksum."""


class ImageCache:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        makedirs_durable(str(self.dir))

    def path(self, image_id: str) -> Path:
        if not _ID_RE.match(image_id or ""):
            raise ImageFetchError(f"image id {image_id!r} cannot name a cache file")
        return self.dir / image_id

    def _meta(self, image_id: str) -> Path:
        return self.dir / f".{image_id}.json"

    def _lockfile(self, image_id: str) -> Path:
        return self.dir / f".{image_id}.lock"

    @contextmanager
    def _lock(self, image_id: str, *, blocking: bool = True):
        fd = os.open(self._lockfile(image_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def cached(self, image_id: str, os_hash_value: str) -> Path | None:
        """The verified cached file, or None."""
        path = self.path(image_id)
        try:
            meta = json.loads(self._meta(image_id).read_text())
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        if meta.get("os_hash_value") != os_hash_value or meta.get("size") != size:
            return None
        return path

    def fetch(self, image_id: str, *, os_hash_value: str, size: int | None,
              open_stream: Callable[[], Iterable[bytes]]) -> Path:
        """The image's file in the cache, downloading it with `open_stream`
        when missing. Raises ImageFetchError on a size or sha512 mismatch
        (and keeps nothing of the bad download)."""
        path = self.path(image_id)
        expected = (os_hash_value or "").lower()
        if not _HEX512.match(expected):
            raise ImageFetchError(f"image {image_id} has no sha512 os_hash_value to verify")
        with self._lock(image_id):
            hit = self.cached(image_id, expected)
            if hit is not None:
                os.utime(hit)  # recently used: pruning policies may look at it
                return hit
            started = time.monotonic()
            got = self._download(image_id, path, expected, size, open_stream)
            atomic_write(str(self._meta(image_id)), json.dumps(
                {"os_hash_value": expected, "size": got, "fetched_at": time.time()},
                sort_keys=True).encode())
            log.info("image %s cached (%d bytes in %.1f s)", image_id, got,
                     time.monotonic() - started)
            return path

    def _download(self, image_id: str, path: Path, expected: str, size: int | None,
                  open_stream: Callable[[], Iterable[bytes]]) -> int:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.dir)
        digest = hashlib.sha512()
        got = 0
        stream = None
        try:
            with os.fdopen(fd, "wb") as out:
                stream = open_stream()
                for chunk in stream:
                    if not chunk:
                        continue
                    digest.update(chunk)
                    got += len(chunk)
                    if size is not None and got > size:
                        raise ImageFetchError(f"image {image_id} is larger than its "
                                              f"recorded size {size}")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and got != size:
                raise ImageFetchError(f"image {image_id}: got {got} bytes, expected {size}")
            actual = digest.hexdigest()
            if actual != expected:
                raise ImageFetchError(f"image {image_id}: sha512 {actual[:16]}... does not "
                                      f"match os_hash_value {expected[:16]}...")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            fsync_dir(str(self.dir))
            return got
        except ImageFetchError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ImageFetchError(f"no space left in {self.dir} for image "
                                      f"{image_id}") from None
            raise ImageFetchError(f"cannot fetch image {image_id}: {exc}") from None
        except Exception as exc:  # the stream's own errors (HTTP, ...)
            raise ImageFetchError(f"cannot fetch image {image_id}: "
                                  f"{exc or type(exc).__name__}") from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def list(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir()
                      if p.is_file() and _ID_RE.match(p.name))

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every cached image not in `keep` (skipping any being
        fetched right now) and stale temp files. Returns the removed ids."""
        removed = []
        for image_id in self.list():
            if image_id in keep:
                continue
            with self._lock(image_id, blocking=False) as locked:
                if not locked:
                    continue
                self.path(image_id).unlink(missing_ok=True)
                self._meta(image_id).unlink(missing_ok=True)
                self._lockfile(image_id).unlink(missing_ok=True)
                removed.append(image_id)
        now = time.time()
        for tmp in self.dir.glob(f"{TEMP_PREFIX}*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(str(self.dir))
            log.info("image cache: pruned %s", ", ".join(removed))
        return removed
