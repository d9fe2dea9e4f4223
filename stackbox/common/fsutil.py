"""Durable file-system steps (ring, disk files, image store).

A rename is only durable once the directory holding the new name is fsynced,
and a freshly made directory only once its parent is; skipping either can
lose a file that the caller was told is safe after a power cut.
"""

from __future__ import annotations

import os
import tempfile


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """Like os.makedirs(exist_ok=True), but fsyncs the parent of every
    directory it creates so the new entries survive a crash."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        # A concurrent writer made it first; it also fsyncs the parent.
        return
    fsync_dir(parent)


def atomic_write(path: str, data: bytes) -> None:
    """temp file in the same directory -> fsync -> rename -> fsync dir, so a
    reader sees either the old file or the new one, never half of either."""
    directory = os.path.dirname(os.path.abspath(path))
    makedirs_durable(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
