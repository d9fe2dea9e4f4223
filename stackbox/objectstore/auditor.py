"""The object auditor: re-reads every object file at a bounded rate, checks
footer, metadata checksum, name-to-directory hash and the data's md5, and
quarantines files that fail, so a GET never has to find rot first. It runs
as a background thread of the server (or `stackbox agent` later), one pass
after another."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from stackbox.common.errors import NotFound, ServiceUnavailable
from stackbox.objectstore.storage import ObjectBackend

log = logging.getLogger("stackbox.objectstore.auditor")


@dataclass
class AuditStats:
    files: int = 0
    bytes: int = 0
    quarantined: int = 0
    errors: int = 0


class Auditor:
    def __init__(self, backend: ObjectBackend, *, bytes_per_second: int,
                 files_per_second: int = 50):
        self.backend = backend
        self.bytes_per_second = bytes_per_second
        self.files_per_second = files_per_second

    def run_pass(self, stop: threading.Event | None = None) -> AuditStats:
        """One pass over every device in the ring; returns what it did."""
        stats = AuditStats()
        started = time.monotonic()
        for dev in sorted(self.backend.ring.devices.values(), key=lambda d: d.id):
            node = self.backend._node(dev)
            try:
                files = node.manager.iter_data_files(node.name)
                for _part, path in files:
                    if stop is not None and stop.is_set():
                        return stats
                    self._audit_one(node, path, stats)
                    self._throttle(stats, started, stop)
            except ServiceUnavailable:
                continue            # device missing: nothing to audit there
        if stats.quarantined:
            log.warning("audit pass: %d files, %d quarantined", stats.files, stats.quarantined)
        return stats

    def _audit_one(self, node, path: str, stats: AuditStats) -> None:
        try:
            size = os.path.getsize(path)
            good = node.manager.audit(path)
        except (NotFound, FileNotFoundError):
            return                  # replaced or deleted meanwhile
        except OSError as exc:
            stats.errors += 1
            log.warning("audit of %s failed: %s", path, exc)
            return
        stats.files += 1
        stats.bytes += size
        if not good:
            try:
                where = node.manager._quarantine_file(path)
                stats.quarantined += 1
                log.warning("quarantined corrupt object file %s -> %s", path, where)
            except FileNotFoundError:
                pass

    def _throttle(self, stats: AuditStats, started: float, stop) -> None:
        elapsed = time.monotonic() - started
        wanted = max(stats.bytes / self.bytes_per_second if self.bytes_per_second else 0,
                     stats.files / self.files_per_second if self.files_per_second else 0)
        if wanted > elapsed:
            if stop is not None:
                stop.wait(wanted - elapsed)
            else:
                time.sleep(wanted - elapsed)
