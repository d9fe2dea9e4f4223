"""Image API (Glance v2): HTTP in, one service call, HTTP out. Image data is
streamed both ways, never held in memory whole."""

from __future__ import annotations

import json
import re

import anyio
from starlette.concurrency import run_in_threadpool as call
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from stackbox.common.errors import BadRequest
from stackbox.common.http.app import build_service_app
from stackbox.common.http.body import MAX_BODY, json_body
from stackbox.common.http.errors import GlanceDialect
from stackbox.common.http.middleware import context_of
from stackbox.common.http.pagination import next_link, paginate, parse_limit
from stackbox.image import render, schemas
from stackbox.image.service import SORT_KEYS, ImageService, ListQuery

# Glance's version list: 2.16 is Caracal's; there are no microversions.
VERSIONS = [("v2.16", "CURRENT")] + [(f"v2.{n}", "SUPPORTED") for n in range(15, -1, -1)]
PATCH_TYPES = ("application/openstack-images-v2.1-json-patch",
               "application/openstack-images-v2.0-json-patch")
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
CHUNK = 1024 * 1024
COLUMN_FILTERS = ("name", "status", "owner", "disk_format", "container_format", "id")
BOOL_FILTERS = ("protected", "os_hidden")
NOT_PROPERTIES = {"limit", "marker", "sort", "sort_key", "sort_dir", "visibility",
                  "member_status", "tag", "size_min", "size_max", "created_at",
                  "updated_at", *COLUMN_FILTERS, *BOOL_FILTERS}
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json",
                    headers=headers)


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value {raw!r} for the {name} filter; use true or false.",
                     field=name)


def _int(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Invalid value {raw!r} for {name}: not an integer.", field=name)


def _sort(q) -> tuple[tuple[str, str], ...]:
    """sort=key:dir,... or repeated sort_key/sort_dir (not both), as Glance."""
    if "sort" in q and ("sort_key" in q or "sort_dir" in q):
        raise BadRequest("The sort parameter cannot be combined with sort_key or sort_dir.")
    if "sort" in q:
        pairs = []
        for part in q["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            pairs.append((key, direction or "desc"))
    else:
        keys = q.getlist("sort_key") or ["created_at"]
        dirs = q.getlist("sort_dir") or ["desc"]
        if len(dirs) not in (1, len(keys)):
            raise BadRequest("The number of sort_dir values must be 1 or match sort_key.")
        pairs = [(k, dirs[i] if len(dirs) > 1 else dirs[0]) for i, k in enumerate(keys)]
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise BadRequest(f"Invalid sort key: {key}. It must be one of the following: "
                             f"{', '.join(SORT_KEYS)}.", field="sort_key")
        if direction not in ("asc", "desc"):
            raise BadRequest(f"Invalid sort direction: {direction}; use asc or desc.",
                             field="sort_dir")
    if "id" not in [k for k, _ in pairs]:
        pairs.append(("id", pairs[-1][1]))
    return tuple(pairs)


def list_query(q) -> ListQuery:
    visibility = q.get("visibility")
    if visibility is not None and visibility not in (*schemas.VISIBILITIES, "all"):
        raise BadRequest(f"Invalid visibility value: {visibility}", field="visibility")
    member_status = q.get("member_status", "accepted")
    if member_status not in (*schemas.MEMBER_STATUSES, "all"):
        raise BadRequest(f"Invalid status value: {member_status}", field="member_status")
    columns: dict = {}
    for name in COLUMN_FILTERS:
        if name in q and name != "id":
            raw = q[name]
            columns[name] = raw[3:].split(",") if raw.startswith("in:") else raw
    for name in BOOL_FILTERS:
        if name in q:
            columns[name] = _bool(name, q[name])
    ids = q.get("id", "")
    ids = tuple(ids[3:].split(",") if ids.startswith("in:") else [ids] if ids else [])
    return ListQuery(visibility=visibility, member_status=member_status, columns=columns,
                     properties={k: v for k, v in q.items() if k not in NOT_PROPERTIES},
                     tags=tuple(q.getlist("tag")), size_min=_int("size_min", q.get("size_min")),
                     size_max=_int("size_max", q.get("size_max")), ids=ids, sort=_sort(q))


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `Range: bytes=` request; None for all of it."""
    if not header:
        return None
    m = RANGE.match(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise HTTPException(416, f"Invalid Range header {header!r}; use bytes=first-last.",
                            headers={"Content-Range": f"bytes */{size}"})
    first, last = m.group(1), m.group(2)
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HTTPException(416, f"Range {header!r} is not satisfiable: the image has "
                            f"{size} bytes.", headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def _read_file(path, start: int, length: int):
    async with await anyio.open_file(path, "rb") as f:
        await f.seek(start)
        left = length
        while left > 0:
            chunk = await f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


class ImageApi:
    def __init__(self, svc: ImageService):
        self.svc = svc

    # -- versions ----------------------------------------------------------
    async def versions(self, request):
        base = str(request.base_url).rstrip("/")
        return _json({"versions": [{"id": vid, "status": status,
                                    "links": [{"rel": "self", "href": f"{base}/v2/"}]}
                                   for vid, status in VERSIONS]},
                     status=300 if request.url.path in ("/", "/versions") else 200)

    # -- images ------------------------------------------------------------
    async def list_images(self, request):
        q = request.query_params
        limit = parse_limit(q.get("limit"), max_limit=MAX_LIMIT)
        query = list_query(q)
        images = await call(self.svc.list_images, context_of(request), query)
        limit = DEFAULT_LIMIT if limit is None else limit
        page, marker = paginate(images, limit=limit, marker=q.get("marker"),
                                key=lambda i: i.id)
        body = {"images": [render.image(i) for i in page], "first": "/v2/images",
                "schema": "/v2/schemas/images"}
        if marker:
            body["next"] = next_link("", "/v2/images", dict(q), marker=marker,
                                     limit=limit)["href"]
        return _json(body)

    async def create_image(self, request):
        spec = schemas.image_create(await json_body(request))
        img = await call(self.svc.create_image, context_of(request), image_id=spec.id,
                         core=spec.core, properties=spec.properties)
        return _json(render.image(img), status=201,
                     headers={"Location": f"{str(request.base_url).rstrip('/')}"
                                          f"/v2/images/{img.id}"})

    async def show_image(self, request):
        img = await call(self.svc.get_image, context_of(request), request.path_params["id"])
        return _json(render.image(img))

    async def update_image(self, request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise HTTPException(415, f"Unsupported Content-Type {ctype or '(none)'!r}; "
                                f"use {PATCH_TYPES[0]}.")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"Request body is larger than {MAX_BODY} bytes.")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"Malformed request body: not valid JSON ({e}).")
        ops = schemas.image_patch(body)
        img = await call(self.svc.update_image, context_of(request),
                         request.path_params["id"], ops)
        return _json(render.image(img))

    async def delete_image(self, request):
        await call(self.svc.delete_image, context_of(request), request.path_params["id"])
        return Response(status_code=204)

    async def tag(self, request):
        p = request.path_params
        fn = self.svc.add_tag if request.method == "PUT" else self.svc.delete_tag
        await call(fn, context_of(request), p["id"], p["tag"])
        return Response(status_code=204)

    async def action(self, request):
        action = request.path_params["action"]
        if action not in ("deactivate", "reactivate"):
            raise HTTPException(404, f"Unknown image action {action!r}.")
        await call(self.svc.set_active, context_of(request), request.path_params["id"],
                   active=action == "reactivate")
        return Response(status_code=204)

    # -- data --------------------------------------------------------------
    async def upload(self, request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype != "application/octet-stream":
            raise HTTPException(415, f"Unsupported Content-Type {ctype!r}; image data is "
                                f"application/octet-stream.")
        declared = (request.headers.get("x-openstack-image-size")
                    or request.headers.get("content-length"))
        ctx = context_of(request)
        upload = await call(self.svc.begin_upload, ctx, request.path_params["id"],
                            declared_size=_int("X-OpenStack-Image-Size", declared))
        try:
            buf = bytearray()
            async for chunk in request.stream():
                buf += chunk
                if len(buf) >= CHUNK:
                    await call(upload.staged.write, bytes(buf))
                    buf.clear()
            if buf:
                await call(upload.staged.write, bytes(buf))
            await call(self.svc.finish_upload, ctx, upload)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await call(self.svc.abort_upload, ctx, upload)
            raise
        return Response(status_code=204)

    async def download(self, request):
        img, path = await call(self.svc.open_data, context_of(request),
                               request.path_params["id"])
        if path is None:
            return Response(status_code=204)
        size = img.size
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        span = _byte_range(request.headers.get("range"), size)
        if span is None:
            start, length, status = 0, size, 200
            headers["Content-MD5"] = img.checksum
        else:
            start, length, status = span[0], span[1] - span[0] + 1, 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
        headers["Content-Length"] = str(length)
        return StreamingResponse(_read_file(path, start, length), status_code=status,
                                 headers=headers)

    # -- members -----------------------------------------------------------
    async def list_members(self, request):
        members = await call(self.svc.list_members, context_of(request),
                             request.path_params["id"])
        return _json({"members": [render.member(m) for m in members],
                      "schema": "/v2/schemas/members"})

    async def create_member(self, request):
        member_id = schemas.member_create(await json_body(request))
        m = await call(self.svc.add_member, context_of(request), request.path_params["id"],
                       member_id)
        return _json(render.member(m))

    async def member(self, request):
        ctx, p = context_of(request), request.path_params
        if request.method == "DELETE":
            await call(self.svc.delete_member, ctx, p["id"], p["member"])
            return Response(status_code=204)
        if request.method == "PUT":
            status = schemas.member_update(await json_body(request))
            m = await call(self.svc.update_member, ctx, p["id"], p["member"], status)
        else:
            m = await call(self.svc.get_member, ctx, p["id"], p["member"])
        return _json(render.member(m))

    # -- schemas -----------------------------------------------------------
    async def schema(self, request):
        docs = {"image": schemas.image_schema, "images": schemas.images_schema,
                "member": schemas.member_schema, "members": schemas.members_schema}
        name = request.path_params["name"]
        if name not in docs:
            raise HTTPException(404, f"No schema {name!r}.")
        return _json(docs[name]())

    def routes(self) -> list[Route]:
        return [
            Route("/", self.versions, methods=["GET"]),
            Route("/versions", self.versions, methods=["GET"]),
            Route("/v2", self.versions, methods=["GET"]),
            Route("/v2/", self.versions, methods=["GET"]),
            Route("/v2/schemas/{name}", self.schema, methods=["GET"]),
            Route("/v2/images", self.list_images, methods=["GET"]),
            Route("/v2/images", self.create_image, methods=["POST"]),
            Route("/v2/images/{id}", self.show_image, methods=["GET"]),
            Route("/v2/images/{id}", self.update_image, methods=["PATCH"]),
            Route("/v2/images/{id}", self.delete_image, methods=["DELETE"]),
            Route("/v2/images/{id}/file", self.upload, methods=["PUT"]),
            Route("/v2/images/{id}/file", self.download, methods=["GET"]),
            Route("/v2/images/{id}/tags/{tag}", self.tag, methods=["PUT", "DELETE"]),
            Route("/v2/images/{id}/actions/{action}", self.action, methods=["POST"]),
            Route("/v2/images/{id}/members", self.list_members, methods=["GET"]),
            Route("/v2/images/{id}/members", self.create_member, methods=["POST"]),
            Route("/v2/images/{id}/members/{member}", self.member,
                  methods=["GET", "PUT", "DELETE"]),
        ]


def _public(method: str, path: str) -> bool:
    return path in ("/", "/versions", "/v2", "/v2/")


def build_app(svc: ImageService, *, validator):
    api = ImageApi(svc)
    return build_service_app("image", api.routes(), dialect=GlanceDialect(),
                             validator=validator, auth_required=True, public=_public)
