"""The S3 REST API: S3 requests in, object-store calls, S3 responses out.

A request is located (path-style `/bucket/key` or virtual-hosted
`bucket.<domain>`), authenticated (SigV4 with EC2 credentials), routed by
method, level (service, bucket, object) and sub-resource to one handler, which
makes its store calls in a worker thread. Errors leave as S3 XML documents.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool as call
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from stackbox.common import errors
from stackbox.common.http.middleware import (CONTEXT_KEY, REQUEST_ID_KEY, AccessLogMiddleware,
                                             RequestIdMiddleware)
from stackbox.objectstore.s3 import xml
from stackbox.objectstore.s3.auth import S3Authenticator, request_of
from stackbox.objectstore.s3.body import Payload
from stackbox.objectstore.s3.errors import (S3Error, invalid_argument, no_such_bucket,
                                            no_such_key)
from stackbox.objectstore.s3.multipart import SEGMENTS_SUFFIX, Multipart
from stackbox.objectstore.s3.objects import ObjectHandlers, account_of, xml_response
from stackbox.objectstore.s3.store import ObjectEntry, ServiceStore, Subdir

log = logging.getLogger("stackbox.s3")

MAX_KEYS = 1000
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# sub-resources clients probe that this server does not implement
UNSUPPORTED = {"acl", "policy", "cors", "lifecycle", "website", "logging", "notification",
               "replication", "tagging", "encryption", "object-lock", "accelerate",
               "requestPayment", "inventory", "analytics", "metrics", "ownershipControls",
               "publicAccessBlock", "intelligent-tiering", "restore", "select", "torrent",
               "retention", "legal-hold", "attributes", "versions"}
SUBRESOURCES = UNSUPPORTED | {"location", "uploads", "versioning", "delete", "uploadId"}


def to_s3_error(exc: Exception, *, bucket: str | None, key: str | None) -> S3Error:
    """Domain errors from the store, mapped once (walking the MRO)."""
    if isinstance(exc, S3Error):
        return exc
    name_chain = [c.__name__ for c in type(exc).__mro__]
    message = getattr(exc, "message", str(exc))
    if "PreconditionFailed" in name_chain:
        return S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                       "specified did not hold", 412, Condition=message)
    if "EntityTooLarge" in name_chain:
        return S3Error("EntityTooLarge", message, 400)
    if "InsufficientStorage" in name_chain:
        return S3Error("InternalError", f"The object store could not store the data: "
                       f"{message}", 500)
    if isinstance(exc, errors.NotFound):
        return no_such_key(key) if key is not None else no_such_bucket(bucket or "")
    if isinstance(exc, errors.Forbidden):
        return S3Error("AccessDenied", message or "Access Denied", 403)
    if isinstance(exc, errors.QuotaExceeded):
        return S3Error("QuotaExceeded", message, 403)
    if isinstance(exc, errors.Conflict):
        return S3Error("OperationAborted", message, 409)
    if isinstance(exc, errors.BadRequest):
        return invalid_argument(message, exc.field or "request", "")
    if isinstance(exc, errors.ServiceUnavailable):
        return S3Error("ServiceUnavailable", message, 503)
    return S3Error("InternalError", "We encountered an internal error. Please try again.",
                   500)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length != "0")


def _encoder(encoding_type: str | None):
    if encoding_type is None:
        return lambda s: s
    if encoding_type != "url":
        raise invalid_argument("Invalid Encoding Method specified in Request",
                               "encoding-type", encoding_type)
    return lambda s: quote(s, safe="/") if s else s


def _max_keys(value: str | None, name: str = "max-keys") -> int:
    if value is None:
        return MAX_KEYS
    if not value.isdigit():
        raise invalid_argument("Provided max-keys not an integer or within integer range",
                               name, value)
    return min(int(value), MAX_KEYS)


class S3Api:
    def __init__(self, store: ServiceStore, auth: S3Authenticator, *, regions: tuple[str, ...],
                 base_domains: tuple[str, ...] = ()):
        self.store = store
        self.auth = auth
        self.regions = regions
        self.base_domains = tuple(d.lower() for d in base_domains)
        self.multipart = Multipart(store)
        self.objects = ObjectHandlers(store, self.multipart, self.not_found)

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body_done = [False]

        async def tracked_receive():
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done[0] = True
            return message

        request = Request(scope, tracked_receive)
        request_id = scope.get(REQUEST_ID_KEY, "-")
        bucket = key = None
        try:
            bucket, key = self.locate(request)
            ctx, verified = await self.auth.authenticate(request_of(scope), request_id)
            scope[CONTEXT_KEY] = ctx
            handler = self.route(request.method, bucket, key, request.query_params)
            response = await handler(request, ctx, verified, bucket, key)
        except ClientDisconnect:
            # the body stopped early: the store discarded the partial object
            log.info("S3 %s %s: client went away mid-body", request.method, scope["path"])
            return
        except Exception as exc:  # noqa: BLE001 - every error leaves as S3 XML
            err = to_s3_error(exc, bucket=bucket, key=key)
            if err.status >= 500:
                log.error("S3 %s %s failed", request.method, scope["path"], exc_info=exc)
            response = self.error_response(err, request, request_id)
            if not body_done[0] and _has_body(request):
                # The client may still send (or, after Expect: 100-continue,
                # never send) the body: this connection cannot be reused.
                response.headers["Connection"] = "close"
        response.headers["x-amz-request-id"] = request_id
        await response(scope, receive, send)

    def error_response(self, err: S3Error, request: Request, request_id: str) -> Response:
        headers = {}
        if err.status == 416 and "ActualObjectSize" in err.extra:
            headers["Content-Range"] = f"bytes */{err.extra['ActualObjectSize']}"
        if request.method == "HEAD":
            return Response(status_code=err.status, headers=headers)
        body = xml.error(err, resource=request.scope["path"], request_id=request_id)
        return xml_response(body, err.status, headers)

    def locate(self, request: Request) -> tuple[str | None, str | None]:
        host = (request.headers.get("host") or "").lower()
        if host.startswith("["):
            name = host.split("]", 1)[0] + "]"
        else:
            name = host.rsplit(":", 1)[0]
        path = request.scope["path"]     # decoded (request.url.path escapes ?, # and backslash)
        for domain in self.base_domains:
            if name.endswith("." + domain):
                bucket = name[: -len(domain) - 1]
                key = path[1:] if len(path) > 1 else None
                return bucket, key
        parts = path[1:].split("/", 1) if path != "/" else [""]
        bucket = parts[0] or None
        key = parts[1] if len(parts) > 1 and parts[1] != "" else None
        if key is not None and len(key.encode()) > 1024:
            raise S3Error("KeyTooLongError", "Your key is too long", 400, MaxSizeAllowed="1024")
        return bucket, key

    def route(self, method: str, bucket, key, query):
        """The handler of (method, sub-resource) at the service, bucket or object
        level. A sub-resource this server does not handle is 501, never the
        plain operation (PUT ?versioning must not create a bucket)."""
        if bucket is None:
            if method == "GET":
                return self.list_buckets
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against "
                          "this resource.", 405, Method=method, ResourceType="SERVICE")
        if key is None:
            table = {("GET", "location"): self.get_bucket_location,
                     ("GET", "uploads"): self.objects.list_multipart_uploads,
                     ("GET", "versioning"): self.get_bucket_versioning,
                     ("POST", "delete"): self.objects.delete_objects,
                     ("GET", None): self.list_objects, ("PUT", None): self.create_bucket,
                     ("HEAD", None): self.head_bucket, ("DELETE", None): self.delete_bucket}
            level = "BUCKET"
        else:
            table = {("PUT", "uploadId"): self.objects.upload_part,
                     ("GET", "uploadId"): self.objects.list_parts,
                     ("DELETE", "uploadId"): self.objects.abort_multipart_upload,
                     ("POST", "uploadId"): self.objects.complete_multipart_upload,
                     ("POST", "uploads"): self.objects.create_multipart_upload,
                     ("PUT", None): self.objects.put_object,
                     ("GET", None): self.objects.get_object,
                     ("HEAD", None): self.objects.get_object,
                     ("DELETE", None): self.objects.delete_object}
            level = "OBJECT"
        subs = [q for q in query if q in SUBRESOURCES]
        for sub in subs:
            if (method, sub) in table:
                return table[method, sub]
        if subs:
            raise S3Error("NotImplemented", f"{method} with the '{subs[0]}' sub-resource is "
                          f"not implemented by this server.", 501)
        if (method, None) in table:
            return table[method, None]
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this "
                      "resource.", 405, Method=method, ResourceType=level)

    async def not_found(self, ctx, bucket: str, key: str | None) -> S3Error:
        """A NotFound from an object call: the bucket's or the key's?"""
        try:
            await call(self.store.head_bucket, ctx, account_of(ctx), bucket)
        except errors.NotFound:
            return no_such_bucket(bucket)
        return no_such_key(key) if key is not None else no_such_bucket(bucket)

    # -- service and buckets --------------------------------------------------
    async def list_buckets(self, request, ctx, verified, bucket, key):
        buckets = await call(self.store.list_buckets, ctx, account_of(ctx))
        visible = [(b.name, b.last_modified) for b in buckets
                   if not b.name.endswith(SEGMENTS_SUFFIX)]
        return xml_response(xml.list_buckets(ctx.project_id, ctx.project_name or "", visible))

    async def create_bucket(self, request, ctx, verified, bucket, key):
        body = await Payload(request.headers, verified).read_all(request.stream(),
                                                                 xml.MAX_BODY)
        if not _BUCKET_NAME.match(bucket) or ".." in bucket or re.match(
                r"^\d+\.\d+\.\d+\.\d+$", bucket):
            raise S3Error("InvalidBucketName", "The specified bucket is not valid: 3 to 63 "
                          "characters, lower-case letters, digits, dots and hyphens, starting "
                          "and ending with a letter or digit.", 400, BucketName=bucket)
        where = xml.parse_location(body)
        if where is not None and where not in self.regions:
            raise S3Error("InvalidLocationConstraint", f"The specified location-constraint "
                          f"'{where}' is not valid; this cloud's regions are: "
                          f"{', '.join(self.regions)}.", 400, LocationConstraint=where)
        created = await call(self.store.create_bucket, ctx, account_of(ctx), bucket)
        if not created:
            raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the "
                          "named bucket succeeded and you already own it.", 409,
                          BucketName=bucket)
        return Response(status_code=200, headers={"Location": f"/{bucket}"})

    async def head_bucket(self, request, ctx, verified, bucket, key):
        try:
            await call(self.store.head_bucket, ctx, account_of(ctx), bucket)
        except errors.NotFound:
            raise no_such_bucket(bucket)
        return Response(status_code=200, headers={"x-amz-bucket-region": self.regions[0]})

    async def delete_bucket(self, request, ctx, verified, bucket, key):
        account = account_of(ctx)
        try:
            await call(self.store.delete_bucket, ctx, account, bucket)
        except errors.NotFound:
            raise no_such_bucket(bucket)
        except errors.Conflict:
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409,
                          BucketName=bucket)
        try:  # uploads never completed go with their bucket
            await call(self._drop_segments, ctx, account, bucket)
        except errors.StackboxError:
            log.warning("could not remove %s%s", bucket, SEGMENTS_SUFFIX, exc_info=True)
        return Response(status_code=204)

    def _drop_segments(self, ctx, account, bucket):
        container = bucket + SEGMENTS_SUFFIX
        while True:
            try:
                page = self.store.list_objects(ctx, account, container, prefix="",
                                               delimiter=None, marker="", limit=1000)
            except errors.NotFound:
                return
            for entry in page:
                self.store.delete_object(ctx, account, container, entry.name)
            if not page:
                break
        self.store.delete_bucket(ctx, account, container)

    async def get_bucket_location(self, request, ctx, verified, bucket, key):
        await self.head_bucket(request, ctx, verified, bucket, key)
        return xml_response(xml.location(self.regions[0]))

    async def get_bucket_versioning(self, request, ctx, verified, bucket, key):
        await self.head_bucket(request, ctx, verified, bucket, key)
        return xml_response(b'<?xml version="1.0" encoding="UTF-8"?>\n<VersioningConfiguration '
                            b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>')

    # -- listings -------------------------------------------------------------
    async def list_objects(self, request, ctx, verified, bucket, key):
        q = request.query_params
        v2 = q.get("list-type") == "2"
        if q.get("list-type") not in (None, "1", "2"):
            raise invalid_argument("Invalid list type", "list-type", q.get("list-type"))
        encoding = q.get("encoding-type")
        encode = _encoder(encoding)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter") or None
        max_keys = _max_keys(q.get("max-keys"))
        token = start_after = None
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after")
            if token is not None:
                try:
                    marker = base64.urlsafe_b64decode(token.encode()).decode()
                except (binascii.Error, UnicodeDecodeError, ValueError):
                    raise invalid_argument("The continuation token provided is incorrect",
                                           "continuation-token", token)
            else:
                marker = start_after or ""
        else:
            marker = q.get("marker", "")
        entries, truncated = await call(self._list, ctx, bucket, prefix, delimiter, marker,
                                        max_keys)
        contents = [{"key": e.name, "last_modified": e.last_modified, "etag": e.etag,
                     "size": e.size} for e in entries if isinstance(e, ObjectEntry)]
        prefixes = [e.name for e in entries if isinstance(e, Subdir)]
        last = entries[-1].name if truncated and entries else None
        owner = (ctx.project_id, ctx.project_name or "")
        body = xml.list_objects(
            bucket=bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
            truncated=truncated, contents=contents, common_prefixes=prefixes, encode=encode,
            v2=v2, marker=marker if not v2 else "", next_marker=last if not v2 else None,
            continuation_token=token,
            next_token=base64.urlsafe_b64encode(last.encode()).decode() if v2 and last
            else None, start_after=start_after, encoding_type=encoding,
            fetch_owner=(not v2) or q.get("fetch-owner") == "true", owner=owner)
        return xml_response(body)

    def _list(self, ctx, bucket, prefix, delimiter, marker, max_keys):
        """Up to max_keys entries after `marker`, and whether more follow (the
        service skips the names of a common prefix given as the marker)."""
        account = account_of(ctx)
        if max_keys == 0:
            self.store.head_bucket(ctx, account, bucket)
            return [], False
        out: list = []
        cursor = marker
        while len(out) <= max_keys:
            want = max_keys + 1 - len(out)
            try:
                page = self.store.list_objects(ctx, account, bucket, prefix=prefix,
                                               delimiter=delimiter, marker=cursor, limit=want)
            except errors.NotFound:
                raise no_such_bucket(bucket)
            out += page
            if len(page) < want:
                break
            cursor = page[-1].name
        return out[:max_keys], len(out) > max_keys


def is_s3_request(scope) -> bool:
    """On the shared object-store port: SigV4 (header or presigned query) is
    S3; so is any other path outside Swift's (`/v1/…`, `/info`, `/healthcheck`,
    and `/` unsigned, Swift's version document)."""
    for k, v in scope.get("headers", ()):
        if k == b"authorization":
            return v.startswith(b"AWS4-HMAC-SHA256") or v.startswith(b"AWS ")
    qs = scope.get("query_string", b"")
    if b"X-Amz-Credential=" in qs or b"AWSAccessKeyId=" in qs:
        return True
    path = scope.get("path", "/")
    return not (path.startswith("/v1/") or path in ("/", "", "/v1", "/info", "/healthcheck",
                                                    "/crossdomain.xml"))


def build_s3_app(store: ServiceStore, identity, *, regions: tuple[str, ...],
                 base_domains: tuple[str, ...] = (), cache_seconds: float = 2.0,
                 generation=None):
    """The S3 ASGI app: request id, access log, then the API. `generation`
    (stackbox.common.generation) drops cached credentials when another
    process of this host changes identity data."""
    auth = S3Authenticator(identity, regions=regions, cache_seconds=cache_seconds,
                           generation=generation)
    api = S3Api(store, auth, regions=regions, base_domains=base_domains)
    return RequestIdMiddleware(AccessLogMiddleware(api, service="s3"))


def object_store_dispatcher(swift_app, s3_app):
    """One ASGI app for the object-store port: S3 requests to `s3_app`, the rest
    (Swift v1, /info, /healthcheck) to `swift_app`."""
    async def dispatch(scope, receive, send):
        if scope["type"] == "http" and is_s3_request(scope):
            return await s3_app(scope, receive, send)
        return await swift_app(scope, receive, send)
    return dispatch


def s3_settings(settings) -> dict:
    """build_s3_app's keyword arguments from the settings: the regions a
    signature may name (the cloud's region, and us-east-1 so clients left at
    their default work), the domains of virtual-hosted-style bucket names (the
    host of api.public_base_url when it is a name, and localhost), and the
    credential cache time (the token cache's)."""
    regions = tuple(dict.fromkeys((settings.identity.region, "us-east-1")))
    domains = ["localhost"]
    host = urlsplit(settings.api.public_base_url).hostname if settings.api.public_base_url \
        else None
    if host and not re.match(r"^[\d.]+$|:", host):
        domains.insert(0, host)
    return {"regions": regions, "base_domains": tuple(domains),
            "cache_seconds": settings.identity.token_cache_seconds}
