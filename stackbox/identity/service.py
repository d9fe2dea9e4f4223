"""Identity rules and transactions: domains, projects, users, groups, roles,
assignments, catalog and credentials. Every public method takes the caller's
RequestContext first and enforces policy before touching anything."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from stackbox.common.db import Database, new_id, utcnow
from stackbox.common.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from stackbox.common.http.context import RequestContext
from stackbox.identity import passwords
from stackbox.identity.auth import Authenticator, TokenInfo
from stackbox.identity.models import (ApplicationCredential, Assignment, Domain, Ec2Credential,
                                      Endpoint, Group, GroupMembership, ImpliedRole, Project,
                                      Region, Role, Service, User)
from stackbox.identity.policy import enforce
from stackbox.identity.roles import (effective_roles, expand, expand_implied,
                                     implication_rules)
from stackbox.identity.tokens import KeyRing, TokenCodec

DEFAULT_DOMAIN = "default"


def _select(model, order_by, **filters):
    """SELECT model WHERE each given (not None) filter equals its column."""
    q = select(model).order_by(order_by)
    for column, value in filters.items():
        if value is not None:
            q = q.where(getattr(model, column) == value)
    return q


def _get(s, model, id_: str, kind: str):
    obj = s.get(model, id_) if id_ else None
    if obj is None:
        raise NotFound(f"Could not find {kind}: {id_}.")
    return obj


def _duplicate(kind: str, name: str, where: str = "") -> Conflict:
    return Conflict(f"Conflict occurred attempting to store {kind} - Duplicate entry found "
                    f"with name {name}{where}.")


class IdentityService:
    def __init__(self, db: Database, settings, *, generation=None):
        self.db = db
        self.settings = settings
        cfg = settings.identity
        self.cost = cfg.password_hash_cost
        self.keys = KeyRing(db, rotation=cfg.signing_key_rotation,
                            token_lifetime=cfg.token_expiration)
        self.auth = Authenticator(db, TokenCodec(self.keys), token_lifetime=cfg.token_expiration,
                                  password_cost=cfg.password_hash_cost,
                                  cache_seconds=cfg.token_cache_seconds,
                                  roles_for=effective_roles,
                                  password_cache_seconds=cfg.password_cache_seconds,
                                  generation=generation)

    # -- the TokenValidator protocol used by every service's middleware ------
    def validate_cached(self, token: str) -> RequestContext | None:
        info = self.auth.validate_cached(token)
        return info.context() if info else None

    def validate(self, token: str) -> RequestContext:
        return self.auth.validate(token).context()

    # -- tokens ------------------------------------------------------------
    def issue_token(self, *, identity: dict, scope) -> TokenInfo:
        return self.auth.issue(identity, scope)

    def check_token(self, ctx: RequestContext, subject: str) -> TokenInfo:
        try:
            info = self.auth.validate(subject)
        except Unauthorized:
            raise NotFound("Could not find token.")
        if not (ctx.is_admin or info.user.id == ctx.user_id):
            raise Forbidden("You are not authorized to perform the requested action: "
                            "identity:validate_token.")
        return info

    def revoke_token(self, ctx: RequestContext, subject: str) -> None:
        info = self.check_token(ctx, subject)
        self.auth.revoke(info)

    def catalog(self) -> list[dict]:
        with self.db.read() as s:
            services = list(s.scalars(select(Service).where(Service.enabled.is_(True))
                                      .order_by(Service.type)))
            endpoints = list(s.scalars(select(Endpoint).where(Endpoint.enabled.is_(True))))
        out = []
        for svc in services:
            eps = [{"id": e.id, "interface": e.interface, "region_id": e.region_id,
                    "region": e.region_id, "url": e.url}
                   for e in sorted(endpoints, key=lambda e: e.interface)
                   if e.service_id == svc.id]
            out.append({"id": svc.id, "type": svc.type, "name": svc.name, "endpoints": eps})
        return out

    def auth_projects(self, ctx: RequestContext) -> list[Project]:
        return self._user_projects(ctx.user_id)

    def auth_domains(self, ctx: RequestContext) -> list[Domain]:
        with self.db.read() as s:
            ids = set(s.scalars(select(Assignment.target_id).where(
                Assignment.actor_type == "user", Assignment.actor_id == ctx.user_id,
                Assignment.target_type == "domain")))
            return list(s.scalars(select(Domain).where(Domain.id.in_(ids),
                                                       Domain.enabled.is_(True))))

    # -- domains -----------------------------------------------------------
    def list_domains(self, ctx, *, name=None, enabled=None) -> list[Domain]:
        enforce(ctx, "list_domains")
        q = _select(Domain, Domain.name, name=name, enabled=enabled)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_domain(self, ctx, domain_id: str) -> Domain:
        enforce(ctx, "get_domain", {"domain_id": domain_id})
        with self.db.read() as s:
            return _get(s, Domain, domain_id, "domain")

    def create_domain(self, ctx, *, name: str, description: str = "", enabled: bool = True,
                      domain_id: str | None = None) -> Domain:
        enforce(ctx, "create_domain")
        try:
            with self.db.transaction() as s:
                if s.scalars(select(Domain).where(Domain.name == name)).first():
                    raise _duplicate("domain", name)
                d = Domain(id=domain_id or new_id(), name=name, description=description,
                           enabled=enabled)
                s.add(d)
            return d
        except IntegrityError:
            raise _duplicate("domain", name)

    def update_domain(self, ctx, domain_id: str, changes: dict) -> Domain:
        enforce(ctx, "update_domain")
        with self.db.transaction() as s:
            d = _get(s, Domain, domain_id, "domain")
            if d.id == DEFAULT_DOMAIN and changes.get("enabled") is False:
                raise Forbidden("The default domain cannot be disabled.")
            if "name" in changes and changes["name"] != d.name and s.scalars(
                    select(Domain).where(Domain.name == changes["name"])).first():
                raise _duplicate("domain", changes["name"])
            for k, v in changes.items():
                setattr(d, k, v)
        self.auth.forget()
        return d

    def delete_domain(self, ctx, domain_id: str) -> None:
        enforce(ctx, "delete_domain")
        with self.db.transaction() as s:
            d = _get(s, Domain, domain_id, "domain")
            if d.id == DEFAULT_DOMAIN:
                raise Forbidden("The default domain cannot be deleted.")
            if d.enabled:
                raise Forbidden("Cannot delete a domain that is enabled, please disable it "
                                "first.")
            for model in (Project, User, Group):
                if s.scalars(select(model).where(model.domain_id == d.id)).first():
                    raise Conflict(f"Domain {d.id} still owns {model.__name__.lower()}s; "
                                   f"delete them first.")
            s.execute(delete(Assignment).where(Assignment.target_type == "domain",
                                               Assignment.target_id == d.id))
            s.delete(d)
        self.auth.forget()

    # -- projects ----------------------------------------------------------
    def list_projects(self, ctx, *, name=None, domain_id=None, enabled=None) -> list[Project]:
        enforce(ctx, "list_projects")
        q = _select(Project, Project.name, name=name, domain_id=domain_id, enabled=enabled)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_project(self, ctx, project_id: str) -> Project:
        enforce(ctx, "get_project", {"project_id": project_id})
        with self.db.read() as s:
            return _get(s, Project, project_id, "project")

    def create_project(self, ctx, *, name: str, domain_id: str | None = None,
                       description: str = "", enabled: bool = True, tags=(),
                       extra: dict | None = None) -> Project:
        enforce(ctx, "create_project")
        domain_id = domain_id or ctx.project_domain_id or DEFAULT_DOMAIN
        try:
            with self.db.transaction() as s:
                _get(s, Domain, domain_id, "domain")
                if s.scalars(select(Project).where(Project.name == name,
                                                   Project.domain_id == domain_id)).first():
                    raise _duplicate("project", name, f" at domain ID {domain_id}")
                p = Project(id=new_id(), name=name, domain_id=domain_id,
                            description=description, enabled=enabled, tags=list(tags),
                            extra=extra or {})
                s.add(p)
            return p
        except IntegrityError:
            raise _duplicate("project", name, f" at domain ID {domain_id}")

    def update_project(self, ctx, project_id: str, changes: dict) -> Project:
        enforce(ctx, "update_project")
        with self.db.transaction() as s:
            p = _get(s, Project, project_id, "project")
            if "name" in changes and changes["name"] != p.name and s.scalars(
                    select(Project).where(Project.name == changes["name"],
                                          Project.domain_id == p.domain_id)).first():
                raise _duplicate("project", changes["name"], f" at domain ID {p.domain_id}")
            extra = dict(p.extra)
            for k, v in changes.items():
                if hasattr(Project, k) and k not in ("id", "domain_id", "extra"):
                    setattr(p, k, v)
                else:
                    extra[k] = v
            p.extra = extra
            if changes.get("enabled") is False:
                self.auth.add_revocation(project_id=p.id, session=s)
        self.auth.forget()
        return p

    def delete_project(self, ctx, project_id: str) -> None:
        enforce(ctx, "delete_project")
        with self.db.transaction() as s:
            p = _get(s, Project, project_id, "project")
            s.execute(delete(Assignment).where(Assignment.target_type == "project",
                                               Assignment.target_id == p.id))
            s.execute(delete(ApplicationCredential).where(
                ApplicationCredential.project_id == p.id))
            s.execute(delete(Ec2Credential).where(Ec2Credential.project_id == p.id))
            s.delete(p)
            self.auth.add_revocation(project_id=p.id, session=s)
        self.auth.forget()

    def list_user_projects(self, ctx, user_id: str) -> list[Project]:
        enforce(ctx, "list_user_projects", {"user_id": user_id})
        with self.db.read() as s:
            _get(s, User, user_id, "user")
        return self._user_projects(user_id)

    def _user_projects(self, user_id: str) -> list[Project]:
        with self.db.read() as s:
            group_ids = list(s.scalars(select(GroupMembership.group_id).where(
                GroupMembership.user_id == user_id)))
            ids = set(s.scalars(select(Assignment.target_id).where(
                Assignment.target_type == "project",
                or_((Assignment.actor_type == "user") & (Assignment.actor_id == user_id),
                    (Assignment.actor_type == "group") & Assignment.actor_id.in_(group_ids)))))
            return list(s.scalars(select(Project).where(Project.id.in_(ids))
                                  .order_by(Project.name)))

    # -- users -------------------------------------------------------------
    def list_users(self, ctx, *, name=None, domain_id=None, enabled=None) -> list[User]:
        enforce(ctx, "list_users")
        q = _select(User, User.name, name=name, domain_id=domain_id, enabled=enabled)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_user(self, ctx, user_id: str) -> User:
        enforce(ctx, "get_user", {"user_id": user_id})
        with self.db.read() as s:
            return _get(s, User, user_id, "user")

    def create_user(self, ctx, *, name: str, domain_id: str | None = None,
                    password: str | None = None, enabled: bool = True,
                    default_project_id: str | None = None, description: str = "",
                    extra: dict | None = None) -> User:
        enforce(ctx, "create_user")
        domain_id = domain_id or ctx.project_domain_id or DEFAULT_DOMAIN
        hashed = passwords.hash_password(password, cost=self.cost) if password else None
        try:
            with self.db.transaction() as s:
                _get(s, Domain, domain_id, "domain")
                if default_project_id:
                    _get(s, Project, default_project_id, "project")
                if s.scalars(select(User).where(User.name == name,
                                                User.domain_id == domain_id)).first():
                    raise _duplicate("user", name, f" at domain ID {domain_id}")
                u = User(id=new_id(), name=name, domain_id=domain_id, password_hash=hashed,
                         enabled=enabled, default_project_id=default_project_id,
                         description=description, extra=extra or {}, created_at=utcnow())
                s.add(u)
            return u
        except IntegrityError:
            raise _duplicate("user", name, f" at domain ID {domain_id}")

    def update_user(self, ctx, user_id: str, changes: dict) -> User:
        enforce(ctx, "update_user")
        changes = dict(changes)
        password = changes.pop("password", None)
        hashed = passwords.hash_password(password, cost=self.cost) if password else None
        with self.db.transaction() as s:
            u = _get(s, User, user_id, "user")
            if "name" in changes and changes["name"] != u.name and s.scalars(
                    select(User).where(User.name == changes["name"],
                                       User.domain_id == u.domain_id)).first():
                raise _duplicate("user", changes["name"], f" at domain ID {u.domain_id}")
            if changes.get("default_project_id"):
                _get(s, Project, changes["default_project_id"], "project")
            extra = dict(u.extra)
            for k, v in changes.items():
                if k in ("name", "enabled", "default_project_id", "description"):
                    setattr(u, k, v)
                elif k not in ("id", "domain_id"):
                    extra[k] = v
            u.extra = extra
            if hashed:
                u.password_hash = hashed
            if hashed or changes.get("enabled") is False:
                self.auth.add_revocation(user_id=u.id, session=s)
        self.auth.forget()
        return u

    def delete_user(self, ctx, user_id: str) -> None:
        enforce(ctx, "delete_user")
        with self.db.transaction() as s:
            u = _get(s, User, user_id, "user")
            s.execute(delete(Assignment).where(Assignment.actor_type == "user",
                                               Assignment.actor_id == u.id))
            s.execute(delete(GroupMembership).where(GroupMembership.user_id == u.id))
            s.execute(delete(ApplicationCredential).where(ApplicationCredential.user_id == u.id))
            s.execute(delete(Ec2Credential).where(Ec2Credential.user_id == u.id))
            s.delete(u)
            self.auth.add_revocation(user_id=u.id, session=s)
        self.auth.forget()

    def change_password(self, ctx, user_id: str, *, original: str, new: str) -> None:
        enforce(ctx, "change_password", {"user_id": user_id})
        with self.db.read() as s:
            u = _get(s, User, user_id, "user")
        if not passwords.verify_password(original, u.password_hash, cost=self.cost):
            raise Unauthorized("The request you have made requires authentication.")
        hashed = passwords.hash_password(new, cost=self.cost)
        with self.db.transaction() as s:
            s.get(User, user_id).password_hash = hashed
            self.auth.add_revocation(user_id=user_id, session=s)
        self.auth.forget()

    # -- groups ------------------------------------------------------------
    def list_groups(self, ctx, *, name=None, domain_id=None) -> list[Group]:
        enforce(ctx, "list_groups")
        q = _select(Group, Group.name, name=name, domain_id=domain_id)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_group(self, ctx, group_id: str) -> Group:
        enforce(ctx, "get_group")
        with self.db.read() as s:
            return _get(s, Group, group_id, "group")

    def create_group(self, ctx, *, name: str, domain_id: str | None = None,
                     description: str = "") -> Group:
        enforce(ctx, "create_group")
        domain_id = domain_id or DEFAULT_DOMAIN
        try:
            with self.db.transaction() as s:
                _get(s, Domain, domain_id, "domain")
                if s.scalars(select(Group).where(Group.name == name,
                                                 Group.domain_id == domain_id)).first():
                    raise _duplicate("group", name, f" at domain ID {domain_id}")
                g = Group(id=new_id(), name=name, domain_id=domain_id, description=description)
                s.add(g)
            return g
        except IntegrityError:
            raise _duplicate("group", name, f" at domain ID {domain_id}")

    def update_group(self, ctx, group_id: str, changes: dict) -> Group:
        enforce(ctx, "update_group")
        with self.db.transaction() as s:
            g = _get(s, Group, group_id, "group")
            for k in ("name", "description"):
                if k in changes:
                    setattr(g, k, changes[k])
        return g

    def delete_group(self, ctx, group_id: str) -> None:
        enforce(ctx, "delete_group")
        with self.db.transaction() as s:
            g = _get(s, Group, group_id, "group")
            s.execute(delete(Assignment).where(Assignment.actor_type == "group",
                                               Assignment.actor_id == g.id))
            s.execute(delete(GroupMembership).where(GroupMembership.group_id == g.id))
            s.delete(g)
        self.auth.forget()

    def list_group_users(self, ctx, group_id: str) -> list[User]:
        enforce(ctx, "list_group_users")
        with self.db.read() as s:
            _get(s, Group, group_id, "group")
            return list(s.scalars(select(User).join(
                GroupMembership, GroupMembership.user_id == User.id).where(
                GroupMembership.group_id == group_id).order_by(User.name)))

    def list_user_groups(self, ctx, user_id: str) -> list[Group]:
        enforce(ctx, "list_user_groups", {"user_id": user_id})
        with self.db.read() as s:
            _get(s, User, user_id, "user")
            return list(s.scalars(select(Group).join(
                GroupMembership, GroupMembership.group_id == Group.id).where(
                GroupMembership.user_id == user_id).order_by(Group.name)))

    def add_user_to_group(self, ctx, group_id: str, user_id: str) -> None:
        enforce(ctx, "add_user_to_group")
        with self.db.transaction() as s:
            _get(s, Group, group_id, "group")
            _get(s, User, user_id, "user")
            if s.get(GroupMembership, (group_id, user_id)) is None:
                s.add(GroupMembership(group_id=group_id, user_id=user_id))
        self.auth.forget()

    def check_user_in_group(self, ctx, group_id: str, user_id: str) -> None:
        enforce(ctx, "check_user_in_group")
        with self.db.read() as s:
            _get(s, Group, group_id, "group")
            _get(s, User, user_id, "user")
            if s.get(GroupMembership, (group_id, user_id)) is None:
                raise NotFound(f"User '{user_id}' not found in group '{group_id}'.")

    def remove_user_from_group(self, ctx, group_id: str, user_id: str) -> None:
        enforce(ctx, "remove_user_from_group")
        with self.db.transaction() as s:
            m = s.get(GroupMembership, (group_id, user_id))
            if m is None:
                raise NotFound(f"User '{user_id}' not found in group '{group_id}'.")
            s.delete(m)
        self.auth.forget()

    # -- roles -------------------------------------------------------------
    def list_roles(self, ctx, *, name=None) -> list[Role]:
        enforce(ctx, "list_roles")
        q = _select(Role, Role.name, name=name)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_role(self, ctx, role_id: str) -> Role:
        enforce(ctx, "get_role")
        with self.db.read() as s:
            return _get(s, Role, role_id, "role")

    def create_role(self, ctx, *, name: str, description: str = "") -> Role:
        enforce(ctx, "create_role")
        try:
            with self.db.transaction() as s:
                if s.scalars(select(Role).where(Role.name == name)).first():
                    raise _duplicate("role", name)
                r = Role(id=new_id(), name=name, description=description)
                s.add(r)
            return r
        except IntegrityError:
            raise _duplicate("role", name)

    def update_role(self, ctx, role_id: str, changes: dict) -> Role:
        enforce(ctx, "update_role")
        with self.db.transaction() as s:
            r = _get(s, Role, role_id, "role")
            if "name" in changes and changes["name"] != r.name and s.scalars(
                    select(Role).where(Role.name == changes["name"])).first():
                raise _duplicate("role", changes["name"])
            for k in ("name", "description"):
                if k in changes:
                    setattr(r, k, changes[k])
        self.auth.forget()
        return r

    def delete_role(self, ctx, role_id: str) -> None:
        enforce(ctx, "delete_role")
        with self.db.transaction() as s:
            r = _get(s, Role, role_id, "role")
            s.execute(delete(Assignment).where(Assignment.role_id == r.id))
            s.execute(delete(ImpliedRole).where(or_(ImpliedRole.prior_role_id == r.id,
                                                    ImpliedRole.implied_role_id == r.id)))
            s.delete(r)
        self.auth.forget()

    def list_implied_roles(self, ctx, prior_id: str) -> tuple[Role, list[Role]]:
        enforce(ctx, "list_implied_roles")
        with self.db.read() as s:
            prior = _get(s, Role, prior_id, "role")
            implied = list(s.scalars(select(Role).join(
                ImpliedRole, ImpliedRole.implied_role_id == Role.id).where(
                ImpliedRole.prior_role_id == prior_id)))
        return prior, implied

    def role_inferences(self, ctx) -> list[tuple[Role, list[Role]]]:
        enforce(ctx, "list_role_inference_rules")
        with self.db.read() as s:
            roles = {r.id: r for r in s.scalars(select(Role))}
            out: dict[str, list[Role]] = {}
            for prior, implied in s.execute(select(ImpliedRole.prior_role_id,
                                                   ImpliedRole.implied_role_id)):
                out.setdefault(prior, []).append(roles[implied])
        return [(roles[p], imp) for p, imp in sorted(out.items())]

    def create_implied_role(self, ctx, prior_id: str, implied_id: str) -> tuple[Role, Role]:
        enforce(ctx, "create_implied_role")
        with self.db.transaction() as s:
            prior = _get(s, Role, prior_id, "role")
            implied = _get(s, Role, implied_id, "role")
            if prior_id in expand_implied(s, {implied_id}):
                raise Forbidden(f"Role {implied_id} already implies {prior_id}: "
                                f"a cycle is not allowed.")
            if s.get(ImpliedRole, (prior_id, implied_id)) is None:
                s.add(ImpliedRole(prior_role_id=prior_id, implied_role_id=implied_id))
        self.auth.forget()
        return prior, implied

    def check_implied_role(self, ctx, prior_id: str, implied_id: str) -> tuple[Role, Role]:
        enforce(ctx, "list_implied_roles")
        with self.db.read() as s:
            if s.get(ImpliedRole, (prior_id, implied_id)) is None:
                raise NotFound(f"Could not find implied role: {prior_id} implies {implied_id}.")
            return s.get(Role, prior_id), s.get(Role, implied_id)

    def delete_implied_role(self, ctx, prior_id: str, implied_id: str) -> None:
        enforce(ctx, "delete_implied_role")
        with self.db.transaction() as s:
            rule = s.get(ImpliedRole, (prior_id, implied_id))
            if rule is None:
                raise NotFound(f"Could not find implied role: {prior_id} implies {implied_id}.")
            s.delete(rule)
        self.auth.forget()

    # -- grants (role assignments) ----------------------------------------
    def _grant_key(self, s, *, actor_type, actor_id, target_type, target_id, role_id=None):
        _get(s, User if actor_type == "user" else Group, actor_id, actor_type)
        _get(s, Project if target_type == "project" else Domain, target_id, target_type)
        if role_id is not None:
            _get(s, Role, role_id, "role")
        return (actor_type, actor_id, target_type, target_id, role_id)

    def create_grant(self, ctx, **key) -> None:
        enforce(ctx, "create_grant")
        with self.db.transaction() as s:
            k = self._grant_key(s, **key)
            if s.get(Assignment, k) is None:
                s.add(Assignment(actor_type=k[0], actor_id=k[1], target_type=k[2],
                                 target_id=k[3], role_id=k[4]))
        self.auth.forget()

    def check_grant(self, ctx, **key) -> None:
        enforce(ctx, "check_grant")
        with self.db.read() as s:
            k = self._grant_key(s, **key)
            if s.get(Assignment, k) is None:
                raise NotFound(f"Could not find role assignment with role: {k[4]}, "
                               f"{k[0]}: {k[1]}, {k[2]}: {k[3]}.")

    def revoke_grant(self, ctx, **key) -> None:
        enforce(ctx, "revoke_grant")
        with self.db.transaction() as s:
            k = self._grant_key(s, **key)
            a = s.get(Assignment, k)
            if a is None:
                raise NotFound(f"Could not find role assignment with role: {k[4]}, "
                               f"{k[0]}: {k[1]}, {k[2]}: {k[3]}.")
            s.delete(a)
        self.auth.forget()

    def list_grants(self, ctx, **key) -> list[Role]:
        enforce(ctx, "list_grants")
        with self.db.read() as s:
            k = self._grant_key(s, **key)
            ids = s.scalars(select(Assignment.role_id).where(
                Assignment.actor_type == k[0], Assignment.actor_id == k[1],
                Assignment.target_type == k[2], Assignment.target_id == k[3]))
            return list(s.scalars(select(Role).where(Role.id.in_(list(ids)))
                                  .order_by(Role.name)))

    def list_role_assignments(self, ctx, *, user_id=None, group_id=None, role_id=None,
                              project_id=None, domain_id=None, effective=False) -> list[dict]:
        """Rows of {actor_type, actor_id, target_type, target_id, role_id,
        via_group (for effective listings)} plus `names` for include_names."""
        self_query = user_id is not None and user_id == ctx.user_id
        if not self_query:
            enforce(ctx, "list_role_assignments")
        with self.db.read() as s:
            rows = [dict(actor_type=a.actor_type, actor_id=a.actor_id,
                         target_type=a.target_type, target_id=a.target_id,
                         role_id=a.role_id, via_group=None)
                    for a in s.scalars(select(Assignment))]
            if effective:
                rows = self._effective_rows(s, rows)
            names = self._names(s)
        def keep(r):
            if user_id is not None and not (r["actor_type"] == "user" and r["actor_id"] == user_id):
                return False
            if group_id is not None and not (r["actor_type"] == "group" and r["actor_id"] == group_id):
                return False
            if role_id is not None and r["role_id"] != role_id:
                return False
            if project_id is not None and not (r["target_type"] == "project"
                                               and r["target_id"] == project_id):
                return False
            if domain_id is not None and not (r["target_type"] == "domain"
                                              and r["target_id"] == domain_id):
                return False
            return True
        out = [r for r in rows if keep(r)]
        for r in out:
            r["names"] = names
        return out

    def _effective_rows(self, s, rows: list[dict]) -> list[dict]:
        members: dict[str, list[str]] = {}
        for gid, uid in s.execute(select(GroupMembership.group_id, GroupMembership.user_id)):
            members.setdefault(gid, []).append(uid)
        rules = implication_rules(s)
        out, seen = [], set()
        for r in rows:
            actors = ([(r["actor_id"], None)] if r["actor_type"] == "user"
                      else [(uid, r["actor_id"]) for uid in members.get(r["actor_id"], [])])
            for uid, via in actors:
                for rid in expand(rules, {r["role_id"]}):
                    key = (uid, r["target_type"], r["target_id"], rid, via)
                    if key not in seen:
                        seen.add(key)
                        out.append(dict(actor_type="user", actor_id=uid,
                                        target_type=r["target_type"], target_id=r["target_id"],
                                        role_id=rid, via_group=via))
        return out

    def _names(self, s) -> dict[str, dict[str, Any]]:
        domains = {d.id: d.name for d in s.scalars(select(Domain))}
        names: dict[str, dict[str, Any]] = {"domain": domains}
        for kind, model in (("user", User), ("group", Group), ("project", Project)):
            names[kind] = {o.id: (o.name, o.domain_id) for o in s.scalars(select(model))}
        names["role"] = {r.id: r.name for r in s.scalars(select(Role))}
        return names

    # -- catalog ---------------------------------------------------------
    def list_regions(self, ctx) -> list[Region]:
        enforce(ctx, "list_regions")
        with self.db.read() as s:
            return list(s.scalars(select(Region).order_by(Region.id)))

    def get_region(self, ctx, region_id: str) -> Region:
        enforce(ctx, "get_region")
        with self.db.read() as s:
            return _get(s, Region, region_id, "region")

    def list_services(self, ctx, *, type_=None, name=None) -> list[Service]:
        enforce(ctx, "list_services")
        q = _select(Service, Service.type, type=type_, name=name)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_service(self, ctx, service_id: str) -> Service:
        enforce(ctx, "get_service")
        with self.db.read() as s:
            return _get(s, Service, service_id, "service")

    def list_endpoints(self, ctx, *, interface=None, service_id=None,
                       region_id=None) -> list[Endpoint]:
        enforce(ctx, "list_endpoints")
        q = _select(Endpoint, Endpoint.interface, interface=interface, service_id=service_id,
                    region_id=region_id)
        with self.db.read() as s:
            return list(s.scalars(q))

    def get_endpoint(self, ctx, endpoint_id: str) -> Endpoint:
        enforce(ctx, "get_endpoint")
        with self.db.read() as s:
            return _get(s, Endpoint, endpoint_id, "endpoint")

    # -- application credentials ----------------------------------------
    def list_app_creds(self, ctx, user_id: str, *, name=None) -> list[ApplicationCredential]:
        enforce(ctx, "list_application_credentials", {"user_id": user_id})
        q = select(ApplicationCredential).where(ApplicationCredential.user_id == user_id)
        if name is not None:
            q = q.where(ApplicationCredential.name == name)
        with self.db.read() as s:
            return list(s.scalars(q.order_by(ApplicationCredential.name)))

    def get_app_cred(self, ctx, user_id: str, cred_id: str) -> ApplicationCredential:
        enforce(ctx, "get_application_credential", {"user_id": user_id})
        with self.db.read() as s:
            c = _get(s, ApplicationCredential, cred_id, "application credential")
            if c.user_id != user_id:
                raise NotFound(f"Could not find application credential: {cred_id}.")
            return c

    def create_app_cred(self, ctx, user_id: str, *, name: str, secret: str | None = None,
                        description: str = "", expires_at: dt.datetime | None = None,
                        roles: list[dict] | None = None,
                        unrestricted: bool = False) -> tuple[ApplicationCredential, str]:
        enforce(ctx, "create_application_credential", {"user_id": user_id})
        if ctx.user_id != user_id:
            raise Forbidden("Application credentials can only be created by their owner.")
        if ctx.project_id is None:
            raise BadRequest("Application credentials need a project-scoped token.")
        if expires_at is not None and expires_at <= utcnow():
            raise BadRequest("Invalid input for field 'application_credential.expires_at': "
                             "the time is in the past.", field="application_credential.expires_at")
        secret = secret or secrets.token_urlsafe(48)
        with self.db.read() as s:
            mine = {r.id: r for r in effective_roles(s, user_id, ctx.project_id, None)}
            by_name = {r.name: r for r in mine.values()}
        chosen = []
        for spec in roles or [{"id": rid} for rid in mine]:
            role = mine.get(spec.get("id")) or by_name.get(spec.get("name"))
            if role is None:
                raise Forbidden(f"Invalid role for application credential: "
                                f"{spec.get('id') or spec.get('name')} is not one of the "
                                f"roles you have on project {ctx.project_id}.")
            chosen.append(role.id)
        hashed = passwords.hash_password(secret, cost=self.cost)
        try:
            with self.db.transaction() as s:
                if s.scalars(select(ApplicationCredential).where(
                        ApplicationCredential.user_id == user_id,
                        ApplicationCredential.name == name)).first():
                    raise Conflict(f"Duplicate application credential name {name}.")
                c = ApplicationCredential(
                    id=new_id(), name=name, description=description, user_id=user_id,
                    project_id=ctx.project_id, secret_hash=hashed, roles=chosen,
                    unrestricted=unrestricted, expires_at=expires_at)
                s.add(c)
        except IntegrityError:
            raise Conflict(f"Duplicate application credential name {name}.")
        return c, secret

    def delete_app_cred(self, ctx, user_id: str, cred_id: str) -> None:
        enforce(ctx, "delete_application_credential", {"user_id": user_id})
        with self.db.transaction() as s:
            c = _get(s, ApplicationCredential, cred_id, "application credential")
            if c.user_id != user_id:
                raise NotFound(f"Could not find application credential: {cred_id}.")
            s.delete(c)
        self.auth.forget()

    def role_names(self, role_ids: list[str]) -> list[Role]:
        with self.db.read() as s:
            return list(s.scalars(select(Role).where(Role.id.in_(role_ids))))

    # -- EC2 credentials ---------------------------------------------------
    def list_ec2(self, ctx, user_id: str) -> list[Ec2Credential]:
        enforce(ctx, "ec2_list_credentials", {"user_id": user_id})
        with self.db.read() as s:
            _get(s, User, user_id, "user")
            return list(s.scalars(select(Ec2Credential).where(
                Ec2Credential.user_id == user_id).order_by(Ec2Credential.created_at)))

    def get_ec2(self, ctx, user_id: str, access: str) -> Ec2Credential:
        enforce(ctx, "ec2_get_credential", {"user_id": user_id})
        with self.db.read() as s:
            c = s.get(Ec2Credential, access)
            if c is None or c.user_id != user_id:
                raise NotFound(f"Could not find credential: {access}.")
            return c

    def create_ec2(self, ctx, user_id: str, *, project_id: str) -> Ec2Credential:
        enforce(ctx, "ec2_create_credential", {"user_id": user_id})
        with self.db.transaction() as s:
            _get(s, User, user_id, "user")
            _get(s, Project, project_id, "project")
            if not effective_roles(s, user_id, project_id, None):
                raise Forbidden(f"User {user_id} has no role on project {project_id}.")
            c = Ec2Credential(access=secrets.token_hex(16), secret=secrets.token_hex(16),
                              user_id=user_id, project_id=project_id, created_at=utcnow())
            s.add(c)
        return c

    def ec2_identity(self, access: str) -> tuple[str, RequestContext] | None:
        """For S3 SigV4: the secret of an EC2 access key and the caller it stands
        for (effective roles on its project). None when the key is unknown or its
        user, project or their domains are disabled or the user lost every role.
        No policy check: knowing the access key is not proof, the signature is."""
        with self.db.read() as s:
            c = s.get(Ec2Credential, access)
            if c is None:
                return None
            user, project = s.get(User, c.user_id), s.get(Project, c.project_id)
            if (user is None or project is None or not user.enabled or not project.enabled
                    or not all(d is not None and d.enabled for d in (
                        s.get(Domain, user.domain_id), s.get(Domain, project.domain_id)))):
                return None
            roles = effective_roles(s, user.id, project.id, None)
            if not roles:
                return None
            ctx = RequestContext(
                request_id="-", user_id=user.id, user_name=user.name,
                user_domain_id=user.domain_id, project_id=project.id,
                project_name=project.name, project_domain_id=project.domain_id,
                roles=tuple(sorted(r.name for r in roles)), methods=("ec2credential",))
            return c.secret, ctx

    def delete_ec2(self, ctx, user_id: str, access: str) -> None:
        enforce(ctx, "ec2_delete_credential", {"user_id": user_id})
        with self.db.transaction() as s:
            c = s.get(Ec2Credential, access)
            if c is None or c.user_id != user_id:
                raise NotFound(f"Could not find credential: {access}.")
            s.delete(c)
        self.auth.forget()
