"""Config drive content (OpenStack + EC2 layout) and its ISO 9660 image.

Content and image are separate on purpose: `openstack_layout` is a pure
function the metadata service also serves from, so a guest sees the same
documents whether it reads the drive or asks 169.254.169.254.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from stackbox.common import hostops

LABEL = "config-2"
# The OpenStack metadata versions nova publishes, oldest first; `latest`
# is written too. cloud-init 22.x picks the newest one it knows (2018-08-27).
OPENSTACK_VERSIONS = (
    "2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
    "2016-10-06", "2017-02-22", "2018-08-27",
)
LATEST = "latest"
# Files that appeared after 2012-08-10, with the first version having them.
_FIRST_VERSION = {"vendor_data.json": "2013-10-17",
                  "network_data.json": "2015-10-15",
                  "vendor_data2.json": "2016-10-06"}


def dump_json(doc) -> bytes:
    """Deterministic JSON: same document, same bytes (and ISO, and hash)."""
    return json.dumps(doc, sort_keys=True, separators=(", ", ": ")).encode()


def _has(version: str, name: str) -> bool:
    first = _FIRST_VERSION.get(name)
    return first is None or version == LATEST or version >= first


def ec2_meta_data(meta_data: dict, extra: dict | None = None) -> dict:
    """The EC2-style document nova writes to ec2/latest/meta-data.json.

    `extra` holds EC2-only facts that do not belong in meta_data.json
    (local-ipv4, mac, network/…, block-device-mapping, …); its keys win."""
    uuid = meta_data.get("uuid", "")
    hostname = meta_data.get("hostname", "")
    doc = {
        "ami-id": meta_data.get("ami_id", "ami-00000001"),
        "ami-launch-index": meta_data.get("launch_index", 0),
        "ami-manifest-path": "FIXME",
        "hostname": hostname,
        "instance-action": "none",
        "instance-id": meta_data.get("ec2_id", uuid),
        "instance-type": meta_data.get("instance_type", ""),
        "local-hostname": hostname,
        "placement": {"availability-zone": meta_data.get("availability_zone", "")},
        "public-hostname": hostname,
        "reservation-id": meta_data.get("reservation_id", ""),
        "security-groups": meta_data.get("security_groups", []),
    }
    for key in ("local-ipv4", "public-ipv4"):
        if meta_data.get(key.replace("-", "_")):
            doc[key] = meta_data[key.replace("-", "_")]
    keys = meta_data.get("public_keys") or {}
    if keys:
        doc["public-keys"] = {
            str(i): {"openssh-key": key, "_name": f"{i}={name}"}
            for i, (name, key) in enumerate(sorted(keys.items()))}
    doc.update(extra or {})
    return doc


def openstack_layout(meta_data: dict, user_data: bytes | None,
                     network_data: dict | None,
                     vendor_data: dict | None, *,
                     ec2_extra: dict | None = None) -> dict[str, bytes]:
    """Relative path -> bytes of every file on a config drive.

    meta_data needs at least `uuid` (cloud-init requires it). user_data is
    written only when given (nova omits the file, and the metadata service
    answers 404). vendor_data2.json mirrors nova's dynamic vendordata:
    empty unless given.
    """
    if "uuid" not in meta_data:
        raise ValueError("meta_data needs a uuid")
    files: dict[str, bytes] = {}
    docs = {
        "meta_data.json": dump_json(meta_data),
        "network_data.json": dump_json(network_data or {}),
        "vendor_data.json": dump_json(vendor_data or {}),
        "vendor_data2.json": dump_json({}),
    }
    for version in (*OPENSTACK_VERSIONS, LATEST):
        base = f"openstack/{version}"
        for name, body in docs.items():
            if name == "network_data.json" and network_data is None:
                continue
            if _has(version, name):
                files[f"{base}/{name}"] = body
        if user_data is not None:
            files[f"{base}/user_data"] = bytes(user_data)
    files["ec2/latest/meta-data.json"] = dump_json(ec2_meta_data(meta_data, ec2_extra))
    if user_data is not None:
        files["ec2/latest/user-data"] = bytes(user_data)
    return files


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"bad config drive path {name!r}")
    return rel


def build_config_drive(path: Path, files: dict[str, bytes], *,
                       timeout: float = 120) -> Path:
    """Write `files` (relative path -> bytes) as an ISO 9660 image labelled
    config-2 at `path`, with Joliet and Rock Ridge names as nova does (the
    plain ISO level-1 names would mangle `meta_data.json`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".configdrive-", dir=path.parent))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        for name, body in files.items():
            target = staging / _safe_relative(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        tool = shutil.which("genisoimage") or shutil.which("mkisofs")
        if tool is None:
            raise RuntimeError("genisoimage not found (apt-get install genisoimage)")
        # -input-charset utf-8: silences the locale warning and keeps names
        # as given; -quiet: the progress chatter is not useful in logs.
        hostops.run([tool, "-o", str(tmp), "-ldots", "-allow-lowercase",
                     "-allow-multidot", "-l", "-V", LABEL, "-publisher", "stackbox",
                     "-input-charset", "utf-8", "-quiet", "-J", "-r",
                     str(staging)], timeout=timeout)
        tmp.replace(path)
        return path
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
