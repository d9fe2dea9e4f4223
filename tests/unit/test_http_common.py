"""Pure logic of the shared HTTP layer: pagination, microversions, body
validation, error dialects."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, StrictStr

from stackbox.common import errors
from stackbox.common.http import body, microversion, pagination
from stackbox.common.http.errors import KeystoneDialect, NovaDialect

ITEMS = [{"id": f"id{i}"} for i in range(5)]


def test_paginate_with_limit_and_marker():
    page, nxt = pagination.paginate(ITEMS, limit=2, marker=None)
    assert [i["id"] for i in page] == ["id0", "id1"] and nxt == "id1"
    page, nxt = pagination.paginate(ITEMS, limit=2, marker="id3")
    assert [i["id"] for i in page] == ["id4"] and nxt is None
    page, nxt = pagination.paginate(ITEMS, limit=None, marker="id1")
    assert len(page) == 3 and nxt is None


def test_unknown_marker_and_bad_limit_are_400():
    with pytest.raises(errors.BadRequest, match="marker"):
        pagination.paginate(ITEMS, limit=1, marker="nope")
    with pytest.raises(errors.BadRequest, match="limit"):
        pagination.parse_limit("ten")
    with pytest.raises(errors.BadRequest, match="limit"):
        pagination.parse_limit("-1")
    assert pagination.parse_limit("5000", max_limit=1000) == 1000


def test_next_link_keeps_filters():
    link = pagination.next_link("http://h:1", "/v2/images", {"status": "active", "limit": "2"},
                                marker="m1", limit=2)
    assert link == {"rel": "next", "href": "http://h:1/v2/images?status=active&limit=2&marker=m1"}


class Headers(dict):
    def get(self, k, default=None):
        return super().get(k.lower(), default)


V = microversion.Version


def test_microversion_negotiation():
    kw = dict(service_type="compute", legacy_header="X-OpenStack-Nova-API-Version",
              minimum=V(2, 1), maximum=V(2, 96))
    assert microversion.negotiate(Headers(), **kw) == V(2, 1)
    assert microversion.negotiate(Headers({"openstack-api-version": "compute 2.60"}),
                                  **kw) == V(2, 60)
    assert microversion.negotiate(Headers({"x-openstack-nova-api-version": "2.10"}),
                                  **kw) == V(2, 10)
    assert microversion.negotiate(Headers({"openstack-api-version": "compute latest"}),
                                  **kw) == V(2, 96)
    # another service's entry in the combined header is ignored
    assert microversion.negotiate(Headers({"openstack-api-version": "volume 3.50"}),
                                  **kw) == V(2, 1)
    with pytest.raises(errors.NotAcceptable, match="Minimum is 2.1"):
        microversion.negotiate(Headers({"openstack-api-version": "compute 2.200"}), **kw)
    with pytest.raises(errors.BadRequest, match="MAJOR.MINOR"):
        microversion.negotiate(Headers({"openstack-api-version": "compute two"}), **kw)
    h = microversion.response_headers(V(2, 60), service_type="compute",
                                      legacy_header="X-OpenStack-Nova-API-Version")
    assert h["OpenStack-API-Version"] == "compute 2.60"
    assert h["X-OpenStack-Nova-API-Version"] == "2.60"


class Thing(BaseModel):
    name: StrictStr


def test_validate_names_the_field():
    assert body.validate(Thing, {"thing": {"name": "x"}}, root="thing").name == "x"
    with pytest.raises(errors.BadRequest) as e:
        body.validate(Thing, {"thing": {"name": 5}}, root="thing")
    assert e.value.field == "thing.name" and "'thing.name'" in e.value.message
    with pytest.raises(errors.BadRequest) as e:
        body.validate(Thing, {}, root="thing")
    assert e.value.field == "thing"


def test_dialects_render_openstack_bodies():
    r = KeystoneDialect(lambda: "http://h/v3").render(errors.Unauthorized("no"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Keystone uri="http://h/v3"'
    assert json.loads(r.body) == {"error": {"code": 401, "title": "Unauthorized",
                                            "message": "no"}}
    r = NovaDialect().render(errors.NotFound("gone"))
    assert r.status_code == 404 and json.loads(r.body) == {
        "itemNotFound": {"code": 404, "message": "gone"}}
    r = NovaDialect().render(errors.QuotaExceeded("cores", limit=2, in_use=2, requested=1))
    assert r.status_code == 403 and "cores" in json.loads(r.body)["forbidden"]["message"]
    r = KeystoneDialect().render(RuntimeError("secret detail"))
    assert r.status_code == 500 and "secret detail" not in r.body.decode()


def test_handler_app_renders_errors_until_the_response_has_started():
    """HandlerApp (one endpoint, no router): an error before the response
    starts becomes the dialect's page; one after it is left to the server."""
    import asyncio

    from starlette.responses import Response, StreamingResponse

    from stackbox.common.http.app import HandlerApp

    async def handler(request):
        if request.url.path == "/missing":
            raise errors.NotFound("no such thing", field="path")
        if request.url.path == "/broken":
            raise RuntimeError("bug")
        if request.url.path == "/midway":
            async def chunks():
                yield b"first"
                raise RuntimeError("disk went away")
            return StreamingResponse(chunks())
        return Response(b"fine", status_code=201)

    app = HandlerApp(handler, NovaDialect())

    async def call(path):
        sent, received = [], []

        async def receive():
            if not received:
                received.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()          # the client stays connected

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [], "server": ("127.0.0.1", 1),
                 "scheme": "http", "root_path": ""}
        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    assert asyncio.run(call("/ok")) == (201, b"fine")
    status, body_ = asyncio.run(call("/missing"))
    assert status == 404 and b"no such thing" in body_
    assert asyncio.run(call("/broken"))[0] == 500
    with pytest.raises(RuntimeError, match="disk went away"):
        asyncio.run(call("/midway"))
