"""Identity API (Keystone v3): HTTP in, one service call, HTTP out."""

from __future__ import annotations

import json
from functools import partial

from starlette.concurrency import run_in_threadpool as call
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stackbox.common.errors import BadRequest, NotFound
from stackbox.common.http.app import build_service_app
from stackbox.common.http.body import json_body, validate
from stackbox.common.http.errors import KeystoneDialect
from stackbox.common.http.middleware import context_of
from stackbox.identity import render, schemas
from stackbox.identity.service import IdentityService

VERSION = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
           "media-types": [{"base": "application/json",
                            "type": "application/vnd.openstack.identity-v3+json"}]}


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json",
                    headers=headers)


def _bool(raw: str | None) -> bool | None:
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes", ""):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value {raw!r} for a boolean filter; use true or false.")


class IdentityApi:
    def __init__(self, svc: IdentityService):
        self.svc = svc

    @staticmethod
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def collection(self, request: Request, key: str, items: list) -> Response:
        return _json({key: items, "links": {"self": f"{self.base(request)}{request.url.path}",
                                             "previous": None, "next": None}})

    # -- versions ----------------------------------------------------------
    async def versions(self, request):
        v = dict(VERSION, links=[{"rel": "self", "href": f"{self.base(request)}/v3/"}])
        return _json({"versions": {"values": [v]}}, status=300)

    async def version(self, request):
        v = dict(VERSION, links=[{"rel": "self", "href": f"{self.base(request)}/v3/"}])
        return _json({"version": v})

    # -- tokens ------------------------------------------------------------
    async def issue_token(self, request):
        data = await json_body(request)
        auth = data.get("auth")
        if not isinstance(auth, dict) or not isinstance(auth.get("identity"), dict):
            raise BadRequest("Invalid input for field 'auth.identity': 'identity' is a "
                             "required property.", field="auth.identity")
        info = await call(self.svc.issue_token, identity=auth["identity"],
                          scope=auth.get("scope"))
        catalog = None if "nocatalog" in request.query_params else await call(self.svc.catalog)
        return _json(render.token(info, catalog), status=201,
                     headers={"X-Subject-Token": info.token})

    def _subject(self, request) -> str:
        subject = request.headers.get("x-subject-token")
        if not subject:
            raise NotFound("Could not find token: the X-Subject-Token header is missing.")
        return subject

    async def validate_token(self, request):
        ctx = context_of(request)
        subject = self._subject(request)
        info = await call(self.svc.check_token, ctx, subject)
        if request.method == "HEAD":
            return Response(status_code=200, headers={"X-Subject-Token": subject})
        catalog = None if "nocatalog" in request.query_params else await call(self.svc.catalog)
        return _json(render.token(info, catalog), headers={"X-Subject-Token": subject})

    async def revoke_token(self, request):
        await call(self.svc.revoke_token, context_of(request), self._subject(request))
        return Response(status_code=204)

    async def auth_catalog(self, request):
        catalog = render.scoped_catalog(await call(self.svc.catalog),
                                        context_of(request).project_id)
        return _json({"catalog": catalog, "links": {"self": str(request.url)}})

    async def auth_projects(self, request):
        items = await call(self.svc.auth_projects, context_of(request))
        return self.collection(request, "projects",
                               [render.project(self.base(request), p) for p in items])

    async def auth_domains(self, request):
        items = await call(self.svc.auth_domains, context_of(request))
        return self.collection(request, "domains",
                               [render.domain(self.base(request), d) for d in items])

    async def auth_system(self, request):
        return self.collection(request, "system", [])

    # -- generic CRUD plumbing ---------------------------------------------
    def crud_routes(self, plural: str, singular: str, renderer, *, filters: tuple[str, ...],
                    create_schema, update_schema, svc_names: str) -> list[Route]:
        svc = self.svc
        list_fn = getattr(svc, f"list_{svc_names}")
        get_fn = getattr(svc, f"get_{singular}")
        create_fn = getattr(svc, f"create_{singular}")
        update_fn = getattr(svc, f"update_{singular}")
        delete_fn = getattr(svc, f"delete_{singular}")
        id_key = f"{singular}_id"

        async def list_(request):
            q = request.query_params
            kwargs = {f: (_bool(q[f]) if f == "enabled" else q[f]) for f in filters if f in q}
            items = await call(list_fn, context_of(request), **kwargs)
            return self.collection(request, plural, [renderer(self.base(request), i)
                                                     for i in items])

        async def get(request):
            obj = await call(get_fn, context_of(request), request.path_params[id_key])
            return _json({singular: renderer(self.base(request), obj)})

        async def create(request):
            body = validate(create_schema, await json_body(request), root=singular)
            obj = await call(create_fn, context_of(request), **CREATE_ARGS[singular](body))
            return _json({singular: renderer(self.base(request), obj)}, status=201)

        async def update(request):
            body = validate(update_schema, await json_body(request), root=singular)
            changes = body.model_dump(exclude_unset=True)
            changes.pop("options", None)
            if singular not in ("project",):
                changes.pop("tags", None)
            obj = await call(update_fn, context_of(request), request.path_params[id_key],
                             changes)
            return _json({singular: renderer(self.base(request), obj)})

        async def delete(request):
            await call(delete_fn, context_of(request), request.path_params[id_key])
            return Response(status_code=204)

        return [Route(f"/v3/{plural}", list_, methods=["GET", "HEAD"]),
                Route(f"/v3/{plural}", create, methods=["POST"]),
                Route(f"/v3/{plural}/{{{id_key}}}", get, methods=["GET", "HEAD"]),
                Route(f"/v3/{plural}/{{{id_key}}}", update, methods=["PATCH"]),
                Route(f"/v3/{plural}/{{{id_key}}}", delete, methods=["DELETE"])]

    # -- users -------------------------------------------------------------
    async def change_password(self, request):
        body = validate(schemas.PasswordChange, await json_body(request), root="user")
        await call(self.svc.change_password, context_of(request), request.path_params["user_id"],
                   original=body.original_password, new=body.password)
        return Response(status_code=204)

    async def user_projects(self, request):
        items = await call(self.svc.list_user_projects, context_of(request),
                           request.path_params["user_id"])
        return self.collection(request, "projects",
                               [render.project(self.base(request), p) for p in items])

    async def user_groups(self, request):
        items = await call(self.svc.list_user_groups, context_of(request),
                           request.path_params["user_id"])
        return self.collection(request, "groups",
                               [render.group(self.base(request), g) for g in items])

    # -- groups ------------------------------------------------------------
    async def group_users(self, request):
        items = await call(self.svc.list_group_users, context_of(request),
                           request.path_params["group_id"])
        return self.collection(request, "users",
                               [render.user(self.base(request), u) for u in items])

    async def group_member(self, request):
        ctx, p = context_of(request), request.path_params
        fn = {"PUT": self.svc.add_user_to_group, "HEAD": self.svc.check_user_in_group,
              "GET": self.svc.check_user_in_group,
              "DELETE": self.svc.remove_user_from_group}[request.method]
        await call(fn, ctx, p["group_id"], p["user_id"])
        return Response(status_code=204)

    # -- implied roles -----------------------------------------------------
    async def implied_roles(self, request):
        prior, implied = await call(self.svc.list_implied_roles, context_of(request),
                                    request.path_params["prior_id"])
        base = self.base(request)
        return _json({"role_inference": {"prior_role": render.role_ref(base, prior),
                                         "implies": [render.role_ref(base, r) for r in implied]},
                      "links": {"self": f"{base}{request.url.path}"}})

    async def implied_role(self, request):
        ctx, p = context_of(request), request.path_params
        fn = {"PUT": self.svc.create_implied_role, "GET": self.svc.check_implied_role,
              "HEAD": self.svc.check_implied_role}.get(request.method)
        if fn is None:
            await call(self.svc.delete_implied_role, ctx, p["prior_id"], p["implied_id"])
            return Response(status_code=204)
        prior, implied = await call(fn, ctx, p["prior_id"], p["implied_id"])
        if request.method == "HEAD":
            return Response(status_code=204)
        base = self.base(request)
        return _json({"role_inference": {"prior_role": render.role_ref(base, prior),
                                         "implies": render.role_ref(base, implied)},
                      "links": {"self": f"{base}{request.url.path}"}},
                     status=201 if request.method == "PUT" else 200)

    async def role_inferences(self, request):
        rules = await call(self.svc.role_inferences, context_of(request))
        base = self.base(request)
        return _json({"role_inferences": [
            {"prior_role": render.role_ref(base, p),
             "implies": [render.role_ref(base, r) for r in imp]} for p, imp in rules],
            "links": {"self": f"{base}{request.url.path}"}})

    # -- grants ------------------------------------------------------------
    @staticmethod
    def _grant_key(request, target: str, actor: str) -> dict:
        p = request.path_params
        return dict(target_type=target[:-1], target_id=p["target_id"],
                    actor_type=actor[:-1], actor_id=p["actor_id"], role_id=p.get("role_id"))

    async def grant(self, request, *, target: str, actor: str):
        ctx, key = context_of(request), self._grant_key(request, target, actor)
        fn = {"PUT": self.svc.create_grant, "HEAD": self.svc.check_grant,
              "GET": self.svc.check_grant, "DELETE": self.svc.revoke_grant}[request.method]
        await call(fn, ctx, **key)
        return Response(status_code=204)

    async def list_grants(self, request, *, target: str, actor: str):
        key = self._grant_key(request, target, actor)
        key.pop("role_id")
        roles = await call(self.svc.list_grants, context_of(request), **key)
        return self.collection(request, "roles",
                               [render.role(self.base(request), r) for r in roles])

    async def role_assignments(self, request):
        q = request.query_params
        include_names = _bool(q.get("include_names")) or False
        rows = await call(self.svc.list_role_assignments, context_of(request),
                          user_id=q.get("user.id"), group_id=q.get("group.id"),
                          role_id=q.get("role.id"), project_id=q.get("scope.project.id"),
                          domain_id=q.get("scope.domain.id"),
                          effective="effective" in q and _bool(q.get("effective")) is not False)
        base = self.base(request)
        return _json({"role_assignments": [render.assignment(base, r, include_names=include_names)
                                           for r in rows],
                      "links": {"self": f"{base}{request.url.path}", "previous": None,
                                "next": None}})

    # -- catalog -----------------------------------------------------------
    def _read_routes(self, plural, singular, renderer, list_fn, get_fn, filters) -> list[Route]:
        async def list_(request):
            q = request.query_params
            kwargs = {("type_" if k == "type" else k): q[k] for k in filters if k in q}
            items = await call(list_fn, context_of(request), **kwargs)
            return self.collection(request, plural, [renderer(self.base(request), i)
                                                     for i in items])

        async def get(request):
            obj = await call(get_fn, context_of(request), request.path_params["id"])
            return _json({singular: renderer(self.base(request), obj)})

        return [Route(f"/v3/{plural}", list_, methods=["GET", "HEAD"]),
                Route(f"/v3/{plural}/{{id}}", get, methods=["GET", "HEAD"])]

    # -- application credentials -----------------------------------------
    async def list_app_creds(self, request):
        uid = request.path_params["user_id"]
        creds = await call(self.svc.list_app_creds, context_of(request), uid,
                           name=request.query_params.get("name"))
        out = []
        for c in creds:
            roles = await call(self.svc.role_names, c.roles)
            out.append(render.app_cred(self.base(request), c, roles))
        return self.collection(request, "application_credentials", out)

    async def get_app_cred(self, request):
        p = request.path_params
        c = await call(self.svc.get_app_cred, context_of(request), p["user_id"], p["cred_id"])
        roles = await call(self.svc.role_names, c.roles)
        return _json({"application_credential": render.app_cred(self.base(request), c, roles)})

    async def create_app_cred(self, request):
        body = validate(schemas.AppCredCreate, await json_body(request),
                        root="application_credential")
        roles = ([r.model_dump(exclude_none=True) for r in body.roles]
                 if body.roles is not None else None)
        c, secret = await call(self.svc.create_app_cred, context_of(request),
                               request.path_params["user_id"], name=body.name,
                               secret=body.secret, description=body.description or "",
                               expires_at=body.expires_at, roles=roles,
                               unrestricted=body.unrestricted)
        role_objs = await call(self.svc.role_names, c.roles)
        return _json({"application_credential": render.app_cred(
            self.base(request), c, role_objs, secret=secret)}, status=201)

    async def delete_app_cred(self, request):
        p = request.path_params
        await call(self.svc.delete_app_cred, context_of(request), p["user_id"], p["cred_id"])
        return Response(status_code=204)

    # -- EC2 credentials ---------------------------------------------------
    async def list_ec2(self, request):
        creds = await call(self.svc.list_ec2, context_of(request), request.path_params["user_id"])
        return self.collection(request, "credentials",
                               [render.ec2(self.base(request), c) for c in creds])

    async def get_ec2(self, request):
        p = request.path_params
        c = await call(self.svc.get_ec2, context_of(request), p["user_id"], p["access"])
        return _json({"credential": render.ec2(self.base(request), c)})

    async def create_ec2(self, request):
        body = validate(schemas.Ec2Create, await json_body(request))
        c = await call(self.svc.create_ec2, context_of(request), request.path_params["user_id"],
                       project_id=body.tenant_id)
        return _json({"credential": render.ec2(self.base(request), c)}, status=201)

    async def delete_ec2(self, request):
        p = request.path_params
        await call(self.svc.delete_ec2, context_of(request), p["user_id"], p["access"])
        return Response(status_code=204)

    # -- the route table ---------------------------------------------------
    def routes(self) -> list[Route]:
        s = schemas
        r = [
            Route("/", self.versions, methods=["GET", "HEAD"]),
            Route("/v3", self.version, methods=["GET", "HEAD"]),
            Route("/v3/", self.version, methods=["GET", "HEAD"]),
            Route("/v3/auth/tokens", self.issue_token, methods=["POST"]),
            Route("/v3/auth/tokens", self.validate_token, methods=["GET", "HEAD"]),
            Route("/v3/auth/tokens", self.revoke_token, methods=["DELETE"]),
            Route("/v3/auth/catalog", self.auth_catalog, methods=["GET", "HEAD"]),
            Route("/v3/auth/projects", self.auth_projects, methods=["GET", "HEAD"]),
            Route("/v3/auth/domains", self.auth_domains, methods=["GET", "HEAD"]),
            Route("/v3/auth/system", self.auth_system, methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/password", self.change_password, methods=["POST"]),
            Route("/v3/users/{user_id}/projects", self.user_projects, methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/groups", self.user_groups, methods=["GET", "HEAD"]),
            Route("/v3/groups/{group_id}/users", self.group_users, methods=["GET", "HEAD"]),
            Route("/v3/groups/{group_id}/users/{user_id}", self.group_member,
                  methods=["PUT", "HEAD", "GET", "DELETE"]),
            Route("/v3/roles/{prior_id}/implies", self.implied_roles, methods=["GET", "HEAD"]),
            Route("/v3/roles/{prior_id}/implies/{implied_id}", self.implied_role,
                  methods=["PUT", "GET", "HEAD", "DELETE"]),
            Route("/v3/role_inferences", self.role_inferences, methods=["GET", "HEAD"]),
            Route("/v3/role_assignments", self.role_assignments, methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/application_credentials", self.list_app_creds,
                  methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/application_credentials", self.create_app_cred,
                  methods=["POST"]),
            Route("/v3/users/{user_id}/application_credentials/{cred_id}", self.get_app_cred,
                  methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/application_credentials/{cred_id}",
                  self.delete_app_cred, methods=["DELETE"]),
            Route("/v3/users/{user_id}/credentials/OS-EC2", self.list_ec2,
                  methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/credentials/OS-EC2", self.create_ec2, methods=["POST"]),
            Route("/v3/users/{user_id}/credentials/OS-EC2/{access}", self.get_ec2,
                  methods=["GET", "HEAD"]),
            Route("/v3/users/{user_id}/credentials/OS-EC2/{access}", self.delete_ec2,
                  methods=["DELETE"]),
        ]
        for target in ("projects", "domains"):
            for actor in ("users", "groups"):
                prefix = f"/v3/{target}/{{target_id}}/{actor}/{{actor_id}}/roles"
                kw = dict(target=target, actor=actor)
                r += [Route(prefix, partial(self.list_grants, **kw), methods=["GET", "HEAD"]),
                      Route(prefix + "/{role_id}", partial(self.grant, **kw),
                            methods=["PUT", "HEAD", "GET", "DELETE"])]
        r += self.crud_routes("domains", "domain", render.domain, filters=("name", "enabled"),
                              create_schema=s.DomainCreate, update_schema=s.DomainUpdate,
                              svc_names="domains")
        r += self.crud_routes("projects", "project", render.project,
                              filters=("name", "domain_id", "enabled"),
                              create_schema=s.ProjectCreate, update_schema=s.ProjectUpdate,
                              svc_names="projects")
        r += self.crud_routes("users", "user", render.user,
                              filters=("name", "domain_id", "enabled"),
                              create_schema=s.UserCreate, update_schema=s.UserUpdate,
                              svc_names="users")
        r += self.crud_routes("groups", "group", render.group, filters=("name", "domain_id"),
                              create_schema=s.GroupCreate, update_schema=s.GroupUpdate,
                              svc_names="groups")
        r += self.crud_routes("roles", "role", render.role, filters=("name",),
                              create_schema=s.RoleCreate, update_schema=s.RoleUpdate,
                              svc_names="roles")
        r += self._read_routes("regions", "region", render.region, self.svc.list_regions,
                               self.svc.get_region, ())
        r += self._read_routes("services", "service", render.service, self.svc.list_services,
                               self.svc.get_service, ("type", "name"))
        r += self._read_routes("endpoints", "endpoint", render.endpoint,
                               self.svc.list_endpoints, self.svc.get_endpoint,
                               ("interface", "service_id", "region_id"))
        return r


# request body -> keyword arguments of the service's create_<resource>
CREATE_ARGS = {
    "domain": lambda b: dict(name=b.name, description=b.description, enabled=b.enabled,
                             domain_id=b.id or b.explicit_domain_id),
    "project": lambda b: dict(name=b.name, domain_id=b.domain_id or b.parent_id,
                              description=b.description, enabled=b.enabled, tags=b.tags,
                              extra=b.extras()),
    "user": lambda b: dict(name=b.name, domain_id=b.domain_id, password=b.password,
                           enabled=b.enabled, default_project_id=b.default_project_id,
                           description=b.description, extra=b.extras()),
    "group": lambda b: dict(name=b.name, domain_id=b.domain_id, description=b.description),
    "role": lambda b: dict(name=b.name, description=b.description),
}


def _public(method: str, path: str) -> bool:
    return path in ("/", "/v3", "/v3/") or (method == "POST" and path == "/v3/auth/tokens")


def build_app(svc: IdentityService, *, auth_url):
    api = IdentityApi(svc)
    return build_service_app("identity", api.routes(), dialect=KeystoneDialect(auth_url),
                             validator=svc, auth_required=True, public=_public)

