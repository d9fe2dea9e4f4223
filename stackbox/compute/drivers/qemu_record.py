"""instance.json: what the driver knows about an instance beyond its
process, so a restarted agent (or `reboot` of a stopped server) can act on
it without the database: the spec it was last started with and the taps it
owns. Versioned JSON with a checksum, written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from stackbox.common.fsutil import atomic_write
from stackbox.compute.drivers.base import ImageFile, InstanceSpec, Nic

log = logging.getLogger(__name__)
FORMAT = 1


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def spec_to_json(spec: InstanceSpec) -> dict:
    def fix(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value
    return fix(asdict(spec))


def _image(doc: dict | None) -> ImageFile | None:
    if not doc:
        return None
    path = doc.get("path")
    return ImageFile(id=doc["id"], path=Path(path) if path else None,
                     disk_format=doc["disk_format"], size=doc.get("size", 0),
                     virtual_size=doc.get("virtual_size"))


def spec_from_json(doc: dict) -> InstanceSpec:
    fields = dict(doc)
    for key in ("image", "kernel", "ramdisk"):
        fields[key] = _image(fields.get(key))
    fields["nics"] = tuple(Nic(**nic) for nic in fields.get("nics", ()))
    if fields.get("config_drive"):
        fields["config_drive"] = Path(fields["config_drive"])
    fields["hw"] = dict(fields.get("hw") or {})
    return InstanceSpec(**fields)


def write(path: Path, spec: InstanceSpec) -> None:
    body = {"uuid": spec.uuid, "spec": spec_to_json(spec),
            "taps": [nic.tap for nic in spec.nics],
            "images": sorted({i.id for i in (spec.image, spec.kernel, spec.ramdisk) if i})}
    doc = {"format": FORMAT, "body": body,
           "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    atomic_write(str(path), json.dumps(doc, sort_keys=True, indent=1).encode())


def read(path: Path) -> dict | None:
    """The record body, or None when missing, unreadable or corrupt."""
    try:
        doc = json.loads(path.read_bytes())
        body = doc["body"]
        if doc.get("format") != FORMAT:
            log.warning("%s: unknown format %r", path, doc.get("format"))
            return None
        if hashlib.sha256(_canonical(body)).hexdigest() != doc.get("sha256"):
            log.warning("%s: checksum mismatch, ignoring the record", path)
            return None
        return body
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable instance record (%s)", path, exc)
        return None


def read_spec(path: Path) -> InstanceSpec | None:
    body = read(path)
    if body is None:
        return None
    try:
        return spec_from_json(body["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: instance record has a bad spec (%s)", path, exc)
        return None
