"""S3 object operations: Put/Get/Head/Delete, DeleteObjects, CopyObject and
the multipart upload calls. Each handler parses headers, makes its store calls
in one worker thread where it can (small objects cost one thread hop), and
renders headers or XML."""

from __future__ import annotations

import datetime as dt
import re
import sys
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, unquote

from starlette.concurrency import run_in_threadpool as call
from starlette.responses import Response

from stackbox.common import errors
from stackbox.objectstore.errors import Quarantined
from stackbox.objectstore.s3 import xml
from stackbox.objectstore.s3.body import Payload
from stackbox.objectstore.s3.errors import S3Error, invalid_argument, no_such_key
from stackbox.objectstore.s3.multipart import MAX_PART_NUMBER, Multipart
from stackbox.objectstore.s3.store import ObjectInfo, ServiceStore
from stackbox.objectstore.streams import body_response

SMALL = 1024 * 1024            # GET bodies up to this are read in the same worker call
MAX_META = 2048                # S3's limit on user metadata, names plus values
STORED_HEADERS = ("content-encoding", "content-disposition", "content-language",
                  "cache-control", "expires")
RESPONSE_OVERRIDES = {"response-content-type": "Content-Type",
                      "response-content-language": "Content-Language",
                      "response-expires": "Expires",
                      "response-cache-control": "Cache-Control",
                      "response-content-disposition": "Content-Disposition",
                      "response-content-encoding": "Content-Encoding"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def account_of(ctx) -> str:
    return f"AUTH_{ctx.project_id}"


def xml_response(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def http_date(when: dt.datetime) -> str:
    return formatdate(when.timestamp(), usegmt=True)


def _http_date_value(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _etags(value: str) -> list[str]:
    return [t.strip().strip('"') for t in value.split(",")]


def check_conditions(info: ObjectInfo, headers, *, prefix: str = "if-",
                     copy: bool = False) -> int | None:
    """RFC 7232 order: 412 for If-Match/If-Unmodified-Since, then 304 (GET/HEAD;
    412 for a copy source) for If-None-Match/If-Modified-Since."""
    etag = info.etag
    modified = info.last_modified.replace(microsecond=0)
    if_match, if_none = headers.get(prefix + "match"), headers.get(prefix + "none-match")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    else:
        since = _http_date_value(headers.get(prefix + "unmodified-since"))
        if since is not None and modified > since:
            return 412
    if if_none is not None:
        tags = _etags(if_none)
        if "*" in tags or etag in tags:
            return 412 if copy else 304
    else:
        since = _http_date_value(headers.get(prefix + "modified-since"))
        if since is not None and modified <= since:
            return 412 if copy else 304
    return None


def byte_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive, None for the whole object; an unparsable or
    multi-range header is ignored, as S3 does."""
    if not value:
        return None
    m = _RANGE.match(value.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0:
            start = size
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    if start >= size or start > end:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416,
                      RangeRequested=value, ActualObjectSize=str(size))
    return start, end


def user_meta(headers) -> dict[str, str]:
    meta = {k[len("x-amz-meta-"):]: v for k, v in headers.items()
            if k.startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_META:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed "
                      "metadata size.", 400, MaxSizeAllowed=str(MAX_META))
    return meta


def stored_headers(headers) -> dict[str, str]:
    out = {h: headers[h] for h in STORED_HEADERS if h in headers}
    if "content-encoding" in out:
        # aws-chunked is transfer framing, not a property of the object
        rest = [e.strip() for e in out["content-encoding"].split(",")
                if e.strip() and e.strip() != "aws-chunked"]
        if rest:
            out["content-encoding"] = ",".join(rest)
        else:
            del out["content-encoding"]
    return out


def object_headers(info: ObjectInfo, query=None) -> dict[str, str]:
    headers = {"ETag": f'"{info.etag}"', "Last-Modified": http_date(info.last_modified),
               "Content-Type": info.content_type or "binary/octet-stream",
               "Accept-Ranges": "bytes"}
    for name, value in info.headers.items():
        if name in STORED_HEADERS:
            headers[name.title()] = value
    for name, value in info.meta.items():
        headers[f"x-amz-meta-{name}"] = value
    for param, header in (RESPONSE_OVERRIDES.items() if query else ()):
        if param in query:
            headers[header] = query[param]
    return headers


def decode_copy_source(value: str) -> tuple[str, str]:
    source = unquote(value.split("?versionId=", 1)[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise invalid_argument("Copy Source must mention the source bucket and key: "
                               "sourcebucket/sourcekey", "x-amz-copy-source", value)
    return bucket, key


def _part_number(value: str | None) -> int:
    if value is None or not value.isdigit() or not 1 <= int(value) <= MAX_PART_NUMBER:
        raise invalid_argument(f"Part number must be an integer between 1 and "
                               f"{MAX_PART_NUMBER}, inclusive", "partNumber", value or "")
    return int(value)


class ObjectHandlers:
    def __init__(self, store: ServiceStore, multipart: Multipart, not_found):
        self.store = store
        self.multipart = multipart
        self.not_found = not_found   # async (ctx, bucket, key) -> S3Error

    # -- single objects ---------------------------------------------------------
    async def put_object(self, request, ctx, verified, bucket, key):
        h = request.headers
        if "x-amz-copy-source" in h:
            return await self.copy_object(request, ctx, verified, bucket, key)
        payload = Payload(h, verified)
        try:
            info = await self.store.put_object_async(
                ctx, account_of(ctx), bucket, key, payload.chunks(request.stream()),
                content_type=h.get("content-type") or "binary/octet-stream",
                meta=user_meta(h), headers=stored_headers(h), size=payload.size)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        return Response(status_code=200, headers={"ETag": f'"{info.etag}"'})

    def _get(self, ctx, bucket, key, request_headers, head: bool):
        """One step (LoopReads): open, check conditions and range, read a small body.
        A replica found corrupt while being read is quarantined by the store;
        the next open reads another replica."""
        for _attempt in range(3):
            try:
                return self._get_once(ctx, bucket, key, request_headers, head)
            except Quarantined:
                continue
        return self._get_once(ctx, bucket, key, request_headers, head)

    def _get_once(self, ctx, bucket, key, request_headers, head: bool):
        account = account_of(ctx)
        if head:
            info, reader = self.store.head_object(ctx, account, bucket, key), None
        else:
            reader = self.store.open_object(ctx, account, bucket, key)
            info = reader.info
        status = data = None
        try:
            status = check_conditions(info, request_headers)
            if status is not None:
                return info, status, None, None, None
            span = byte_range(request_headers.get("range"), info.size)
            start, end = span if span else (0, info.size - 1)
            data = None
            if reader is not None and end - start + 1 <= SMALL:
                data = b"".join(reader.iter_range(start, end + 1)) if end >= start else b""
            return info, 206 if span else 200, span, data, reader
        finally:
            if reader is not None and (data is not None or status is not None
                                       or sys.exc_info()[0] is not None):
                reader.close()

    async def get_object(self, request, ctx, verified, bucket, key):
        head = request.method == "HEAD"
        try:
            info, status, span, data, reader = await self.store.read(
                self._get, ctx, bucket, key, request.headers, head)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, key)
        if status in (304, 412):
            if status == 412:
                raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                              "specified did not hold", 412, Condition="If-Match")
            return Response(status_code=304, headers={"ETag": f'"{info.etag}"',
                                                      "Last-Modified":
                                                      http_date(info.last_modified)})
        headers = object_headers(info, request.query_params)
        start, end = span if span else (0, info.size - 1)
        headers["Content-Length"] = str(max(0, end - start + 1))
        if span:
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        if head or data is not None:
            return Response(b"" if head else data, status_code=status, headers=headers)

        return body_response(reader.file_span(start, end + 1), reader.iter_range(start, end + 1),
                             close=reader.close, status_code=status, headers=headers)

    async def delete_object(self, request, ctx, verified, bucket, key):
        try:
            await self.store.delete_object_async(ctx, account_of(ctx), bucket, key)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        return Response(status_code=204)

    async def delete_objects(self, request, ctx, verified, bucket, key):
        body = await Payload(request.headers, verified).read_all(request.stream(),
                                                                 xml.MAX_BODY)
        quiet, keys = xml.parse_delete(body)

        def delete_all():
            account = account_of(ctx)
            self.store.head_bucket(ctx, account, bucket)
            deleted, failed = [], []
            for k in keys:
                try:
                    if len(k.encode()) > 1024:
                        raise S3Error("KeyTooLongError", "Your key is too long", 400)
                    self.store.delete_object(ctx, account, bucket, k)
                    deleted.append(k)
                except S3Error as e:
                    failed.append((k, e))
                except errors.Forbidden as e:
                    failed.append((k, S3Error("AccessDenied", e.message, 403)))
            return deleted, failed
        try:
            deleted, failed = await call(delete_all)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        return xml_response(xml.delete_result(deleted, failed, quiet=quiet))

    # -- copies -----------------------------------------------------------------
    def _copy(self, ctx, src_bucket, src_key, headers, put, *, span_header=None):
        """Streams the source (or a byte range of it) into put(src_info, chunks, size)."""
        try:
            reader = self.store.open_object(ctx, account_of(ctx), src_bucket, src_key)
        except errors.NotFound:
            raise no_such_key(src_key)
        try:
            if check_conditions(reader.info, headers, prefix="x-amz-copy-source-if-",
                                copy=True):
                raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                              "specified did not hold", 412,
                              Condition="x-amz-copy-source-If-Match")
            size = reader.info.size
            start, end = 0, size
            if span_header is not None:
                m = _RANGE.match(span_header.strip())
                if not m or not m.group(1) or not m.group(2) or \
                        int(m.group(2)) < int(m.group(1)) or int(m.group(2)) >= size:
                    raise S3Error("InvalidRange", "The requested range is not satisfiable",
                                  416, RangeRequested=span_header, ActualObjectSize=str(size))
                start, end = int(m.group(1)), int(m.group(2)) + 1
            return put(reader.info, reader.iter_range(start, end), end - start)
        finally:
            reader.close()

    async def copy_object(self, request, ctx, verified, bucket, key):
        h = request.headers
        src_bucket, src_key = decode_copy_source(h["x-amz-copy-source"])
        directive = h.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown metadata directive.", "x-amz-metadata-directive",
                                   directive)
        if (src_bucket, src_key) == (bucket, key) and directive == "COPY":
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying "
                          "to copy an object to itself without changing the object's metadata, "
                          "storage class, website redirect location or encryption attributes.",
                          400)
        await Payload(h, verified).read_all(request.stream(), 0)
        new_meta, new_headers = user_meta(h), stored_headers(h)

        def put(src: ObjectInfo, chunks, size: int):
            if directive == "COPY":
                meta, ctype, headers = src.meta, src.content_type, src.headers
            else:
                meta, headers = new_meta, new_headers
                ctype = h.get("content-type") or "binary/octet-stream"
            headers = {k: v for k, v in headers.items() if k in STORED_HEADERS}
            return self.store.put_object(ctx, account_of(ctx), bucket, key, chunks,
                                         content_type=ctype, meta=meta, headers=headers,
                                         size=size)
        try:
            info = await call(self._copy, ctx, src_bucket, src_key, h, put)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        return xml_response(xml.copy_result("CopyObjectResult", info.etag,
                                            info.last_modified))

    # -- multipart ------------------------------------------------------------------
    async def create_multipart_upload(self, request, ctx, verified, bucket, key):
        h = request.headers
        meta, headers = user_meta(h), stored_headers(h)
        try:
            upload_id = await call(self.multipart.create, ctx, account_of(ctx), bucket, key,
                                   content_type=h.get("content-type") or "binary/octet-stream",
                                   meta=meta, headers=headers)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        return xml_response(xml.initiate_upload(bucket, key, upload_id))

    async def upload_part(self, request, ctx, verified, bucket, key):
        q = request.query_params
        number, upload_id = _part_number(q.get("partNumber")), q["uploadId"]
        account = account_of(ctx)
        name = await call(self.multipart.check_part, ctx, account, bucket, key, upload_id,
                          number)
        if "x-amz-copy-source" in request.headers:
            src_bucket, src_key = decode_copy_source(request.headers["x-amz-copy-source"])
            await Payload(request.headers, verified).read_all(request.stream(), 0)
            info = await call(self._copy, ctx, src_bucket, src_key, request.headers,
                              lambda src, chunks, size: self.multipart.copy_part(
                                  ctx, account, bucket, name, chunks, size=size),
                              span_header=request.headers.get("x-amz-copy-source-range"))
            return xml_response(xml.copy_result("CopyPartResult", info.etag,
                                                info.last_modified))
        payload = Payload(request.headers, verified)
        info = await self.multipart.put_part(ctx, account, bucket, name,
                                             payload.chunks(request.stream()),
                                             size=payload.size)
        return Response(status_code=200, headers={"ETag": f'"{info.etag}"'})

    async def list_parts(self, request, ctx, verified, bucket, key):
        q = request.query_params
        upload_id = q["uploadId"]
        marker = q.get("part-number-marker", "0")
        max_parts = q.get("max-parts", "1000")
        if not marker.isdigit() or not max_parts.isdigit():
            raise invalid_argument("part-number-marker and max-parts must be integers",
                                   "max-parts", max_parts)
        marker_n, max_n = int(marker), min(int(max_parts), 1000)
        parts = await call(self.multipart.parts, ctx, account_of(ctx), bucket, key, upload_id)
        after = [p for p in parts if p.number > marker_n]
        page, truncated = after[:max_n], len(after) > max_n
        body = xml.list_parts(
            bucket=bucket, key=key, upload_id=upload_id,
            owner=(ctx.project_id, ctx.project_name or ""), marker=marker_n,
            next_marker=page[-1].number if page else None, max_parts=max_n,
            truncated=truncated,
            parts=[{"number": p.number, "last_modified": p.last_modified, "etag": p.etag,
                    "size": p.size} for p in page])
        return xml_response(body)

    async def complete_multipart_upload(self, request, ctx, verified, bucket, key):
        body = await Payload(request.headers, verified).read_all(request.stream(),
                                                                 xml.MAX_BODY)
        requested = xml.parse_complete(body)
        info = await call(self.multipart.complete, ctx, account_of(ctx), bucket, key,
                          request.query_params["uploadId"], requested)
        location = f"{request.url.scheme}://{request.headers.get('host', '')}/{bucket}/{key}"
        return xml_response(xml.complete_upload(location, bucket, key, info.etag))

    async def abort_multipart_upload(self, request, ctx, verified, bucket, key):
        await call(self.multipart.abort, ctx, account_of(ctx), bucket, key,
                   request.query_params["uploadId"])
        return Response(status_code=204)

    async def list_multipart_uploads(self, request, ctx, verified, bucket, key):
        q = request.query_params
        prefix = q.get("prefix", "")
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise invalid_argument("Invalid Encoding Method specified in Request",
                                   "encoding-type", encoding)
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = q.get("max-uploads", "1000")
        if not max_uploads.isdigit():
            raise invalid_argument("max-uploads must be an integer", "max-uploads",
                                   max_uploads)
        limit = min(int(max_uploads), 1000)
        try:
            uploads = await call(self.multipart.uploads, ctx, account_of(ctx), bucket,
                                 prefix=prefix)
        except errors.NotFound:
            raise await self.not_found(ctx, bucket, None)
        uploads.sort(key=lambda u: (u.key.encode(), u.initiated, u.upload_id))
        if key_marker:
            uploads = [u for u in uploads if u.key > key_marker or (
                u.key == key_marker and id_marker and u.upload_id > id_marker)]
        page, truncated = uploads[:limit], len(uploads) > limit
        encode = (lambda s: quote(s, safe="/")) if encoding else (lambda s: s)
        body = xml.list_uploads(
            bucket=bucket, owner=(ctx.project_id, ctx.project_name or ""),
            key_marker=key_marker, upload_id_marker=id_marker,
            next_key_marker=page[-1].key if truncated else None,
            next_upload_id_marker=page[-1].upload_id if truncated else None,
            max_uploads=limit, truncated=truncated, prefix=prefix,
            delimiter=q.get("delimiter"),
            uploads=[{"key": u.key, "upload_id": u.upload_id, "initiated": u.initiated}
                     for u in page], common_prefixes=[], encode=encode,
            encoding_type=encoding)
        return xml_response(body)
