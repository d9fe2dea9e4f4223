"""The object-store calls the S3 API makes, with the caller checked first.

The object-store service (`stackbox.objectstore.service`) takes account names
and no caller; the Swift front end authorizes before each call, and so does
this adapter: one account per project (`AUTH_<project_id>`, the Swift API's
account), a bucket is a container, an object is an object, so data written
through one API is read through the other. Every method blocks (database and
disk) and runs in a worker thread, except `put_object_async`.

Values returned are the service's own: ContainerEntry/ContainerInfo for
buckets, ObjectEntry/ObjectInfo (name, size, etag, content_type,
last_modified, meta, headers) for objects, Subdir for common prefixes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import AsyncIterable, Iterable

from stackbox.common.errors import NotFound
from stackbox.common.http.context import RequestContext
from stackbox.objectstore.service import (ContainerEntry, ContainerInfo, Listing, ObjectEntry,
                                          ObjectInfo, ObjectStoreService, OpenObject, Subdir)

__all__ = ["ServiceStore", "ContainerEntry", "ContainerInfo", "ObjectEntry", "ObjectInfo",
           "OpenObject", "Subdir"]


class ServiceStore:
    def __init__(self, svc: ObjectStoreService):
        self.svc = svc

    async def read(self, fn, *args):
        """fn(*args), a read of local files: on the event loop while the page
        cache serves such reads, else in a worker thread (LoopReads)."""
        return await self.svc.loop_reads.run(fn, *args)

    # -- buckets ----------------------------------------------------------------
    def list_buckets(self, ctx: RequestContext, account: str) -> list[ContainerEntry]:
        self.svc.authorize(ctx, account, owner_only=True)
        out: list[ContainerEntry] = []
        marker = ""
        while True:
            page = self.svc.list_containers(account, Listing(marker=marker, limit=10000))
            out += [e for e in page if isinstance(e, ContainerEntry)]
            if len(page) < 10000:
                return out
            marker = page[-1].name

    def create_bucket(self, ctx: RequestContext, account: str, bucket: str) -> bool:
        """True if created, False if the account already had it."""
        self.svc.authorize(ctx, account, bucket, write=True, owner_only=True)
        return self.svc.create_container(account, bucket)

    def head_bucket(self, ctx: RequestContext, account: str, bucket: str) -> ContainerInfo:
        self.svc.authorize(ctx, account, bucket)
        return self.svc.container_info(account, bucket)

    def delete_bucket(self, ctx: RequestContext, account: str, bucket: str) -> None:
        """NotFound, or Conflict while it holds objects."""
        self.svc.authorize(ctx, account, bucket, write=True, owner_only=True)
        self.svc.delete_container(account, bucket)

    def list_objects(self, ctx: RequestContext, account: str, bucket: str, *, prefix: str,
                     delimiter: str | None, marker: str, limit: int
                     ) -> list[ObjectEntry | Subdir]:
        """Names after `marker` in UTF-8 byte order; a marker that is a common
        prefix already returned skips every name under it."""
        self.svc.authorize(ctx, account, bucket, listing=True)
        return self.svc.list_objects(account, bucket, Listing(
            prefix=prefix, delimiter=delimiter or "", marker=marker, limit=limit))

    # -- objects ------------------------------------------------------------------
    def put_object(self, ctx: RequestContext, account: str, bucket: str, key: str,
                   chunks: Iterable[bytes], **kw) -> ObjectInfo:
        """Nothing is visible unless every chunk arrived (an exception from the
        iterator leaves no object). kw: content_type, meta, headers, size."""
        self.svc.authorize(ctx, account, bucket, write=True)
        return self.svc.put_object(account, bucket, key, chunks, **kw)

    async def put_object_async(self, ctx: RequestContext, account: str, bucket: str, key: str,
                               chunks: AsyncIterable[bytes], **kw) -> ObjectInfo:
        await self.svc.authorize_async(ctx, account, bucket, write=True)
        return await self.svc.put_object_async(account, bucket, key, chunks, **kw)

    def head_object(self, ctx: RequestContext, account: str, bucket: str,
                    key: str) -> ObjectInfo:
        self.svc.authorize(ctx, account, bucket)
        return self.svc.head_object(account, bucket, key)

    def open_object(self, ctx: RequestContext, account: str, bucket: str,
                    key: str) -> OpenObject:
        """.info, .iter_range(start, end) with `end` exclusive, .close()."""
        self.svc.authorize(ctx, account, bucket)
        return self.svc.open_object(account, bucket, key)

    def delete_object(self, ctx: RequestContext, account: str, bucket: str,
                      key: str) -> None:
        """NotFound(field="container") for a missing bucket; a missing key is
        not an error in S3."""
        self.svc.authorize(ctx, account, bucket, write=True)
        with _missing_key_is_no_error():
            self.svc.delete_object(account, bucket, key)

    async def delete_object_async(self, ctx: RequestContext, account: str, bucket: str,
                                  key: str) -> None:
        """delete_object for an event loop (the listing row is awaited there)."""
        with _missing_key_is_no_error():
            await self.svc.delete_object_async(account, bucket, key, check=lambda: (
                self.svc.authorize(ctx, account, bucket, write=True)))


@contextmanager
def _missing_key_is_no_error():
    try:
        yield
    except NotFound as exc:
        if exc.field != "object":
            raise
