"""Start-up of the object store: the default ring and the service object."""

from __future__ import annotations

import logging
from pathlib import Path

from stackbox.common.db import Database
from stackbox.common.errors import BadRequest
from stackbox.common import fsutil
from stackbox.objectstore.ring import Ring, RingBuilder
from stackbox.objectstore.service import ObjectStoreService
from stackbox.objectstore.storage import ObjectBackend

log = logging.getLogger("stackbox.objectstore")


def rings_dir(data_dir: Path) -> Path:
    return data_dir / "rings"


def devices_root(data_dir: Path) -> Path:
    return data_dir / "objects"


def ensure_ring(data_dir: Path, *, replicas: int, devices: int, part_power: int) -> Ring:
    """Load `<data_dir>/rings/object.ring.json`, or create the default one:
    `devices` directories d1..dN under `<data_dir>/objects`, one zone each, so
    the replicas of every partition land in different directories. (On one
    disk that protects against a damaged file, not a dead disk; point devices
    at separate mounts with `stackbox ring` for that.)"""
    ring_file = rings_dir(data_dir) / "object.ring.json"
    builder_file = rings_dir(data_dir) / "object.builder.json"
    if ring_file.exists():
        return Ring.load(str(ring_file))
    if devices < replicas:
        raise BadRequest(f"[object_store] devices = {devices} is less than replicas = "
                         f"{replicas}: every replica needs its own device; raise devices or "
                         f"lower replicas", field="object_store.devices")
    builder = RingBuilder(part_power, replicas)
    for i in range(1, devices + 1):
        (devices_root(data_dir) / f"d{i}").mkdir(parents=True, exist_ok=True)
        builder.add_device(i, zone=i, weight=100.0, path=f"d{i}")
    builder.rebalance(seed=0)
    fsutil.makedirs_durable(str(rings_dir(data_dir)))
    if not builder_file.exists():
        builder.save(str(builder_file))
    builder.save(str(ring_file))
    log.info("created the default object ring: %d devices, %d replicas, part power %d",
             devices, replicas, part_power)
    return Ring.load(str(ring_file))


def build_service(db: Database, settings, *, generation=None) -> ObjectStoreService:
    cfg = settings.object_store
    ring = ensure_ring(settings.data_dir, replicas=cfg.replicas, devices=cfg.devices,
                       part_power=cfg.part_power)
    backend = ObjectBackend(ring, str(devices_root(settings.data_dir)),
                            chunk_size=1024 * 1024)
    return ObjectStoreService(db, backend, generation=generation,
                              io_uring=cfg.io_uring)
