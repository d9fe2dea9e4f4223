"""Swift v1 API: HTTP in, one service call, HTTP out.

Paths: /v1/<account>[/<container>[/<object>]], /info, /healthcheck, and / (a
version document, so `stackbox up` and `status` can see the service). Tokens
are optional here: a request without one may still be allowed by a container
ACL (.r:*) or a temp URL; the service's `authorize` decides and answers 401
or 403. Bodies stream in both directions; small objects are read and written
in a single worker-thread hop.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
import uuid
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool as call
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from stackbox.common.errors import BadRequest, Forbidden, NotFound, StackboxError
from stackbox.common.http.app import build_service_app
from stackbox.common.http.errors import TITLES, Dialect, message_for
from stackbox.common.http.middleware import context_of
from stackbox.common.errors import QuotaExceeded
from stackbox.objectstore import acl, tempurl
from stackbox.objectstore import httpbits as hb
from stackbox.objectstore import service as S
from stackbox.objectstore.errors import (EntityTooLarge, InsufficientStorage, PreconditionFailed,
                                         Quarantined, Unprocessable)
from stackbox.objectstore.loopreads import must_not_block
from stackbox.objectstore.service import Listing, ObjectStoreService
from stackbox.objectstore.streams import body_response, read_ahead

SMALL = 256 * 1024              # objects up to this size are sent in one piece
SWIFT_VERSION = "2.30.0"        # the API level /info claims (Debian 12's Swift)
MAX_BULK_DELETES = 10000


class LengthRequired(BadRequest):
    """A PUT without Content-Length and not chunked: 411."""


class NotImplementedYet(BadRequest):
    """A method or mode Swift has and stackbox does not: 501."""


class SwiftDialect(Dialect):
    """Swift answers errors as a short HTML page (swob), and clients show
    the text; the status codes are Swift's own for quota, ETag and disk."""

    STATUS_OVERRIDES = {EntityTooLarge: 413, Unprocessable: 422, PreconditionFailed: 412,
                        InsufficientStorage: 507, QuotaExceeded: 413, LengthRequired: 411,
                        NotImplementedYet: 501, hb.RangeNotSatisfiable: 416}

    def body(self, status, message, exc):
        return {}

    def render(self, exc: Exception, *, accept: str = "") -> Response:
        status = self.status(exc)
        title = {411: "Length Required", 412: "Precondition Failed", 422: "Unprocessable Entity",
                 501: "Not Implemented", 507: "Insufficient Storage"}.get(
            status, TITLES.get(status, "Error"))
        message = message_for(exc, status) if not isinstance(exc, hb.RangeNotSatisfiable) \
            else "The Range requested is not available."
        page = f"<html><h1>{title}</h1><p>{_html(message)}</p></html>"
        headers = self.headers_for(exc, status)
        if status == 401:
            headers["WWW-Authenticate"] = "Swift realm=\"unknown\""
        return Response(page, status_code=status, media_type="text/html; charset=UTF-8",
                        headers=headers)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Gatekeeper:
    """Strips internal headers at the edge (Swift's gatekeeper): X-Backend-*
    and sysmeta may only be set by stackbox itself, never by a client, and
    are never shown to one."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def _internal(name: bytes) -> bool:
        n = name.lower()
        return n.startswith(b"x-backend-") or n.startswith(b"x-object-sysmeta-") or \
            n.startswith(b"x-container-sysmeta-") or n.startswith(b"x-account-sysmeta-")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"]
                                         if not self._internal(k)])

            async def clean_send(message):
                if message["type"] == "http.response.start":
                    message["headers"] = [(k, v) for k, v in message.get("headers", [])
                                          if not self._internal(k)]
                await send(message)
            return await self.app(scope, receive, clean_send)
        return await self.app(scope, receive, send)


def _split(path: str) -> tuple[str, str | None, str | None]:
    """/v1/a/c/o -> (a, c, o). An object name keeps its slashes."""
    rest = path[len("/v1/"):]
    account, _, rest = rest.partition("/")
    container, _, obj = rest.partition("/")
    return account, (container or None), (obj or None) if container else None


def _check_path_chars(*names):
    for n in names:
        if n is not None and ("\x00" in n or "\ufffd" in n):
            raise PreconditionFailed("Invalid UTF8 or contains NULL", field="path")


def _listing(q) -> Listing:
    raw = q.get("limit")
    limit = S.CONTAINER_LISTING_LIMIT
    if raw not in (None, ""):
        try:
            limit = int(raw)
        except ValueError:
            raise PreconditionFailed(f"limit={raw!r} is not an integer", field="limit") from None
        if limit < 0 or limit > S.CONTAINER_LISTING_LIMIT:
            raise PreconditionFailed(f"Maximum limit is {S.CONTAINER_LISTING_LIMIT}",
                                     field="limit")
    reverse = (q.get("reverse") or "").lower() in ("1", "true", "yes", "on", "t", "y")
    for name in ("prefix", "delimiter", "marker", "end_marker"):
        if "\x00" in (q.get(name) or ""):
            raise PreconditionFailed(f"{name} contains NULL", field=name)
    return Listing(prefix=q.get("prefix") or "", delimiter=q.get("delimiter") or "",
                   marker=q.get("marker") or "", end_marker=q.get("end_marker") or "",
                   limit=limit, reverse=reverse)


def _ts_headers(ts: str) -> dict:
    return {"X-Timestamp": ts, "X-PUT-Timestamp": ts}


def _owner_view(info: S.ContainerInfo) -> dict:
    h = {}
    if info.read_acl:
        h["X-Container-Read"] = ",".join(info.read_acl)
    if info.write_acl:
        h["X-Container-Write"] = ",".join(info.write_acl)
    for key, header in (("versions_location", "X-Versions-Location"),
                        ("history_location", "X-History-Location")):
        if info.sysmeta.get(key):
            h[header] = info.sysmeta[key]
    return h


def _container_sysmeta(headers) -> dict:
    """ACLs, versioning and quotas from container PUT/POST headers."""
    sm: dict = {}
    for header, key in (("x-container-read", "read_acl"), ("x-container-write", "write_acl")):
        if header in headers:
            sm[key] = acl.parse(headers[header], header=header.title()) or None
        if f"x-remove-{header[2:]}" in headers:
            sm[key] = None
    if "x-versions-location" in headers and "x-history-location" in headers:
        raise BadRequest("Only one of X-Versions-Location or X-History-Location may be set",
                         field="x-versions-location")
    for header, key in (("x-versions-location", "versions_location"),
                        ("x-history-location", "history_location")):
        if header in headers:
            value = unquote(headers[header]).strip("/")
            if value:
                S.check_container(value)
            sm[key] = value or None
            other = "history_location" if key == "versions_location" else "versions_location"
            sm[other] = None
        if f"x-remove-{header[2:]}" in headers:
            sm[key] = None
    for name in ("quota-bytes", "quota-count"):
        h = f"x-container-meta-{name}"
        if h in headers:
            sm[name.replace("-", "_")] = hb.int_header(headers, h) if headers[h] else None
        if f"x-remove-container-meta-{name}" in headers:
            sm[name.replace("-", "_")] = None
    return sm


class SwiftApi:
    def __init__(self, svc: ObjectStoreService):
        self.svc = svc

    # -- entry ---------------------------------------------------------------
    async def dispatch(self, request):
        path = request.scope["path"]     # decoded (request.url.path escapes ?, # and backslash)
        if path in ("/", ""):
            return self._versions(request)
        if path == "/info":
            return self._info(request)
        if path == "/healthcheck":
            return Response("OK", media_type="text/plain")
        if not path.startswith("/v1/"):
            raise NotFound("The resource could not be found.")
        account, container, obj = _split(path)
        _check_path_chars(account, container, obj)
        if not account:
            raise PreconditionFailed("Invalid path: no account", field="path")
        method = request.method
        if obj is not None:
            handler = {"GET": self.get_object, "HEAD": self.get_object,
                       "PUT": self.put_object, "POST": self.post_object,
                       "DELETE": self.delete_object, "COPY": self.copy_object}.get(method)
            args = (account, container, obj)
        elif container is not None:
            handler = {"GET": self.get_container, "HEAD": self.get_container,
                       "PUT": self.put_container, "POST": self.post_container,
                       "DELETE": self.delete_container}.get(method)
            args = (account, container)
        else:
            handler = {"GET": self.get_account, "HEAD": self.get_account,
                       "POST": self.post_account, "DELETE": self.bulk_delete}.get(method)
            args = (account,)
        if handler is None:
            return Response(status_code=405, headers={"Allow": "GET, HEAD, PUT, POST, DELETE"})
        return await handler(request, *args)

    def _versions(self, request):
        base = str(request.base_url).rstrip("/")
        return Response(json.dumps({"versions": [{"id": "v1.0", "status": "CURRENT",
                                                  "links": [{"rel": "self",
                                                             "href": f"{base}/v1/"}]}]}),
                        media_type="application/json")

    def _info(self, request):
        info = {
            "swift": {"version": SWIFT_VERSION, "max_file_size": S.MAX_FILE_SIZE,
                      "max_meta_name_length": S.MAX_META_NAME_LENGTH,
                      "max_meta_value_length": S.MAX_META_VALUE_LENGTH,
                      "max_meta_count": S.MAX_META_COUNT,
                      "max_meta_overall_size": S.MAX_META_OVERALL_SIZE,
                      "max_header_size": 8192, "max_object_name_length":
                          S.MAX_OBJECT_NAME_LENGTH,
                      "max_container_name_length": S.MAX_CONTAINER_NAME_LENGTH,
                      "max_account_name_length": S.MAX_ACCOUNT_NAME_LENGTH,
                      "container_listing_limit": S.CONTAINER_LISTING_LIMIT,
                      "account_listing_limit": S.ACCOUNT_LISTING_LIMIT,
                      "extra_header_count": 0, "valid_api_versions": ["v1", "v1.0"],
                      "strict_cors_mode": True,
                      "policies": [{"name": "default", "default": True}]},
            "slo": {"max_manifest_segments": S.MAX_MANIFEST_SEGMENTS,
                    "max_manifest_size": S.MAX_MANIFEST_SIZE,
                    "min_segment_size": S.MIN_SEGMENT_SIZE, "yield_frequency": 10},
            "dlo": {"max_segments": 10000},
            "bulk_delete": {"max_deletes_per_request": MAX_BULK_DELETES,
                            "max_failed_deletes": 1000},
            "tempurl": {"methods": list(tempurl.METHODS),
                        "allowed_digests": sorted(tempurl.DIGESTS),
                        "incoming_remove_headers": ["x-timestamp"],
                        "incoming_allow_headers": [], "outgoing_remove_headers":
                            ["x-object-meta-*"], "outgoing_allow_headers":
                            ["x-object-meta-public-*"]},
            "container_quotas": {},
            "account_quotas": {},
            "versioned_writes": {"allowed_flags": ["x-versions-location",
                                                   "x-history-location"]},
        }
        return Response(json.dumps(info), media_type="application/json; charset=utf-8")

    # -- auth ------------------------------------------------------------------
    async def _authorize(self, request, account, container=None, *, write=False,
                         listing=False, owner_only=False, obj=None) -> bool:
        ctx = context_of(request)
        q = request.query_params
        if obj is not None and "temp_url_sig" in q and not ctx.authenticated:
            await call(self._check_tempurl, request, account, container, obj)
            return True
        caller = ctx if ctx.authenticated else None
        return await self.svc.authorize_async(caller, account, container, write=write,
                                              listing=listing,
                                              referrer=request.headers.get("referer"),
                                              owner_only=owner_only)

    def _check_tempurl(self, request, account, container, obj):
        q = request.query_params
        keys = []
        try:
            a = self.svc.account_info(account)
            keys += [a.meta[k] for k in ("temp-url-key", "temp-url-key-2") if k in a.meta]
            c = self.svc.container_info(account, container)
            keys += [c.meta[k] for k in ("temp-url-key", "temp-url-key-2") if k in c.meta]
        except NotFound:
            pass
        tempurl.verify(method=request.method, path=request.scope["path"],
                       sig=q.get("temp_url_sig", ""), expires_raw=q.get("temp_url_expires"),
                       keys=keys, prefix=q.get("temp_url_prefix"))

    # -- account ---------------------------------------------------------------
    async def get_account(self, request, account):
        await self._authorize(request, account, owner_only=True)
        info = await call(self.svc.account_info, account)
        headers = {"X-Account-Container-Count": str(info.container_count),
                   "X-Account-Object-Count": str(info.object_count),
                   "X-Account-Bytes-Used": str(info.bytes_used),
                   **_ts_headers(info.timestamp), **hb.meta_headers(info.meta, "account")}
        if request.method == "HEAD":
            return Response(status_code=204, headers=headers)
        fmt = hb.listing_format(request.query_params, request.headers.get("accept", ""))
        entries = await call(self.svc.list_containers, account, _listing(request.query_params))
        return self._listing_response(hb.render_containers(entries, fmt, account), fmt,
                                      headers)

    @staticmethod
    def _listing_response(body: bytes, fmt: str, headers: dict) -> Response:
        if fmt == "plain" and not body:
            return Response(status_code=204, headers=headers)
        return Response(body, status_code=200, headers=headers,
                        media_type=hb.CONTENT_TYPES[fmt])

    async def post_account(self, request, account):
        if "bulk-delete" in request.query_params:
            return await self.bulk_delete(request, account)
        await self._authorize(request, account, owner_only=True)
        meta = hb.meta_from_headers(request.headers, "account")
        sysmeta = {}
        if "quota-bytes" in meta:
            if not self.svc.is_reseller(context_of(request)):
                raise Forbidden("Only a reseller admin (ResellerAdmin role) may set "
                                "X-Account-Meta-Quota-Bytes")
            sysmeta["quota_bytes"] = hb.int_header(
                request.headers, "x-account-meta-quota-bytes") if meta["quota-bytes"] else None
        await call(self.svc.post_account, account, meta=meta, sysmeta=sysmeta)
        return Response(status_code=204)

    async def bulk_delete(self, request, account):
        if "bulk-delete" not in request.query_params:
            return Response(status_code=405, headers={"Allow": "GET, HEAD, POST"})
        await self._authorize(request, account, owner_only=True)
        raw = await request.body()
        if len(raw) > MAX_BULK_DELETES * 2048:
            raise EntityTooLarge("bulk delete body is too large", field="body")
        paths = [unquote(p.strip()) for p in raw.decode("utf-8", "replace").splitlines()
                 if p.strip()]
        if len(paths) > MAX_BULK_DELETES:
            raise EntityTooLarge(f"more than {MAX_BULK_DELETES} deletes in one request",
                                 field="body")
        result = await call(self._bulk_delete_sync, account, paths)
        accept = request.headers.get("accept", "")
        if "json" in accept:
            return Response(json.dumps(result), media_type="application/json")
        text = "".join(f"{k}: {v}\n" for k, v in result.items() if k != "Errors")
        text += "Errors:\n" + "".join(f"{p}, {s}\n" for p, s in result["Errors"])
        return Response(text, media_type="text/plain")

    def _bulk_delete_sync(self, account: str, paths: list[str]) -> dict:
        deleted, missing, errors = 0, 0, []
        for path in paths:
            container, _, obj = path.lstrip("/").partition("/")
            try:
                if obj:
                    self.svc.delete_object(account, container, obj)
                else:
                    self.svc.delete_container(account, container)
                deleted += 1
            except NotFound:
                missing += 1
            except StackboxError as exc:
                status = SwiftDialect().status(exc)
                errors.append([path, f"{status} {TITLES.get(status, 'Error')}"])
        status = "400 Bad Request" if errors else "200 OK"
        return {"Number Deleted": deleted, "Number Not Found": missing,
                "Response Body": "", "Response Status": status, "Errors": errors}

    # -- container ---------------------------------------------------------------
    async def put_container(self, request, account, container):
        await self._authorize(request, account, owner_only=True)
        meta = hb.meta_from_headers(request.headers, "container")
        sysmeta = _container_sysmeta(request.headers)
        created = await call(self.svc.create_container, account, container, meta=meta,
                             sysmeta=sysmeta)
        return Response(status_code=201 if created else 202)

    async def post_container(self, request, account, container):
        await self._authorize(request, account, owner_only=True)
        meta = hb.meta_from_headers(request.headers, "container")
        await call(self.svc.post_container, account, container, meta=meta,
                   sysmeta=_container_sysmeta(request.headers))
        return Response(status_code=204)

    async def delete_container(self, request, account, container):
        await self._authorize(request, account, owner_only=True)
        await call(self.svc.delete_container, account, container)
        return Response(status_code=204)

    async def get_container(self, request, account, container):
        owner = await self._authorize(request, account, container, listing=True)
        info = await call(self.svc.container_info, account, container, cached=False)
        headers = {"X-Container-Object-Count": str(info.object_count),
                   "X-Container-Bytes-Used": str(info.bytes_used),
                   "X-Storage-Policy": "default", "Accept-Ranges": "bytes",
                   **_ts_headers(info.timestamp), **hb.meta_headers(info.meta, "container")}
        if owner:
            headers.update(_owner_view(info))
        if request.method == "HEAD":
            return Response(status_code=204, headers=headers)
        fmt = hb.listing_format(request.query_params, request.headers.get("accept", ""))
        entries = await call(self.svc.list_objects, account, container,
                             _listing(request.query_params))
        return self._listing_response(hb.render_objects(entries, fmt, container), fmt,
                                      headers)

    # -- object: reads -------------------------------------------------------------
    async def get_object(self, request, account, container, obj):
        await self._authorize(request, account, container, obj=obj)
        return await self.svc.loop_reads.run(self._plan_get, request, account, container, obj)

    def _plan_get(self, request, account, container, obj):
        """Open, check conditions and ranges, and for small objects read the
        bytes, all in one step: on the event loop while the page cache serves
        it, else in one worker thread (LoopReads). Returns the Response."""
        q = request.query_params
        manifest = q.get("multipart-manifest") == "get"
        # A replica that fails its checksum while a small object is read is
        # quarantined; the next open finds another replica.
        for _attempt in range(self.svc.backend.replicas):
            o = self.svc.open_object(account, container, obj, manifest=manifest)
            try:
                return self._respond(request, o, account, manifest)
            except Quarantined:
                o.close()
            except BaseException:
                o.close()
                raise
        return self._respond(request, self.svc.open_object(account, container, obj,
                                                           manifest=manifest),
                             account, manifest)

    def _respond(self, request, o: S.OpenObject, account: str, manifest: bool):
        info = o.info
        headers = self._object_headers(info)
        size, etag, pieces = o.size, info.etag, None
        dlo = info.headers.get("x-object-manifest")
        if dlo and not manifest:
            must_not_block()                # the segments are a container listing
            entries, seg_container, etag = self.svc.dlo_segments(account, unquote(dlo))
            size = sum(e.size for e in entries)
            pieces = [(seg_container, e.name, e.size) for e in entries]
            headers["Etag"] = f'"{etag}"'
        elif info.slo and manifest:
            etag = o.body_etag
            headers["Etag"] = etag
            headers["Content-Type"] = "application/json; charset=utf-8"
        method = request.method
        if not hb.check_conditions(request.headers, etag=etag, last_modified=info.last_modified,
                                   method=method):
            o.close()
            return Response(status_code=304, headers={k: v for k, v in headers.items()
                                                      if k in ("Etag", "Last-Modified",
                                                               "X-Timestamp")})
        if "temp_url_sig" in request.query_params and method == "GET":
            name = request.query_params.get("filename") or os.path.basename(info.name)
            kind = "inline" if "inline" in request.query_params else "attachment"
            headers["Content-Disposition"] = f'{kind}; filename="{name}"'
        ranges = None
        if request.headers.get("range") and not (manifest and info.slo):
            try:
                ranges = hb.parse_ranges(request.headers.get("range"), size)
            except hb.RangeNotSatisfiable:
                o.close()
                raise HTTPException(416, "The Range requested is not available.",
                                    headers={"Content-Range": f"bytes */{size}"}) from None
        if method == "HEAD":
            o.close()
            headers["Content-Length"] = str(size)
            return Response(status_code=200, headers=headers)

        def iterate(start, end):
            if pieces is None:
                return o.iter_range(start, end)
            return self.svc.iter_concat(account, _slice(pieces, start, end))

        if ranges is None:
            status, length, body_parts = 200, size, [(0, size)]
        elif len(ranges) == 1:
            start, end = ranges[0]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            status, length, body_parts = 206, end - start, [ranges[0]]
        else:
            return self._multirange(o, headers, ranges, size, iterate)
        start, end = body_parts[0]
        headers["Content-Length"] = str(length)
        if length <= SMALL and pieces is None:
            try:
                data = b"".join(iterate(start, end))
            finally:
                o.close()
            return Response(data, status_code=status, headers=headers)
        return body_response(o.file_span(start, end) if pieces is None else None,
                             iterate(start, end), close=o.close, status_code=status,
                             headers=headers)

    def _multirange(self, o, headers, ranges, size, iterate):
        boundary = uuid.uuid4().hex
        ctype = headers.get("Content-Type", S.DEFAULT_CONTENT_TYPE)
        heads = [(f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes "
                  f"{s}-{e - 1}/{size}\r\n\r\n").encode() for s, e in ranges]
        tail = f"--{boundary}--".encode()
        length = sum(len(h) + (e - s) + 2 for h, (s, e) in zip(heads, ranges)) + len(tail)

        def body():
            for h, (s, e) in zip(heads, ranges):
                yield h
                yield from iterate(s, e)
                yield b"\r\n"
            yield tail
        headers["Content-Type"] = f"multipart/byteranges;boundary={boundary}"
        headers["Content-Length"] = str(length)
        return StreamingResponse(read_ahead(body(), close=o.close), status_code=206,
                                 headers=headers)

    @staticmethod
    def _object_headers(info: S.ObjectInfo) -> dict:
        h = {"Content-Type": info.content_type, "Etag": info.etag,
             "Last-Modified": hb.http_date(info.last_modified), "X-Timestamp": info.timestamp,
             "Accept-Ranges": "bytes", **hb.meta_headers(info.meta, "object")}
        for name in ("content-disposition", "content-encoding", "x-object-manifest"):
            if name in info.headers:
                h[name.title()] = info.headers[name]
        if info.delete_at is not None:
            h["X-Delete-At"] = str(info.delete_at)
        if info.slo:
            h["X-Static-Large-Object"] = "True"
            h["Etag"] = f'"{info.etag}"'
        return h

    # -- object: writes ---------------------------------------------------------------
    def _write_args(self, request, obj: str) -> dict:
        h = request.headers
        ctype = h.get("content-type")
        if not ctype or (h.get("x-detect-content-type", "").lower() in ("true", "1", "yes")):
            ctype = mimetypes.guess_type(obj)[0] or S.DEFAULT_CONTENT_TYPE
        delete_at = hb.int_header(h, "x-delete-at")
        after = hb.int_header(h, "x-delete-after")
        if after is not None:
            delete_at = int(time.time()) + after
        extra = {k: h[k] for k in ("content-disposition", "content-encoding",
                                   "x-object-manifest") if k in h}
        if "x-object-manifest" in extra:
            seg_container, _, _ = unquote(extra["x-object-manifest"]).partition("/")
            if not seg_container:
                raise BadRequest("X-Object-Manifest must be <container>/<prefix>",
                                 field="x-object-manifest")
        return {"content_type": ctype, "meta": hb.meta_from_headers(h, "object"),
                "headers": extra, "delete_at": delete_at}

    async def put_object(self, request, account, container, obj):
        await self._authorize(request, account, container, write=True, obj=obj)
        h = request.headers
        if "x-copy-from" in h:
            src_container, src_obj = _copy_path(h["x-copy-from"], "X-Copy-From")
            src_account = unquote(h.get("x-copy-from-account", account))
            return await self._copy(request, src_account, src_container, src_obj,
                                    account, container, obj)
        chunked = "chunked" in h.get("transfer-encoding", "").lower()
        size = hb.int_header(h, "content-length")
        if size is None and not chunked:
            raise LengthRequired("Content-Length or Transfer-Encoding: chunked is required",
                                 field="content-length")
        if chunked:
            size = None
        args = self._write_args(request, obj)
        if request.query_params.get("multipart-manifest") == "put":
            return await self._put_slo(request, account, container, obj, args)
        etag = h.get("etag")
        try:
            info = await self.svc.put_object_async(
                account, container, obj, request.stream(), size=size,
                etag=etag.strip('"') if etag else None,
                if_none_match=h.get("if-none-match", "").strip() == "*", **args)
        except ClientDisconnect:
            raise BadRequest("the client went away before the whole body arrived; "
                             "nothing was stored", field="body") from None
        return Response(status_code=201, headers={
            "Etag": info.etag, "Last-Modified": hb.http_date(info.last_modified),
            "X-Timestamp": info.timestamp, "Content-Type": "text/html; charset=UTF-8"})

    async def _put_slo(self, request, account, container, obj, args):
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > S.MAX_MANIFEST_SIZE:
                raise EntityTooLarge("manifest is larger than the limit", field="body")
        try:
            segments = json.loads(bytes(raw))
        except ValueError as exc:
            raise BadRequest(f"Manifest must be valid JSON: {exc}", field="body") from None
        args.pop("headers", None)
        info = await call(self.svc.put_slo_manifest, account, container, obj, segments,
                          **args)
        return Response(status_code=201, headers={
            "Etag": f'"{info.etag}"', "Last-Modified": hb.http_date(info.last_modified),
            "X-Timestamp": info.timestamp})

    async def copy_object(self, request, account, container, obj):
        dest = request.headers.get("destination")
        if not dest:
            raise PreconditionFailed("COPY needs a Destination header: /container/object",
                                     field="destination")
        dst_container, dst_obj = _copy_path(dest, "Destination")
        dst_account = unquote(request.headers.get("destination-account", account))
        return await self._copy(request, account, container, obj, dst_account,
                                dst_container, dst_obj)

    async def _copy(self, request, src_account, src_container, src_obj, account, container,
                    obj):
        await self._authorize(request, src_account, src_container, obj=src_obj)
        await self._authorize(request, account, container, write=True, obj=obj)
        h = request.headers
        if hb.int_header(h, "content-length"):
            raise BadRequest("a copy takes no body: Content-Length must be 0",
                             field="content-length")
        args = self._write_args(request, obj)
        if "content-type" not in h:
            args["content_type"] = None
        fresh = h.get("x-fresh-metadata", "").lower() in ("true", "1", "yes")
        manifest = request.query_params.get("multipart-manifest") == "get"
        info = await call(self.svc.copy_object, src_account, src_container, src_obj,
                          account, container, obj, meta=args["meta"],
                          content_type=args["content_type"], headers=args["headers"],
                          fresh_metadata=fresh, manifest=manifest,
                          delete_at=args["delete_at"])
        return Response(status_code=201, headers={
            "Etag": info.etag, "Last-Modified": hb.http_date(info.last_modified),
            "X-Copied-From": f"{src_container}/{src_obj}",
            "X-Copied-From-Account": src_account})

    async def post_object(self, request, account, container, obj):
        await self._authorize(request, account, container, write=True, obj=obj)
        h = request.headers
        args = self._write_args(request, obj)
        delete_at = args["delete_at"]
        if delete_at is None and "x-remove-delete-at" not in h:
            delete_at = False
        await call(self.svc.post_object, account, container, obj, meta=args["meta"],
                   content_type=h.get("content-type"), headers=args["headers"],
                   delete_at=delete_at)
        return Response(status_code=202, content=b"",
                        headers={"Content-Type": "text/html; charset=UTF-8"})

    async def delete_object(self, request, account, container, obj):
        await self._authorize(request, account, container, write=True, obj=obj)
        if request.query_params.get("multipart-manifest") == "delete":
            n = await call(self.svc.delete_slo, account, container, obj)
            result = {"Number Deleted": n, "Number Not Found": 0, "Response Body": "",
                      "Response Status": "200 OK", "Errors": []}
            if "json" in request.headers.get("accept", ""):
                return Response(json.dumps(result), media_type="application/json")
            return Response(f"Number Deleted: {n}\nNumber Not Found: 0\nResponse Body: \n"
                            f"Response Status: 200 OK\nErrors:\n", media_type="text/plain")
        await self.svc.delete_object_async(account, container, obj)
        return Response(status_code=204)


def _copy_path(value: str, header: str) -> tuple[str, str]:
    path = unquote(value).lstrip("/")
    container, _, obj = path.partition("/")
    if not container or not obj:
        raise PreconditionFailed(f"{header} must be <container>/<object>, got {value!r}",
                                 field=header.lower())
    return container, obj


def _slice(pieces: list[tuple[str, str, int]], start: int, end: int):
    out, pos = [], 0
    for container, name, size in pieces:
        lo, hi = max(start, pos), min(end, pos + size)
        if lo < hi:
            out.append((container, name, lo - pos, hi - pos))
        pos += size
    return out


def build_app(svc: ObjectStoreService, *, validator):
    api = SwiftApi(svc)
    app = build_service_app("object-store", handler=api.dispatch, dialect=SwiftDialect(),
                            validator=validator, auth_required=False)
    return Gatekeeper(app)
