"""Network API (Neutron v2.0): HTTP in, one service call, HTTP out."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from starlette.concurrency import run_in_threadpool as call
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from stackbox.common.errors import BadRequest
from stackbox.common.http.app import build_service_app
from stackbox.common.http.body import json_body
from stackbox.common.http.errors import NeutronDialect
from stackbox.common.http.middleware import context_of
from stackbox.network import listing, policy, render, schemas
from stackbox.network.service import TAGGABLE, NetworkService


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")


@dataclasses.dataclass(frozen=True)
class Resource:
    collection: str      # URL segment: security-groups
    plural: str          # body key of a list: security_groups
    singular: str        # body key of one: security_group
    attrs: dict
    list: Callable
    get: Callable
    create: Callable
    update: Callable | None
    delete: Callable


def resources(svc: NetworkService) -> list[Resource]:
    return [
        Resource("networks", "networks", "network", schemas.NETWORK, svc.list_networks,
                 svc.get_network, svc.create_network, svc.update_network, svc.delete_network),
        Resource("subnets", "subnets", "subnet", schemas.SUBNET, svc.list_subnets,
                 svc.get_subnet, svc.create_subnet, svc.update_subnet, svc.delete_subnet),
        Resource("ports", "ports", "port", schemas.PORT, svc.list_ports, svc.get_port,
                 svc.create_port, svc.update_port, svc.delete_port),
        Resource("routers", "routers", "router", schemas.ROUTER, svc.list_routers,
                 svc.get_router, svc.create_router, svc.update_router, svc.delete_router),
        Resource("floatingips", "floatingips", "floatingip", schemas.FLOATINGIP,
                 svc.list_floatingips, svc.get_floatingip, svc.create_floatingip,
                 svc.update_floatingip, svc.delete_floatingip),
        Resource("security-groups", "security_groups", "security_group",
                 schemas.SECURITY_GROUP, svc.list_security_groups, svc.get_security_group,
                 svc.create_security_group, svc.update_security_group,
                 svc.delete_security_group),
        Resource("security-group-rules", "security_group_rules", "security_group_rule",
                 schemas.SECURITY_GROUP_RULE, svc.list_security_group_rules,
                 svc.get_security_group_rule, svc.create_security_group_rule, None,
                 svc.delete_security_group_rule),
    ]


PORT_PUSHDOWN = ("network_id", "device_id", "device_owner")


class NetworkApi:
    def __init__(self, svc: NetworkService):
        self.svc = svc
        self.resources = {r.collection: r for r in resources(svc)}

    # -- versions -------------------------------------------------------------------
    async def versions(self, request):
        base = str(request.base_url).rstrip("/")
        return _json({"versions": [{"id": "v2.0", "status": "CURRENT",
                                    "links": [{"rel": "self", "href": f"{base}/v2.0/"}]}]})

    async def v2(self, request):
        base = str(request.base_url).rstrip("/")
        return _json({"resources": [
            {"name": r.singular, "collection": r.plural,
             "links": [{"rel": "self", "href": f"{base}/v2.0/{r.collection}"}]}
            for r in self.resources.values()]})

    # -- generic CRUD ---------------------------------------------------------------
    def _resource(self, request) -> Resource:
        res = self.resources.get(request.path_params["collection"])
        if res is None:
            raise HTTPException(404, "The resource could not be found.")
        return res

    async def list(self, request):
        res = self._resource(request)
        ctx = context_of(request)
        policy.enforce(ctx, f"get_{res.singular}")
        q = listing.parse(list(request.query_params.multi_items()))
        kwargs = {}
        if res.collection == "ports":
            for key in PORT_PUSHDOWN:
                if len(q.filters.get(key, [])) == 1:
                    kwargs[key] = q.filters[key][0]
        items = await call(res.list, ctx, **kwargs)
        items = [render.for_caller(i, ctx.is_admin) for i in items]
        page, links = listing.apply(items, q, collection=res.collection,
                                    base_url=str(request.base_url).rstrip("/"))
        body = {res.plural: page}
        if links:
            body[f"{res.plural}_links"] = links
        return _json(body)

    async def show(self, request):
        res = self._resource(request)
        ctx = context_of(request)
        policy.enforce(ctx, f"get_{res.singular}")
        item = await call(res.get, ctx, request.path_params["id"])
        fields = [f for v in request.query_params.getlist("fields") for f in v.split(",") if f]
        return _json({res.singular: listing.project(render.for_caller(item, ctx.is_admin),
                                                    fields)})

    async def create(self, request):
        res = self._resource(request)
        ctx = context_of(request)
        policy.enforce(ctx, f"create_{res.singular}")
        data = await json_body(request)
        if res.plural in data and res.plural != res.singular:
            raise BadRequest(f"Bulk creation of {res.plural} is not supported; create them "
                             f"one at a time.", field=res.plural)
        attrs = schemas.body(data, res.singular, res.attrs, update=False,
                             is_admin=ctx.is_admin)
        item = await call(res.create, ctx, attrs)
        return _json({res.singular: render.for_caller(item, ctx.is_admin)}, status=201)

    async def update(self, request):
        res = self._resource(request)
        if res.update is None:
            raise HTTPException(405, f"{res.plural} cannot be updated.")
        ctx = context_of(request)
        policy.enforce(ctx, f"update_{res.singular}")
        attrs = schemas.body(await json_body(request), res.singular, res.attrs, update=True,
                             is_admin=ctx.is_admin)
        item = await call(res.update, ctx, request.path_params["id"], attrs)
        return _json({res.singular: render.for_caller(item, ctx.is_admin)})

    async def delete(self, request):
        res = self._resource(request)
        ctx = context_of(request)
        policy.enforce(ctx, f"delete_{res.singular}")
        await call(res.delete, ctx, request.path_params["id"])
        return Response(status_code=204)

    # -- router actions -------------------------------------------------------------
    async def router_action(self, request):
        action = request.path_params["action"]
        ctx, rid = context_of(request), request.path_params["id"]
        if action in policy.RULES:
            policy.enforce(ctx, action)
        data = await json_body(request)
        if action in ("add_router_interface", "remove_router_interface"):
            allowed = {"subnet_id", "port_id"}
            extra = set(data) - allowed
            if extra:
                raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(extra))}'",
                                 field=sorted(extra)[0])
            fn = (self.svc.add_router_interface if action == "add_router_interface"
                  else self.svc.remove_router_interface)
            info = await call(fn, ctx, rid, subnet_id=data.get("subnet_id"),
                              port_id=data.get("port_id"))
            return _json(info)
        if action in ("add_extraroutes", "remove_extraroutes"):
            body = schemas.body(data, "router", {"routes": schemas.Attr(
                schemas.list_of(schemas.route))}, update=True, is_admin=ctx.is_admin)
            fn = (self.svc.add_extraroutes if action == "add_extraroutes"
                  else self.svc.remove_extraroutes)
            router = await call(fn, ctx, rid, body.get("routes", []))
            return _json({"router": router})
        raise HTTPException(404, f"Unknown router action {action!r}.")

    # -- tags -----------------------------------------------------------------------
    async def tags(self, request):
        p, ctx = request.path_params, context_of(request)
        coll = p["collection"]
        if coll not in TAGGABLE:
            raise HTTPException(404, "The resource could not be found.")
        policy.enforce(ctx, "get_tags" if request.method == "GET" else "update_tags")
        if request.method == "GET":
            return _json({"tags": await call(self.svc.get_tags, ctx, coll, p["id"])})
        if request.method == "PUT":
            tags = schemas.tags(await json_body(request))
            return _json({"tags": await call(self.svc.set_tags, ctx, coll, p["id"], tags)})
        await call(self.svc.set_tags, ctx, coll, p["id"], [])
        return Response(status_code=204)

    async def tag(self, request):
        p, ctx = request.path_params, context_of(request)
        coll, tag = p["collection"], p["tag"]
        if coll not in TAGGABLE:
            raise HTTPException(404, "The resource could not be found.")
        policy.enforce(ctx, "get_tags" if request.method == "GET" else "update_tags")
        if request.method == "GET":
            await call(self.svc.get_tag, ctx, coll, p["id"], tag)
        elif request.method == "PUT":
            await call(self.svc.add_tag, ctx, coll, p["id"], schemas.tag(tag))
            return Response(status_code=201)
        else:
            await call(self.svc.remove_tag, ctx, coll, p["id"], tag)
        return Response(status_code=204)

    # -- quotas ---------------------------------------------------------------------
    async def quotas(self, request):
        return _json({"quotas": await call(self.svc.list_quotas, context_of(request))})

    async def quota(self, request):
        ctx, project = context_of(request), request.path_params["project"]
        if request.method == "GET":
            return _json({"quota": await call(self.svc.get_quota, ctx, project)})
        if request.method == "PUT":
            limits = schemas.quota(await json_body(request))
            return _json({"quota": await call(self.svc.update_quota, ctx, project, limits)})
        await call(self.svc.delete_quota, ctx, project)
        return Response(status_code=204)

    async def quota_default(self, request):
        return _json({"quota": self.svc.default_quota()})

    async def quota_details(self, request):
        return _json({"quota": await call(self.svc.get_quota_details, context_of(request),
                                          request.path_params["project"])})

    # -- extensions -----------------------------------------------------------------
    async def extensions(self, request):
        return _json({"extensions": self.svc.list_extensions()})

    async def extension(self, request):
        return _json({"extension": self.svc.get_extension(request.path_params["alias"])})

    def routes(self) -> list[Route]:
        return [
            Route("/", self.versions, methods=["GET"]),
            Route("/v2.0", self.v2, methods=["GET"]),
            Route("/v2.0/", self.v2, methods=["GET"]),
            Route("/v2.0/extensions", self.extensions, methods=["GET"]),
            Route("/v2.0/extensions/{alias}", self.extension, methods=["GET"]),
            Route("/v2.0/quotas", self.quotas, methods=["GET"]),
            Route("/v2.0/quotas/{project}", self.quota, methods=["GET", "PUT", "DELETE"]),
            Route("/v2.0/quotas/{project}/default", self.quota_default, methods=["GET"]),
            Route("/v2.0/quotas/{project}/details", self.quota_details, methods=["GET"]),
            Route("/v2.0/routers/{id}/{action}", self.router_action, methods=["PUT"]),
            Route("/v2.0/{collection}/{id}/tags", self.tags, methods=["GET", "PUT", "DELETE"]),
            Route("/v2.0/{collection}/{id}/tags/{tag}", self.tag,
                  methods=["GET", "PUT", "DELETE"]),
            Route("/v2.0/{collection}", self.list, methods=["GET"]),
            Route("/v2.0/{collection}", self.create, methods=["POST"]),
            Route("/v2.0/{collection}/{id}", self.show, methods=["GET"]),
            Route("/v2.0/{collection}/{id}", self.update, methods=["PUT"]),
            Route("/v2.0/{collection}/{id}", self.delete, methods=["DELETE"]),
        ]


def _public(method: str, path: str) -> bool:
    return path in ("/", "/v2.0", "/v2.0/")


def build_app(svc: NetworkService, *, validator):
    return build_service_app("network", NetworkApi(svc).routes(), dialect=NeutronDialect(),
                             validator=validator, auth_required=True, public=_public)
