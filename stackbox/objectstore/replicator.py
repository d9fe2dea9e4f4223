"""The object replicator: brings every primary replica of every object up to
the newest version found on any device, and moves data off handoff devices
once the primaries have it. This restores the replica count after a device
came back, was replaced by an empty directory, or missed writes while it was
away (the PUT then went to a handoff).

A pass walks each device's hash directories; per object it compares the
newest file's timestamp with what each primary holds and copies the file
(data streamed through the disk-file API, same timestamp and metadata) or
the tombstone where it is missing or older. Rate-bounded like the auditor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from stackbox.common.errors import NotFound, ServiceUnavailable, StackboxError
from stackbox.objectstore import diskfile
from stackbox.objectstore.errors import CorruptFile, OlderTimestamp
from stackbox.objectstore.storage import Node, ObjectBackend

log = logging.getLogger("stackbox.objectstore.replicator")
TMP_MAX_AGE = 6 * 3600       # longer than any upload that is still in progress


@dataclass
class ReplicationStats:
    objects: int = 0
    copied: int = 0
    tombstones: int = 0
    handoffs_removed: int = 0
    errors: int = 0


class Replicator:
    def __init__(self, backend: ObjectBackend, *, objects_per_second: int = 200):
        self.backend = backend
        self.objects_per_second = objects_per_second

    def run_pass(self, stop: threading.Event | None = None) -> ReplicationStats:
        stats = ReplicationStats()
        started = time.monotonic()
        for dev in sorted(self.backend.ring.devices.values(), key=lambda d: d.id):
            node = self.backend._node(dev)
            if node.remote:
                continue       # the replicator of that host walks its devices
            root = os.path.join(node.manager.devices_root, node.name, "objects")
            if not os.path.isdir(root):
                continue
            try:
                # uploads a crash (or kill -9) left behind: never visible, now gone
                node.manager.reap_tmp(node.name, older_than=TMP_MAX_AGE)
            except (ServiceUnavailable, OSError):
                pass
            for part in sorted(os.listdir(root)):
                for dirpath, dirs, files in os.walk(os.path.join(root, part)):
                    if dirs or not files:
                        continue
                    if stop is not None and stop.is_set():
                        return stats
                    self._replicate(node, dirpath, stats)
                    wanted = stats.objects / self.objects_per_second
                    elapsed = time.monotonic() - started
                    if wanted > elapsed:
                        time.sleep(wanted - elapsed)
        return stats

    def _replicate(self, node: Node, hashdir: str, stats: ReplicationStats) -> None:
        found = diskfile._on_disk(hashdir)
        if not found:
            return
        path = os.path.join(hashdir, found[0][2])
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            meta, _size = diskfile._read_trailer(fd, path)
        except CorruptFile:
            return                       # the auditor quarantines it
        finally:
            os.close(fd)
        account, _, rest = meta.get("name", "").lstrip("/").partition("/")
        container, _, obj = rest.partition("/")
        if not (account and container and obj):
            return
        stats.objects += 1
        ts = meta["timestamp"]
        part, primaries, _ = self.backend.nodes(account, container, obj)
        in_sync = 0
        for target in primaries:
            if target.device.id == node.device.id:
                in_sync += 1
                continue
            try:
                if self._has(target, part, account, container, obj, ts):
                    in_sync += 1
                    continue
                if meta.get("deleted"):
                    target.manager.delete(target.name, part, account, container, obj, ts)
                    stats.tombstones += 1
                else:
                    self._copy(node, target, part, account, container, obj, meta)
                    stats.copied += 1
                in_sync += 1
            except OlderTimestamp:
                in_sync += 1             # the target has something newer
            except (ServiceUnavailable, OSError, StackboxError) as exc:
                stats.errors += 1
                log.info("replication of /%s/%s/%s to device %s failed: %s", account,
                         container, obj, target.device.id, exc)
        is_primary = any(p.device.id == node.device.id for p in primaries)
        if not is_primary and in_sync == len(primaries):
            for _t, _r, name in diskfile._on_disk(hashdir):
                try:
                    os.unlink(os.path.join(hashdir, name))
                except FileNotFoundError:
                    pass
            stats.handoffs_removed += 1

    @staticmethod
    def _has(target: Node, part, account, container, obj, ts: str) -> bool:
        newest, _deleted = target.manager.newest(target.name, part, account, container, obj)
        return newest is not None and diskfile._ticks(newest) >= diskfile._ticks(ts)

    def _copy(self, source: Node, target: Node, part, account, container, obj,
              meta: dict) -> None:
        try:
            reader = source.manager.open(source.name, part, account, container, obj)
        except NotFound:
            return
        with reader:
            w = target.manager.writer(target.name, part, account, container, obj)
            try:
                for chunk in reader.read_range():
                    w.write(chunk)
                keep = {k: v for k, v in reader.metadata.items()
                        if k not in ("name", "size", "timestamp")}
                w.commit(keep, timestamp=reader.timestamp)
            except BaseException:
                w.abort()
                raise
