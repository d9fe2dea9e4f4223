"""Multipart uploads, kept in the object store itself (as Swift's s3api does).

An upload of `key` into bucket `b` is a marker object `<key>/<upload id>` in
the container `b+segments` (it carries the final object's content type and
metadata) and its parts are `<key>/<upload id>/<part number, 5 digits>`.
Completing writes the parts, in order, into one normal object in `b` — the
Swift API sees an ordinary object, and both APIs report the same ETag, the MD5
of the data (S3 calls a multipart ETag opaque; a real MD5 is one more check
clients such as rclone can use) — then the parts and the marker are deleted.
No HTTP here: api.py turns requests into calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from typing import AsyncIterable, Iterator

from stackbox.common.errors import NotFound
from stackbox.objectstore.s3.errors import S3Error, no_such_upload
from stackbox.objectstore.s3.store import ObjectEntry, ObjectInfo, ServiceStore

SEGMENTS_SUFFIX = "+segments"
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_PART = re.compile(r"^\d{5}$")


def segments(bucket: str) -> str:
    return bucket + SEGMENTS_SUFFIX


def split_marker(name: str) -> tuple[str, str] | None:
    """(key, upload id) if `name` is an upload marker in a segments container."""
    key, _, upload_id = name.rpartition("/")
    if key and _UPLOAD_ID.match(upload_id):
        return key, upload_id
    return None


@dataclasses.dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: dt.datetime


@dataclasses.dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    last_modified: dt.datetime


class Multipart:
    """Multipart operations for one store; every method runs in a worker thread."""

    def __init__(self, store: ServiceStore):
        self.store = store

    # -- helpers ------------------------------------------------------------
    def _marker(self, ctx, account, bucket, key, upload_id) -> ObjectInfo:
        if not _UPLOAD_ID.match(upload_id):
            raise no_such_upload(upload_id)
        try:
            return self.store.head_object(ctx, account, segments(bucket), f"{key}/{upload_id}")
        except NotFound:
            raise no_such_upload(upload_id)

    def _list_all(self, ctx, account, container, prefix) -> Iterator[ObjectEntry]:
        marker = ""
        while True:
            try:
                page = self.store.list_objects(ctx, account, container, prefix=prefix,
                                               delimiter=None, marker=marker, limit=1000)
            except NotFound:
                return
            for entry in page:
                if isinstance(entry, ObjectEntry):
                    yield entry
            if len(page) < 1000:
                return
            marker = page[-1].name

    # -- operations ---------------------------------------------------------
    def create(self, ctx, account: str, bucket: str, key: str, *, content_type: str,
               meta: dict[str, str], headers: dict[str, str]) -> str:
        self.store.head_bucket(ctx, account, bucket)
        self.store.create_bucket(ctx, account, segments(bucket))
        upload_id = uuid.uuid4().hex
        self.store.put_object(ctx, account, segments(bucket), f"{key}/{upload_id}", [b""],
                              content_type=content_type, meta=meta, headers=headers, size=0)
        return upload_id

    def check_part(self, ctx, account: str, bucket: str, key: str, upload_id: str,
                   number: int) -> str:
        """The segment name of part `number`, after checking the upload exists."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                          f"{MAX_PART_NUMBER}, inclusive", 400, ArgumentName="partNumber",
                          ArgumentValue=str(number))
        self._marker(ctx, account, bucket, key, upload_id)
        return f"{key}/{upload_id}/{number:05d}"

    async def put_part(self, ctx, account: str, bucket: str, name: str,
                       chunks: AsyncIterable[bytes], *, size: int | None) -> ObjectInfo:
        return await self.store.put_object_async(
            ctx, account, segments(bucket), name, chunks,
            content_type="application/octet-stream", size=size)

    def copy_part(self, ctx, account: str, bucket: str, name: str,
                  chunks, *, size: int) -> ObjectInfo:
        return self.store.put_object(ctx, account, segments(bucket), name, chunks,
                                     content_type="application/octet-stream", size=size)

    def parts(self, ctx, account: str, bucket: str, key: str, upload_id: str) -> list[Part]:
        self._marker(ctx, account, bucket, key, upload_id)
        out = []
        for info in self._list_all(ctx, account, segments(bucket), f"{key}/{upload_id}/"):
            tail = info.name[len(key) + len(upload_id) + 2:]
            if _PART.match(tail):
                out.append(Part(int(tail), info.etag, info.size, info.last_modified))
        return out

    def uploads(self, ctx, account: str, bucket: str, *, prefix: str) -> list[Upload]:
        self.store.head_bucket(ctx, account, bucket)
        found = []
        for info in self._list_all(ctx, account, segments(bucket), prefix):
            marker = split_marker(info.name)
            if marker:
                found.append(Upload(marker[0], marker[1], info.last_modified))
        return found

    def abort(self, ctx, account: str, bucket: str, key: str, upload_id: str) -> None:
        self._marker(ctx, account, bucket, key, upload_id)
        self._cleanup(ctx, account, bucket, key, upload_id)

    def _cleanup(self, ctx, account, bucket, key, upload_id) -> None:
        for info in list(self._list_all(ctx, account, segments(bucket),
                                        f"{key}/{upload_id}/")):
            self.store.delete_object(ctx, account, segments(bucket), info.name)
        self.store.delete_object(ctx, account, segments(bucket), f"{key}/{upload_id}")

    def complete(self, ctx, account: str, bucket: str, key: str, upload_id: str,
                 requested: list[tuple[int, str]]) -> ObjectInfo:
        marker = self._marker(ctx, account, bucket, key, upload_id)
        have = {p.number: p for p in self.parts(ctx, account, bucket, key, upload_id)}
        numbers = [n for n, _ in requested]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.", 400, UploadId=upload_id)
        chosen = []
        for n, etag in requested:
            part = have.get(n)
            if part is None or part.etag != etag:
                raise S3Error("InvalidPart", "One or more of the specified parts could not "
                              "be found. The part may not have been uploaded, or the specified "
                              "entity tag may not match the part's entity tag.", 400,
                              UploadId=upload_id, PartNumber=str(n), ETag=etag)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the "
                              "minimum allowed object size.", 400, ProposedSize=str(part.size),
                              MinSizeAllowed=str(MIN_PART_SIZE), PartNumber=str(part.number),
                              ETag=part.etag)
        size = sum(p.size for p in chosen)

        def data():
            for part in chosen:
                reader = self.store.open_object(ctx, account, segments(bucket),
                                                f"{key}/{upload_id}/{part.number:05d}")
                try:
                    yield from reader.iter_range(0, part.size)
                finally:
                    reader.close()
        info = self.store.put_object(ctx, account, bucket, key, data(),
                                     content_type=marker.content_type, meta=marker.meta,
                                     headers=marker.headers, size=size)
        self._cleanup(ctx, account, bucket, key, upload_id)
        return info
