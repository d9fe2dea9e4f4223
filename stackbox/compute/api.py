"""Compute API (Nova v2.1): HTTP in, one service call, HTTP out.

Microversions 2.1 to MAX_VERSION (what current openstacksdk asks for); the
behaviour changes that touch what stackbox serves are honoured in render.py
and here, see docs/compute.md."""

from __future__ import annotations

import secrets
import urllib.parse
from typing import Awaitable, Callable

from starlette.concurrency import run_in_threadpool as call
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stackbox.common.errors import BadRequest, Conflict, NotFound
from stackbox.common.http.app import build_service_app
from stackbox.common.http.body import json_body
from stackbox.common.http.errors import NovaDialect
from stackbox.common.http.microversion import Version, negotiate, response_headers
from stackbox.common.http.middleware import context_of
from stackbox.common.http.pagination import parse_limit
from stackbox.compute import api_resources, render, states
from stackbox.compute.apihelpers import (Call, _bool, _empty, _int, _json, _name, _object,
                                         _time)
from stackbox.compute.service import (SORT_KEYS, ComputeService, CreateRequest, ListQuery)

MIN_VERSION = Version(2, 1)
MAX_VERSION = Version(2, 100)
V = Version
LEGACY_HEADER = "X-OpenStack-Nova-API-Version"


class ComputeApi:
    def __init__(self, svc: ComputeService, *, base_url: Callable[[], str],
                 console_url: Callable[[str, str], str], driver=None, network_addresses=None):
        self.svc = svc
        self.base_url = base_url
        self.console_url = console_url
        self.driver = driver
        self.addresses = network_addresses or (lambda ids: {})
        self._routes: list[Route] = []
        self.resources = api_resources.ResourceApi(self)
        self._build()

    # -- plumbing --------------------------------------------------------------------------
    def add(self, path: str, methods: list[str], fn: Callable[[Call], Awaitable[Response]]):
        async def endpoint(request: Request) -> Response:
            mv = negotiate(request.headers, service_type="compute", legacy_header=LEGACY_HEADER,
                           minimum=MIN_VERSION, maximum=MAX_VERSION)
            response = await fn(Call(request, context_of(request), mv,
                                     dict(request.path_params)))
            response.headers.update(response_headers(mv, service_type="compute",
                                                     legacy_header=LEGACY_HEADER))
            return response
        self._routes.append(Route("/v2.1" + path, endpoint, methods=methods))

    def routes(self) -> list[Route]:
        return [Route("/", self.versions, methods=["GET"]),
                Route("/v2.1", self.version, methods=["GET"]),
                Route("/v2.1/", self.version, methods=["GET"]), *self._routes]

    def _version_doc(self) -> dict:
        return {"id": "v2.1", "status": "CURRENT", "version": str(MAX_VERSION),
                "min_version": str(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.base_url()}/v2.1/"},
                          {"rel": "describedby", "type": "text/html",
                           "href": "https://docs.openstack.org/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    async def versions(self, request: Request) -> Response:
        return _json({"versions": [self._version_doc()]}, 300 if request.url.path != "/"
                     else 200)

    async def version(self, request: Request) -> Response:
        return _json({"version": self._version_doc()})

    def _build(self) -> None:
        a = self.add
        a("/servers", ["GET"], self.list_servers)
        a("/servers/detail", ["GET"], self.list_servers_detail)
        a("/servers", ["POST"], self.create_server)
        a("/servers/{id}", ["GET"], self.show_server)
        a("/servers/{id}", ["PUT"], self.update_server)
        a("/servers/{id}", ["DELETE"], self.delete_server)
        a("/servers/{id}/action", ["POST"], self.server_action)
        a("/servers/{id}/metadata", ["GET"], self.list_metadata)
        a("/servers/{id}/metadata", ["POST"], self.update_metadata)
        a("/servers/{id}/metadata", ["PUT"], self.replace_metadata)
        a("/servers/{id}/metadata/{key}", ["GET"], self.show_metadata_item)
        a("/servers/{id}/metadata/{key}", ["PUT"], self.set_metadata_item)
        a("/servers/{id}/metadata/{key}", ["DELETE"], self.delete_metadata_item)
        a("/servers/{id}/tags", ["GET"], self.list_tags)
        a("/servers/{id}/tags", ["PUT"], self.replace_tags)
        a("/servers/{id}/tags", ["DELETE"], self.delete_tags)
        a("/servers/{id}/tags/{tag}", ["GET"], self.check_tag)
        a("/servers/{id}/tags/{tag}", ["PUT"], self.add_tag)
        a("/servers/{id}/tags/{tag}", ["DELETE"], self.delete_tag)
        a("/servers/{id}/os-instance-actions", ["GET"], self.list_actions)
        a("/servers/{id}/os-instance-actions/{req}", ["GET"], self.show_action)
        a("/servers/{id}/remote-consoles", ["POST"], self.remote_console)
        a("/servers/{id}/ips", ["GET"], self.server_ips)
        a("/servers/{id}/os-interface", ["GET"], self.empty_list("interfaceAttachments"))
        a("/servers/{id}/os-volume_attachments", ["GET"],
          self.empty_list("volumeAttachments"))
        a("/servers/{id}/os-security-groups", ["GET"], self.server_security_groups)
        self.resources.register(a)

    def empty_list(self, key: str):
        async def handler(c: Call) -> Response:
            await call(self.svc.get_server, c.ctx, c.params["id"])
            return _json({key: []})
        return handler

    # -- servers ---------------------------------------------------------------------------
    def _render(self, c: Call, servers, *, detail: bool = True,
                single: bool = False) -> list[dict]:
        hosts = {h.id: h for h in self.svc.list_hosts()} if c.ctx.is_admin else {}
        addresses = self.addresses([s.id for s in servers]) if detail else {}
        groups = None
        if detail and single and c.mv >= V(2, 71):     # show/update/rebuild only, as Nova
            groups = {}
            for g in self.svc.list_groups(c.ctx, all_projects=True):
                for m in g.members:
                    groups.setdefault(m, []).append(g.id)
        return [render.server(s, base=self.base_url(), mv=c.mv, is_admin=c.ctx.is_admin,
                              host=hosts.get(s.host_id), addresses=addresses.get(s.id, {}),
                              groups=(groups or {}).get(s.id, []) if groups is not None
                              else None, detail=detail) for s in servers]

    def _list_query(self, c: Call) -> ListQuery:
        q = c.query
        all_tenants = q.get("all_tenants") is not None and (_bool(q.get("all_tenants") or
                                                                   "true", "all_tenants"))
        statuses = tuple(s.upper() for s in q.getlist("status"))
        for st in statuses:
            if st not in states.STATUS_FILTER and c.mv >= V(2, 38):
                raise BadRequest(f"Invalid status value {st}; allowed: "
                                 f"{', '.join(sorted(states.STATUS_FILTER))}.", field="status")
        sort_keys = q.getlist("sort_key") or ["created_at"]
        sort_dirs = q.getlist("sort_dir") or ["desc"]
        sort = []
        for i, key in enumerate(sort_keys):
            if key not in SORT_KEYS:
                raise BadRequest(f"Invalid sort_key {key}; allowed: {', '.join(SORT_KEYS)}.",
                                 field="sort_key")
            direction = sort_dirs[i] if i < len(sort_dirs) else sort_dirs[-1]
            if direction not in ("asc", "desc"):
                raise BadRequest(f"Invalid sort_dir {direction}; use asc or desc.",
                                 field="sort_dir")
            sort.append((key, direction))

        def split(name):
            raw = q.get(name)
            return tuple(t for t in raw.split(",") if t) if raw else ()
        return ListQuery(
            all_tenants=bool(all_tenants), project_id=q.get("project_id") or q.get("tenant_id"),
            name=q.get("name"), statuses=statuses, image=q.get("image"), flavor=q.get("flavor"),
            changes_since=_time(q["changes-since"], "changes-since")
            if "changes-since" in q else None,
            changes_before=_time(q["changes-before"], "changes-before")
            if "changes-before" in q and c.mv >= V(2, 66) else None,
            host=q.get("host") if c.ctx.is_admin else None,
            availability_zone=q.get("availability_zone"), key_name=q.get("key_name"),
            locked=_bool(q.get("locked"), "locked") if c.mv >= V(2, 73) else None,
            tags=split("tags"), tags_any=split("tags-any"), not_tags=split("not-tags"),
            not_tags_any=split("not-tags-any"), ids=split("uuid"), sort=tuple(sort),
            limit=parse_limit(q.get("limit")), marker=q.get("marker"))

    async def _list(self, c: Call, detail: bool) -> Response:
        query = self._list_query(c)
        servers = await call(self.svc.list_servers, c.ctx, query)
        rows = await call(self._render, c, servers, detail=detail)
        body: dict = {"servers": rows}
        if query.limit is not None and len(servers) == query.limit and servers:
            params = dict(c.query)
            params["marker"] = servers[-1].id
            path = "servers/detail" if detail else "servers"
            body["servers_links"] = [{"rel": "next", "href": f"{self.base_url()}/v2.1/{path}?"
                                      f"{urllib.parse.urlencode(params)}"}]
        return _json(body)

    async def list_servers(self, c: Call) -> Response:
        return await self._list(c, False)

    async def list_servers_detail(self, c: Call) -> Response:
        return await self._list(c, True)

    async def show_server(self, c: Call) -> Response:
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        body = (await call(lambda: self._render(c, [server], single=True)))[0]
        return _json({"server": body})

    def _create_request(self, c: Call, body: dict) -> CreateRequest:
        srv = _object(body, "server")
        name = _name(srv.get("name"))
        image_id = srv.get("imageRef") or ""
        for bdm in srv.get("block_device_mapping_v2") or []:
            if bdm.get("source_type") == "image" and bdm.get("destination_type", "local") \
                    == "local" and str(bdm.get("boot_index", "0")) == "0":
                image_id = image_id or bdm.get("uuid", "")
            elif bdm.get("source_type") in ("volume", "snapshot") or \
                    bdm.get("destination_type") == "volume":
                raise BadRequest("Block device mappings with volumes are not supported yet "
                                 "(no volume service); boot from an image.",
                                 field="block_device_mapping_v2")
        if not image_id:
            raise BadRequest("Missing imageRef attribute: a server needs an image.",
                             field="imageRef")
        flavor_ref = srv.get("flavorRef")
        if not flavor_ref:
            raise BadRequest("Missing flavorRef attribute.", field="flavorRef")
        flavor_id = str(flavor_ref).rstrip("/").rsplit("/", 1)[-1]
        image_id = str(image_id).rstrip("/").rsplit("/", 1)[-1]
        networks = srv.get("networks", ... )
        if networks is ...:
            if c.mv >= V(2, 37):
                raise BadRequest("Invalid input for field/attribute server: 'networks' is a "
                                 "required property (a list, 'auto' or 'none').",
                                 field="networks")
            networks = "auto"
        if isinstance(networks, str):
            if networks not in ("auto", "none"):
                raise BadRequest(f"Invalid networks value {networks!r}: a list, 'auto' or "
                                 "'none'.", field="networks")
        elif isinstance(networks, list):
            for n in networks:
                if not isinstance(n, dict) or not ({"uuid", "port"} & set(n)):
                    raise BadRequest("Each requested network needs a uuid or a port.",
                                     field="networks")
        else:
            raise BadRequest("networks must be a list, 'auto' or 'none'.", field="networks")
        metadata = srv.get("metadata") or {}
        if not isinstance(metadata, dict) or any(not isinstance(v, str) or len(k) > 255 or
                                                 len(v) > 255 for k, v in metadata.items()):
            raise BadRequest("Invalid metadata: string keys and values of at most 255 "
                             "characters.", field="metadata")
        config_drive = srv.get("config_drive", False)
        if isinstance(config_drive, str):
            config_drive = config_drive.lower() in ("true", "1", "yes")
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        tags = srv.get("tags") or []
        if tags and c.mv < V(2, 52):
            raise BadRequest("Tags on create need microversion 2.52 or later.", field="tags")
        desc = srv.get("description")
        if desc is not None and (c.mv < V(2, 19) or not isinstance(desc, str) or
                                 len(desc) > 255):
            raise BadRequest("Invalid description: a string of at most 255 characters "
                             "(microversion 2.19 or later).", field="description")
        hostname = srv.get("hostname")
        if hostname is not None and c.mv < V(2, 90):
            raise BadRequest("hostname needs microversion 2.90 or later.", field="hostname")
        user_data = srv.get("user_data")
        if user_data is not None and not isinstance(user_data, str):
            raise BadRequest("user_data must be a base64 string.", field="user_data")
        if c.mv >= V(2, 57) and srv.get("personality"):
            raise BadRequest("personality is not supported since microversion 2.57; use "
                             "user_data.", field="personality")
        return CreateRequest(
            name=name, image_id=image_id, flavor_id=flavor_id, key_name=srv.get("key_name"),
            user_data=user_data, config_drive=bool(config_drive), metadata=metadata,
            availability_zone=srv.get("availability_zone"),
            min_count=_int(srv.get("min_count", 1), "min_count", minimum=1),
            max_count=_int(srv.get("max_count", srv.get("min_count", 1)), "max_count",
                           minimum=1),
            networks=networks,
            security_groups=tuple(g.get("name", "default") for g in
                                  (srv.get("security_groups") or [{"name": "default"}])),
            hostname=hostname, description=desc, tags=tuple(tags),
            group_id=hints.get("group"), scheduler_hints=hints,
            access_ipv4=srv.get("accessIPv4") or "", access_ipv6=srv.get("accessIPv6") or "")

    async def create_server(self, c: Call) -> Response:
        body = await json_body(c.request)
        req = self._create_request(c, body)
        servers = await call(self.svc.create_servers, c.ctx, req)
        if (body.get("server") or {}).get("return_reservation_id"):
            return _json({"reservation_id": servers[0].reservation_id}, 202)
        first = servers[0]
        out = {"id": first.id, "links": render.link(self.base_url(), "servers", first.id),
               "OS-DCF:diskConfig": "MANUAL",
               "security_groups": [{"name": g} for g in first.security_groups],
               "adminPass": secrets.token_urlsafe(9)}
        return _json({"server": out}, 202,
                     headers={"Location": f"{self.base_url()}/v2.1/servers/{first.id}"})

    async def update_server(self, c: Call) -> Response:
        body = _object(await json_body(c.request), "server")
        kwargs: dict = {}
        if "name" in body:
            kwargs["name"] = _name(body["name"])
        if "description" in body:
            if c.mv < V(2, 19):
                raise BadRequest("description needs microversion 2.19 or later.",
                                 field="description")
            kwargs["description"] = body["description"]
        if "hostname" in body:
            if c.mv < V(2, 90):
                raise BadRequest("hostname needs microversion 2.90 or later.", field="hostname")
            kwargs["hostname"] = body["hostname"]
        if "accessIPv4" in body:
            kwargs["access_ipv4"] = body["accessIPv4"] or ""
        if "accessIPv6" in body:
            kwargs["access_ipv6"] = body["accessIPv6"] or ""
        server = await call(lambda: self.svc.update_server(c.ctx, c.params["id"], **kwargs))
        return _json({"server": (await call(lambda: self._render(c, [server], single=True)))[0]})

    async def delete_server(self, c: Call) -> Response:
        await call(self.svc.delete_server, c.ctx, c.params["id"])
        return _empty(204)

    # -- actions ---------------------------------------------------------------------------
    async def server_action(self, c: Call) -> Response:
        body = await json_body(c.request)
        if not isinstance(body, dict) or len(body) != 1:
            raise BadRequest("An action body holds exactly one action name.", field="action")
        (name, args), = body.items()
        handler = ACTIONS.get(name)
        if handler is None:
            raise BadRequest(f"There is no such action: {name}", field="action")
        return await handler(self, c, args if isinstance(args, dict) else {})

    async def _simple(self, c: Call, method: str, **kw) -> Response:
        await call(lambda: getattr(self.svc, method)(c.ctx, c.params["id"], **kw))
        return _empty(202)

    async def a_reboot(self, c, args):
        kind = str(args.get("type", "")).upper()
        if kind not in ("SOFT", "HARD"):
            raise BadRequest("Invalid reboot type: use SOFT or HARD.", field="reboot.type")
        return await self._simple(c, "reboot", hard=kind == "HARD")

    async def a_lock(self, c, args):
        reason = args.get("locked_reason") if c.mv >= V(2, 73) else None
        return await self._simple(c, "lock", reason=reason)

    async def a_rebuild(self, c, args):
        image = args.get("imageRef")
        if not image:
            raise BadRequest("rebuild needs imageRef.", field="imageRef")
        kw: dict = {"image_id": str(image).rstrip("/").rsplit("/", 1)[-1],
                    "name": args.get("name"), "metadata": args.get("metadata")}
        if "user_data" in args and c.mv >= V(2, 57):
            kw["user_data"] = args["user_data"]
        if "key_name" in args and c.mv >= V(2, 54):
            kw["key_name"] = args["key_name"]
        if "description" in args and c.mv >= V(2, 19):
            kw["description"] = args["description"]
        server = await call(lambda: self.svc.rebuild(c.ctx, c.params["id"], **kw))
        server = await call(self.svc.get_server, c.ctx, server.id)
        body = (await call(lambda: self._render(c, [server], single=True)))[0]
        body["adminPass"] = secrets.token_urlsafe(9)
        return _json({"server": body}, 202)

    async def a_resize(self, c, args):
        ref = args.get("flavorRef")
        if not ref:
            raise BadRequest("resize needs flavorRef.", field="flavorRef")
        return await self._simple(c, "resize", flavor_id=str(ref).rstrip("/").rsplit("/", 1)[-1])

    async def a_create_image(self, c, args):
        name = _name(args.get("name"))
        image_id = await call(lambda: self.svc.create_image(c.ctx, c.params["id"], name=name,
                                                            metadata=args.get("metadata")))
        location = f"{self.base_url()}/images/{image_id}"
        if c.mv >= V(2, 45):
            return _json({"image_id": image_id}, 202)
        return Response(status_code=202, headers={"Location": location})

    async def a_console_output(self, c, args):
        length = args.get("length")
        if length is not None:
            length = _int(length, "length", minimum=-1)
            if length == -1:
                length = None
        if self.driver is None:
            raise Conflict("No compute driver runs in this process.")
        output = await call(lambda: self.svc.console_output(c.ctx, c.params["id"],
                                                            length=length, driver=self.driver))
        return _json({"output": output})

    async def _console(self, c, protocol: str, kind: str) -> dict:
        if protocol == "vnc" and kind not in ("novnc",):
            raise BadRequest(f"Unsupported console type {kind}; allowed: novnc.", field="type")
        if protocol == "serial" and kind != "serial":
            raise BadRequest(f"Unsupported console type {kind}; allowed: serial.", field="type")
        if protocol not in ("vnc", "serial"):
            raise BadRequest(f"Unsupported console protocol {protocol}; allowed: vnc, serial.",
                             field="protocol")
        if self.driver is None:
            raise Conflict("No compute driver runs in this process.")
        token = await call(self.svc.issue_console_token, c.ctx, c.params["id"], protocol,
                           self.driver.console_endpoint)
        return {"protocol": protocol, "type": kind, "url": self.console_url(protocol, token)}

    async def a_vnc_console(self, c, args):
        body = await self._console(c, "vnc", args.get("type", "novnc"))
        return _json({"console": {"type": body["type"], "url": body["url"]}})

    async def a_serial_console(self, c, args):
        body = await self._console(c, "serial", args.get("type", "serial"))
        return _json({"console": {"type": body["type"], "url": body["url"]}})

    async def remote_console(self, c: Call) -> Response:
        rc = _object(await json_body(c.request), "remote_console")
        body = await self._console(c, str(rc.get("protocol", "")), str(rc.get("type", "")))
        return _json({"remote_console": body})

    # -- metadata --------------------------------------------------------------------------
    async def list_metadata(self, c: Call) -> Response:
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        return _json({"metadata": server.metadata_})

    async def _set_meta(self, c: Call, replace: bool) -> Response:
        items = (await json_body(c.request)).get("metadata")
        if not isinstance(items, dict):
            raise BadRequest("Malformed request body: 'metadata' must be an object.",
                             field="metadata")
        new = await call(lambda: self.svc.set_metadata(c.ctx, c.params["id"], items,
                                                       replace=replace))
        return _json({"metadata": new})

    async def update_metadata(self, c: Call) -> Response:
        return await self._set_meta(c, False)

    async def replace_metadata(self, c: Call) -> Response:
        return await self._set_meta(c, True)

    async def show_metadata_item(self, c: Call) -> Response:
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        key = c.params["key"]
        if key not in server.metadata_:
            raise NotFound(f"Metadata item was not found: {key}")
        return _json({"meta": {key: server.metadata_[key]}})

    async def set_metadata_item(self, c: Call) -> Response:
        meta = (await json_body(c.request)).get("meta")
        key = c.params["key"]
        if not isinstance(meta, dict) or list(meta) != [key]:
            raise BadRequest("Request body and URI mismatch: 'meta' must hold exactly the "
                             "key in the URL.", field="meta")
        await call(lambda: self.svc.set_metadata(c.ctx, c.params["id"], meta, replace=False))
        return _json({"meta": meta})

    async def delete_metadata_item(self, c: Call) -> Response:
        await call(self.svc.delete_metadata, c.ctx, c.params["id"], c.params["key"])
        return _empty(204)

    # -- tags ------------------------------------------------------------------------------
    def _tags_mv(self, c: Call) -> None:
        if c.mv < V(2, 26):
            raise NotFound("Server tags need microversion 2.26 or later.")

    async def list_tags(self, c: Call) -> Response:
        self._tags_mv(c)
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        return _json({"tags": server.tags})

    async def replace_tags(self, c: Call) -> Response:
        self._tags_mv(c)
        tags = (await json_body(c.request)).get("tags")
        if not isinstance(tags, list):
            raise BadRequest("'tags' must be a list.", field="tags")
        new = await call(lambda: self.svc.set_tags(c.ctx, c.params["id"], tags))
        return _json({"tags": new})

    async def delete_tags(self, c: Call) -> Response:
        self._tags_mv(c)
        await call(lambda: self.svc.set_tags(c.ctx, c.params["id"], []))
        return _empty(204)

    async def check_tag(self, c: Call) -> Response:
        self._tags_mv(c)
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        if c.params["tag"] not in server.tags:
            raise NotFound(f"Tag {c.params['tag']} could not be found.")
        return _empty(204)

    async def add_tag(self, c: Call) -> Response:
        self._tags_mv(c)
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        existed = c.params["tag"] in server.tags
        await call(lambda: self.svc.set_tags(c.ctx, c.params["id"], None, add=c.params["tag"]))
        return Response(status_code=204 if existed else 201, headers={
            "Location": f"{self.base_url()}/v2.1/servers/{server.id}/tags/{c.params['tag']}"})

    async def delete_tag(self, c: Call) -> Response:
        self._tags_mv(c)
        await call(lambda: self.svc.set_tags(c.ctx, c.params["id"], None,
                                             remove=c.params["tag"]))
        return _empty(204)

    # -- actions log, addresses ------------------------------------------------------------
    async def list_actions(self, c: Call) -> Response:
        actions = await call(self.svc.list_actions, c.ctx, c.params["id"])
        return _json({"instanceActions": [render.action(a, mv=c.mv, is_admin=c.ctx.is_admin,
                                                         with_events=False)
                                          for a in actions]})

    async def show_action(self, c: Call) -> Response:
        action = await call(self.svc.get_action, c.ctx, c.params["id"], c.params["req"])
        return _json({"instanceAction": render.action(action, mv=c.mv,
                                                      is_admin=c.ctx.is_admin,
                                                      with_events=True)})

    async def server_ips(self, c: Call) -> Response:
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        addrs = await call(self.addresses, [server.id])
        return _json({"addresses": {net: [{"version": a["version"], "addr": a["addr"]}
                                          for a in items]
                                    for net, items in addrs.get(server.id, {}).items()}})

    async def server_security_groups(self, c: Call) -> Response:
        server = await call(self.svc.get_server, c.ctx, c.params["id"])
        return _json({"security_groups": [{"name": g, "id": g, "description": "",
                                           "rules": [], "tenant_id": server.project_id}
                                          for g in server.security_groups]})


ACTIONS: dict[str, Callable[..., Awaitable[Response]]] = {
    "os-start": lambda api, c, a: api._simple(c, "start"),
    "os-stop": lambda api, c, a: api._simple(c, "stop"),
    "reboot": ComputeApi.a_reboot,
    "pause": lambda api, c, a: api._simple(c, "pause"),
    "unpause": lambda api, c, a: api._simple(c, "unpause"),
    "suspend": lambda api, c, a: api._simple(c, "suspend"),
    "resume": lambda api, c, a: api._simple(c, "resume"),
    "lock": ComputeApi.a_lock,
    "unlock": lambda api, c, a: api._simple(c, "unlock"),
    "rebuild": ComputeApi.a_rebuild,
    "resize": ComputeApi.a_resize,
    "confirmResize": lambda api, c, a: api._simple(c, "confirm_resize"),
    "revertResize": lambda api, c, a: api._simple(c, "revert_resize"),
    "createImage": ComputeApi.a_create_image,
    "os-getConsoleOutput": ComputeApi.a_console_output,
    "os-getVNCConsole": ComputeApi.a_vnc_console,
    "os-getSerialConsole": ComputeApi.a_serial_console,
}


def _public(method: str, path: str) -> bool:
    return path in ("/", "/v2.1", "/v2.1/")


def build_app(api: ComputeApi, *, validator):
    return build_service_app("compute", api.routes(), dialect=NovaDialect(),
                             validator=validator, auth_required=True, public=_public)


def network_addresses(network) -> Callable[[list[str]], dict]:
    """Nova's `addresses` from the network service's view of server ports."""
    def addresses(server_ids: list[str]) -> dict:
        raw = network.server_addresses(server_ids)
        return {sid: {net: [{"version": a["version"], "addr": a["addr"],
                             "OS-EXT-IPS:type": a.get("type", "fixed"),
                             "OS-EXT-IPS-MAC:mac_addr": a.get("mac")} for a in items]
                      for net, items in nets.items()}
                for sid, nets in raw.items()}
    return addresses
