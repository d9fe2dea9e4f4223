"""S3 XML: responses rendered with ElementTree, request bodies parsed safely.

Request bodies are parsed with expat directly so a DOCTYPE or an entity
declaration is refused before anything is expanded (no billion laughs, no
external entities); namespaces are dropped, as S3 accepts bodies with and
without its namespace."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Iterable
from xml.parsers import expat

from stackbox.objectstore.s3.errors import S3Error, malformed_xml

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_BODY = 2 * 1024 * 1024        # DeleteObjects with 1000 long keys fits
MAX_DELETE_KEYS = 1000
MAX_PART_NUMBER = 10000


class _Refused(Exception):
    pass


def _refuse(*_args) -> None:
    raise _Refused()


def parse(body: bytes) -> ET.Element:
    """The element tree of a request body (tags without namespaces), or
    MalformedXML. DOCTYPEs and entity declarations are refused."""
    if len(body) > MAX_BODY:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda name, attrs: builder.start(name.rpartition("}")[2], {})
    parser.EndElementHandler = lambda name: builder.end(name.rpartition("}")[2])
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
        return builder.close()
    except (_Refused, expat.ExpatError, AssertionError, IndexError):
        raise malformed_xml()


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    return None if child is None else (child.text or "")


def parse_delete(body: bytes) -> tuple[bool, list[str]]:
    """DeleteObjects: (quiet, keys)."""
    root = parse(body)
    if root.tag != "Delete":
        raise malformed_xml()
    quiet = (_text(root, "Quiet") or "").strip().lower() == "true"
    keys = []
    for obj in root.findall("Object"):
        key = _text(obj, "Key")
        if key is None:
            raise malformed_xml()
        keys.append(key)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise malformed_xml()
    return quiet, keys


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload: [(part number, etag without quotes)] as sent."""
    root = parse(body)
    if root.tag != "CompleteMultipartUpload":
        raise malformed_xml()
    parts = []
    for part in root.findall("Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None:
            raise malformed_xml()
        try:
            n = int(number.strip())
        except ValueError:
            raise malformed_xml()
        parts.append((n, etag.strip().strip('"')))
    if not parts:
        raise malformed_xml()
    return parts


def parse_location(body: bytes) -> str | None:
    """CreateBucketConfiguration's LocationConstraint (None for an empty body)."""
    if not body.strip():
        return None
    root = parse(body)
    if root.tag != "CreateBucketConfiguration":
        raise malformed_xml()
    value = _text(root, "LocationConstraint")
    return value.strip() if value else None


# -- rendering ----------------------------------------------------------------

def timestamp(when: dt.datetime) -> str:
    """ISO 8601 with milliseconds, as S3 lists LastModified."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.microsecond // 1000:03d}Z"


def _sub(parent: ET.Element, tag: str, text=None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _doc(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def error(err: S3Error, *, resource: str, request_id: str) -> bytes:
    root = ET.Element("Error")
    _sub(root, "Code", err.code)
    _sub(root, "Message", err.message)
    for name, value in err.extra.items():
        _sub(root, name, value)
    _sub(root, "Resource", resource)
    _sub(root, "RequestId", request_id)
    return _doc(root)


def _owner(parent: ET.Element, owner_id: str, name: str, tag: str = "Owner") -> None:
    owner = _sub(parent, tag)
    _sub(owner, "ID", owner_id)
    _sub(owner, "DisplayName", name)


def list_buckets(owner_id: str, owner_name: str,
                 buckets: Iterable[tuple[str, dt.datetime]]) -> bytes:
    root = _root("ListAllMyBucketsResult")
    _owner(root, owner_id, owner_name)
    holder = _sub(root, "Buckets")
    for name, created in buckets:
        b = _sub(holder, "Bucket")
        _sub(b, "Name", name)
        _sub(b, "CreationDate", timestamp(created))
    return _doc(root)


def location(region: str) -> bytes:
    root = _root("LocationConstraint")
    # us-east-1 is the empty constraint in S3, and clients expect it so
    root.text = "" if region == "us-east-1" else region
    return _doc(root)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def list_objects(*, bucket: str, prefix: str, delimiter: str | None, max_keys: int,
                 truncated: bool, contents: list[dict], common_prefixes: list[str],
                 encode, v2: bool, marker: str = "", next_marker: str | None = None,
                 continuation_token: str | None = None, next_token: str | None = None,
                 start_after: str | None = None, encoding_type: str | None = None,
                 fetch_owner: bool = True, owner: tuple[str, str] = ("", "")) -> bytes:
    """ListObjects (V1) and ListObjectsV2. `contents` items: key, last_modified,
    etag, size; `encode` applies encoding-type=url to key-like fields."""
    root = _root("ListBucketResult")
    _sub(root, "Name", bucket)
    _sub(root, "Prefix", encode(prefix))
    if v2:
        if start_after is not None:
            _sub(root, "StartAfter", encode(start_after))
        if continuation_token is not None:
            _sub(root, "ContinuationToken", continuation_token)
        if next_token is not None:
            _sub(root, "NextContinuationToken", next_token)
        _sub(root, "KeyCount", len(contents) + len(common_prefixes))
    else:
        _sub(root, "Marker", encode(marker))
        if next_marker is not None:
            _sub(root, "NextMarker", encode(next_marker))
    _sub(root, "MaxKeys", max_keys)
    if delimiter is not None:
        _sub(root, "Delimiter", encode(delimiter))
    if encoding_type:
        _sub(root, "EncodingType", encoding_type)
    _sub(root, "IsTruncated", _bool(truncated))
    for item in contents:
        c = _sub(root, "Contents")
        _sub(c, "Key", encode(item["key"]))
        _sub(c, "LastModified", timestamp(item["last_modified"]))
        _sub(c, "ETag", f'"{item["etag"]}"')
        _sub(c, "Size", item["size"])
        if fetch_owner:
            _owner(c, *owner)
        _sub(c, "StorageClass", "STANDARD")
    for p in common_prefixes:
        _sub(_sub(root, "CommonPrefixes"), "Prefix", encode(p))
    return _doc(root)


def copy_result(tag: str, etag: str, last_modified: dt.datetime) -> bytes:
    root = _root(tag)
    _sub(root, "LastModified", timestamp(last_modified))
    _sub(root, "ETag", f'"{etag}"')
    return _doc(root)


def initiate_upload(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "UploadId", upload_id)
    return _doc(root)


def complete_upload(location_url: str, bucket: str, key: str, etag: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _sub(root, "Location", location_url)
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "ETag", f'"{etag}"')
    return _doc(root)


def list_parts(*, bucket: str, key: str, upload_id: str, owner: tuple[str, str],
               marker: int, next_marker: int | None, max_parts: int, truncated: bool,
               parts: list[dict]) -> bytes:
    root = _root("ListPartsResult")
    _sub(root, "Bucket", bucket)
    _sub(root, "Key", key)
    _sub(root, "UploadId", upload_id)
    _owner(root, *owner, tag="Initiator")
    _owner(root, *owner)
    _sub(root, "StorageClass", "STANDARD")
    _sub(root, "PartNumberMarker", marker)
    if next_marker is not None:
        _sub(root, "NextPartNumberMarker", next_marker)
    _sub(root, "MaxParts", max_parts)
    _sub(root, "IsTruncated", _bool(truncated))
    for p in parts:
        el = _sub(root, "Part")
        _sub(el, "PartNumber", p["number"])
        _sub(el, "LastModified", timestamp(p["last_modified"]))
        _sub(el, "ETag", f'"{p["etag"]}"')
        _sub(el, "Size", p["size"])
    return _doc(root)


def list_uploads(*, bucket: str, owner: tuple[str, str], key_marker: str,
                 upload_id_marker: str, next_key_marker: str | None,
                 next_upload_id_marker: str | None, max_uploads: int, truncated: bool,
                 prefix: str, delimiter: str | None, uploads: list[dict],
                 common_prefixes: list[str], encode, encoding_type: str | None) -> bytes:
    root = _root("ListMultipartUploadsResult")
    _sub(root, "Bucket", bucket)
    _sub(root, "KeyMarker", encode(key_marker))
    _sub(root, "UploadIdMarker", upload_id_marker)
    if next_key_marker is not None:
        _sub(root, "NextKeyMarker", encode(next_key_marker))
        _sub(root, "NextUploadIdMarker", next_upload_id_marker or "")
    if encoding_type:
        _sub(root, "EncodingType", encoding_type)
    _sub(root, "Prefix", encode(prefix))
    if delimiter is not None:
        _sub(root, "Delimiter", encode(delimiter))
    _sub(root, "MaxUploads", max_uploads)
    _sub(root, "IsTruncated", _bool(truncated))
    for u in uploads:
        el = _sub(root, "Upload")
        _sub(el, "Key", encode(u["key"]))
        _sub(el, "UploadId", u["upload_id"])
        _owner(el, *owner, tag="Initiator")
        _owner(el, *owner)
        _sub(el, "StorageClass", "STANDARD")
        _sub(el, "Initiated", timestamp(u["initiated"]))
    for p in common_prefixes:
        _sub(_sub(root, "CommonPrefixes"), "Prefix", encode(p))
    return _doc(root)


def delete_result(deleted: list[str], failed: list[tuple[str, S3Error]], *,
                  quiet: bool) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for key in deleted:
            _sub(_sub(root, "Deleted"), "Key", key)
    for key, err in failed:
        el = _sub(root, "Error")
        _sub(el, "Key", key)
        _sub(el, "Code", err.code)
        _sub(el, "Message", err.message)
    return _doc(root)
