"""Image resources as Glance v2 returns them, field for field: null for
unset core fields, extra properties as top-level keys, relative links."""

from __future__ import annotations

import datetime as dt


def iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image(img) -> dict:
    out = dict(img.properties or {})
    out.update({
        "id": img.id, "name": img.name, "status": img.status,
        "visibility": img.visibility, "protected": img.protected,
        "os_hidden": img.os_hidden, "owner": img.owner,
        "checksum": img.checksum, "os_hash_algo": img.os_hash_algo,
        "os_hash_value": img.os_hash_value, "size": img.size,
        "virtual_size": img.virtual_size, "disk_format": img.disk_format,
        "container_format": img.container_format, "min_disk": img.min_disk,
        "min_ram": img.min_ram, "tags": list(img.tags or []),
        "created_at": iso(img.created_at), "updated_at": iso(img.updated_at),
        "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
        "schema": "/v2/schemas/image",
    })
    return out


def member(m) -> dict:
    return {"image_id": m.image_id, "member_id": m.member_id, "status": m.status,
            "created_at": iso(m.created_at), "updated_at": iso(m.updated_at),
            "schema": "/v2/schemas/member"}
