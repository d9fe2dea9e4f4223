"""Request shapes of the image API (Glance v2) and the JSON-schema documents
clients fetch from /v2/schemas/*.

Glance keeps any extra property as a top-level string; core attributes have
types, some are read-only and some reserved."""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any

from stackbox.common.errors import BadRequest, Forbidden
from stackbox.image.drivers.qemuimg import CONTAINER_FORMATS, DISK_FORMATS

VISIBILITIES = ("public", "private", "shared", "community")
STATUSES = ("queued", "saving", "active", "killed", "deleted", "pending_delete",
            "deactivated", "uploading", "importing")
MEMBER_STATUSES = ("pending", "accepted", "rejected")
READ_ONLY = ("checksum", "created_at", "updated_at", "status", "size", "virtual_size",
             "direct_url", "self", "file", "schema", "os_hash_algo", "os_hash_value",
             "stores")
RESERVED = ("deleted", "deleted_at", "location", "locations")
MAX_PROPERTIES = 128
MAX_TAGS = 128
UUID_RE = re.compile(r"^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                     r"-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$")


def _bad(field: str, why: str) -> BadRequest:
    return BadRequest(f"Invalid input for field '{field}': {why}.", field=field)


def _string(field, v, *, nullable=False, max_length=255):
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise _bad(field, f"{v!r} is not of type 'string'")
    if len(v) > max_length:
        raise _bad(field, f"longer than {max_length} characters")
    return v


def _enum(choices):
    def check(field, v):
        if v is None:
            return None
        if v not in choices:
            raise _bad(field, f"{v!r} is not one of {list(choices)}")
        return v
    return check


def _bool(field, v):
    if not isinstance(v, bool):
        raise _bad(field, f"{v!r} is not of type 'boolean'")
    return v


def _count(field, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _bad(field, f"{v!r} is not an integer of 0 or more")
    return v


def _tags(field, v):
    if not isinstance(v, list):
        raise _bad(field, f"{v!r} is not of type 'array'")
    out: list[str] = []
    for t in v:
        _string(field, t)
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise _bad(field, f"more than {MAX_TAGS} tags")
    return out


def _uuid_or_null(field, v):
    if v is None:
        return None
    if not isinstance(v, str) or not UUID_RE.match(v):
        raise _bad(field, f"{v!r} does not match a UUID")
    return v


# core attributes clients may write, and how each is checked
CORE = {
    "name": lambda f, v: _string(f, v, nullable=True),
    "visibility": _enum(VISIBILITIES),
    "protected": _bool, "os_hidden": _bool,
    "disk_format": _enum(DISK_FORMATS), "container_format": _enum(CONTAINER_FORMATS),
    "min_disk": _count, "min_ram": _count,
    "tags": _tags,
    "owner": lambda f, v: _string(f, v, nullable=True),
}
# extra properties Glance's schema gives a shape to
TYPED_PROPERTIES = {"kernel_id": _uuid_or_null, "ramdisk_id": _uuid_or_null}


def check_property(name: str, value: Any) -> Any:
    """One extra property: a string (Glance's additionalProperties)."""
    if not name or len(name) > 255:
        raise _bad(name, "property names are 1 to 255 characters")
    if name in TYPED_PROPERTIES:
        return TYPED_PROPERTIES[name](name, value)
    return _string(name, value, max_length=65535)


def check_attribute(name: str, value: Any) -> Any:
    if name in READ_ONLY:
        raise Forbidden(f"Attribute '{name}' is read-only.")
    if name in RESERVED:
        raise Forbidden(f"Attribute '{name}' is reserved.")
    if name in CORE:
        return CORE[name](name, value)
    return check_property(name, value)


@dataclasses.dataclass
class ImageCreate:
    id: str | None
    core: dict[str, Any]
    properties: dict[str, str]


def image_create(body: Any) -> ImageCreate:
    if not isinstance(body, dict):
        raise BadRequest("Malformed request body: an image is a JSON object.")
    image_id = body.get("id")
    if image_id is not None and (not isinstance(image_id, str) or not UUID_RE.match(image_id)):
        raise _bad("id", f"{image_id!r} does not match a UUID")
    core, props = {}, {}
    for name, value in body.items():
        if name == "id":
            continue
        value = check_attribute(name, value)
        (core if name in CORE else props)[name] = value
    if len(props) > MAX_PROPERTIES:
        raise Forbidden(f"Maximum number of image properties ({MAX_PROPERTIES}) exceeded.")
    return ImageCreate(id=image_id.lower() if image_id else None, core=core, properties=props)


@dataclasses.dataclass(frozen=True)
class PatchOp:
    op: str          # add | replace | remove
    name: str        # top-level attribute or property
    value: Any = None


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def image_patch(body: Any) -> list[PatchOp]:
    """A JSON patch (application/openstack-images-v2.1-json-patch) as Glance
    accepts it: add/replace/remove of one top-level attribute each."""
    if not isinstance(body, list):
        raise BadRequest("Malformed request body: a JSON patch is a JSON array of "
                         "operations.")
    ops = []
    for i, change in enumerate(body):
        if not isinstance(change, dict) or not isinstance(change.get("op"), str):
            raise BadRequest(f"Operation {i} of the patch is not an object with an 'op'.")
        op = change["op"]
        if op not in ("add", "replace", "remove"):
            raise BadRequest(f"Invalid operation: {op!r}; use add, replace or remove.")
        path = change.get("path")
        if not isinstance(path, str) or not path.startswith("/") or path.count("/") != 1:
            raise BadRequest(f"Invalid JSON pointer for this resource: {path!r}; use "
                             f"'/<attribute>'.")
        name = _unescape(path[1:])
        if op == "remove":
            if name in READ_ONLY:
                raise Forbidden(f"Attribute '{name}' is read-only.")
            ops.append(PatchOp(op, name))
            continue
        if "value" not in change:
            raise BadRequest(f"Operation {op} {path} needs a 'value'.")
        ops.append(PatchOp(op, name, change["value"]))
    return ops


def member_create(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("member"), str) \
            or not body["member"]:
        raise _bad("member", "a project id is required")
    extra = set(body) - {"member"}
    if extra:
        raise _bad(sorted(extra)[0], "additional properties are not allowed")
    return body["member"]


def member_update(body: Any) -> str:
    if not isinstance(body, dict) or body.get("status") not in MEMBER_STATUSES:
        got = body.get("status") if isinstance(body, dict) else body
        raise _bad("status", f"{got!r} is not one of {list(MEMBER_STATUSES)}")
    return body["status"]


# -- /v2/schemas/* ---------------------------------------------------------
def _nullable(kind: str, **extra) -> dict:
    return {"type": ["null", kind], **extra}


IMAGE_PROPERTIES = {
    "id": {"type": "string", "description": "An identifier for the image",
           "pattern": UUID_RE.pattern},
    "name": _nullable("string", maxLength=255,
                      description="Descriptive name for the image"),
    "status": {"type": "string", "readOnly": True, "enum": list(STATUSES),
               "description": "Status of the image"},
    "visibility": {"type": "string", "enum": list(VISIBILITIES),
                   "description": "Scope of image accessibility"},
    "protected": {"type": "boolean",
                  "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean",
                  "description": "If true, image will not appear in default image list "
                                 "response."},
    "checksum": _nullable("string", readOnly=True, maxLength=32,
                          description="md5 hash of image contents."),
    "os_hash_algo": _nullable("string", readOnly=True, maxLength=64,
                              description="Algorithm to calculate the os_hash_value"),
    "os_hash_value": _nullable("string", readOnly=True, maxLength=128,
                               description="Hexdigest of the image contents using the "
                                           "algorithm specified by the os_hash_algo"),
    "owner": _nullable("string", maxLength=255,
                       description="Owner of the image"),
    "size": _nullable("integer", readOnly=True,
                      description="Size of image file in bytes"),
    "virtual_size": _nullable("integer", readOnly=True,
                              description="Virtual size of image in bytes"),
    "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS],
                         "description": "Format of the container"},
    "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS],
                    "description": "Format of the disk"},
    "created_at": {"type": "string", "readOnly": True,
                   "description": "Date and time of image registration"},
    "updated_at": {"type": "string", "readOnly": True,
                   "description": "Date and time of the last image modification"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 255},
             "description": "List of strings related to the image"},
    "direct_url": {"type": "string", "readOnly": True,
                   "description": "URL to access the image file kept in external store"},
    "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot "
                                                  "image."},
    "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required "
                                                   "to boot image."},
    "self": {"type": "string", "readOnly": True, "description": "An image self url"},
    "file": {"type": "string", "readOnly": True, "description": "An image file url"},
    "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
    "kernel_id": {"type": ["null", "string"], "pattern": UUID_RE.pattern,
                  "description": "ID of image stored in Glance that should be used as the "
                                 "kernel when booting an AMI-style image.",
                  "is_base": False},
    "ramdisk_id": {"type": ["null", "string"], "pattern": UUID_RE.pattern,
                   "description": "ID of image stored in Glance that should be used as the "
                                  "ramdisk when booting an AMI-style image.",
                   "is_base": False},
    "os_type": {"type": "string", "description": "The operating system installed on the "
                                                 "image (linux, windows).", "is_base": False},
    "os_distro": {"type": "string", "description": "Common name of operating system "
                                                   "distribution", "is_base": False},
    "architecture": {"type": "string", "description": "Operating system architecture",
                     "is_base": False},
}
IMAGE_LINKS = [{"href": "{self}", "rel": "self"}, {"href": "{file}", "rel": "enclosure"},
               {"href": "{schema}", "rel": "describedby"}]


def image_schema() -> dict:
    return {"name": "image", "properties": IMAGE_PROPERTIES,
            "additionalProperties": {"type": "string"}, "links": IMAGE_LINKS}


def images_schema() -> dict:
    return {"name": "images",
            "properties": {"images": {"type": "array", "items": image_schema()},
                           "schema": {"type": "string"}, "first": {"type": "string"},
                           "next": {"type": "string"}},
            "links": [{"href": "{first}", "rel": "first"}, {"href": "{next}", "rel": "next"},
                      {"href": "{schema}", "rel": "describedby"}]}


def member_schema() -> dict:
    return {"name": "member", "properties": {
        "created_at": {"type": "string", "description": "Date and time of image member "
                                                        "creation"},
        "image_id": {"type": "string", "pattern": UUID_RE.pattern,
                     "description": "An identifier for the image"},
        "member_id": {"type": "string", "description": "An identifier for the image member "
                                                       "(tenantId)"},
        "status": {"type": "string", "enum": list(MEMBER_STATUSES),
                   "description": "The status of this image member"},
        "updated_at": {"type": "string", "description": "Date and time of last modification "
                                                        "of image member"},
        "schema": {"type": "string", "readOnly": True}}}


def members_schema() -> dict:
    return {"name": "members",
            "properties": {"members": {"type": "array", "items": member_schema()},
                           "schema": {"type": "string"}},
            "links": [{"href": "{schema}", "rel": "describedby"}]}


def new_image_id() -> str:
    return str(uuid.uuid4())
