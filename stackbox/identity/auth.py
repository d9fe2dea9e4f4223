"""Authentication and token validation.

Issuing checks a password (scrypt) or an application credential secret and
encodes a signed token; nothing is written to the database. Validating decodes
the token, checks it against the revocation list (kept in memory, refreshed
every second and updated at once on local revocations), and recomputes the
caller's roles, which are cached for `token_cache_seconds`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time

from sqlalchemy import select

from stackbox.common.db import Database, utcnow
from stackbox.common.errors import BadRequest, Unauthorized
from stackbox.common.generation import LocalGeneration
from stackbox.common.http.context import RequestContext
from stackbox.common.oneload import OneLoad
from stackbox.identity import passwords
from stackbox.identity.roles import expand_implied
from stackbox.identity.models import (ApplicationCredential, Domain, Project, Revocation,
                                      Role, User)
from stackbox.identity.tokens import TokenCodec, TokenPayload, new_audit_id

AUTH_FAILED = "The request you have made requires authentication."


def _object(value, field: str) -> dict:
    """A member of the auth body that must be a JSON object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"Invalid input for field '{field}': expected an object, got "
                         f"{type(value).__name__}.", field=field)
    return value


@dataclasses.dataclass
class TokenInfo:
    """Everything the API needs to render a token body."""
    token: str
    payload: TokenPayload
    user: User
    user_domain: Domain
    project: Project | None
    project_domain: Domain | None
    domain: Domain | None
    roles: list[Role]
    app_cred: ApplicationCredential | None
    # built once: a cached token's context served every request (~2% of a
    # small object PUT's CPU when it was built each time)
    _context: RequestContext | None = dataclasses.field(default=None, init=False,
                                                        repr=False, compare=False)

    @property
    def methods(self) -> list[str]:
        return list(self.payload["m"])

    def context(self, request_id: str = "-") -> RequestContext:
        if self._context is None:
            self._context = self._build_context()
        return self._context if request_id == "-" else self._context.with_request_id(request_id)

    def _build_context(self) -> RequestContext:
        return RequestContext(
            request_id="-", user_id=self.user.id, user_name=self.user.name,
            user_domain_id=self.user.domain_id,
            project_id=self.project.id if self.project else None,
            project_name=self.project.name if self.project else None,
            project_domain_id=self.project.domain_id if self.project else None,
            domain_id=self.domain.id if self.domain else None,
            roles=tuple(sorted(r.name for r in self.roles)), methods=tuple(self.payload["m"]),
            audit_id=self.payload["a"][0], app_cred_id=self.payload.get("ac"),
            app_cred_unrestricted=bool(self.app_cred and self.app_cred.unrestricted),
            expires_at=self.payload.expires_at, issued_at=self.payload.issued_at,
            token=self.token)


def _domain_enabled(s, domain_id: str) -> bool:
    domain = s.get(Domain, domain_id)
    return domain is not None and domain.enabled


class RevocationList:
    """In-memory copy of the revocation table, indexed so a validation is a
    few dict lookups however many events there are: for each audit id, user
    and project, the latest `issued_before`."""

    KINDS = ("audit", "user", "project")

    def __init__(self, db: Database, *, refresh: float = 1.0):
        self.db = db
        self.refresh = refresh
        self._index: dict[str, dict[str, float]] = {k: {} for k in self.KINDS}
        self._loaded = 0.0
        self._lock = threading.Lock()

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._loaded < self.refresh

    def load(self) -> None:
        with self.db.read() as s:
            rows = s.execute(select(Revocation.audit_id, Revocation.user_id,
                                    Revocation.project_id, Revocation.issued_before)).all()
        index: dict[str, dict[str, float]] = {k: {} for k in self.KINDS}
        for audit_id, user_id, project_id, before in rows:
            self._note(index, audit_id, user_id, project_id, before.timestamp())
        with self._lock:
            self._index = index
            self._loaded = time.monotonic()

    @staticmethod
    def _note(index, audit_id, user_id, project_id, before: float) -> None:
        for kind, key in (("audit", audit_id), ("user", user_id), ("project", project_id)):
            if key is not None and before > index[kind].get(key, float("-inf")):
                index[kind][key] = before

    def add_local(self, rev: Revocation) -> None:
        with self._lock:
            self._note(self._index, rev.audit_id, rev.user_id, rev.project_id,
                       rev.issued_before.timestamp())

    def revoked(self, payload: TokenPayload) -> bool:
        issued = payload["i"] / 1e6
        index = self._index
        latest = [index["audit"].get(a) for a in payload["a"]]
        latest += [index["user"].get(payload["u"]), index["project"].get(payload.get("p"))]
        return any(before is not None and issued <= before for before in latest)


class Authenticator:
    def __init__(self, db: Database, codec: TokenCodec, *, token_lifetime: int,
                 password_cost: int, cache_seconds: float, roles_for,
                 password_cache_seconds: float = 0, generation=None):
        self.db = db
        # bumped by forget(): the other processes of this host drop their cache
        self.generation = generation or LocalGeneration()
        self._revocations_gen = self.generation.value()
        self.codec = codec
        self.token_lifetime = token_lifetime
        self.password_cost = password_cost
        self.cache_seconds = cache_seconds
        self.roles_for = roles_for  # (session, user_id, project_id|None, domain_id|None) -> [Role]
        self.revocations = RevocationList(db)
        self.verified = passwords.VerifiedCache(password_cache_seconds)
        self._cache: dict[str, tuple[float, int, TokenInfo]] = {}
        self._cache_lock = threading.Lock()
        self._revocations_lock = threading.Lock()
        self._loads = OneLoad()

    # -- issuing ---------------------------------------------------------
    def issue(self, identity: dict, scope: dict | str | None) -> TokenInfo:
        methods = identity.get("methods")
        if not isinstance(methods, list) or not methods:
            raise BadRequest("Invalid input for field 'identity.methods': a non-empty list "
                             "of password, token or application_credential is required.",
                             field="identity.methods")
        method = methods[0]
        if method == "password":
            user, expires, audits, extra = self._by_password(identity), None, [new_audit_id()], {}
        elif method == "token":
            user, expires, audits, extra = self._by_token(identity)
        elif method == "application_credential":
            return self._by_app_cred(identity, scope)
        else:
            raise BadRequest(f"Invalid input for field 'identity.methods': {method!r} is not "
                             f"supported (allowed: password, token, application_credential).",
                             field="identity.methods")
        with self.db.read() as s:
            project, domain = self._resolve_scope(s, user, scope)
        return self._mint(user.id, methods, project, domain, expires, audits, extra)

    def _by_password(self, identity: dict) -> User:
        try:
            spec = _object(_object(identity.get("password"), "identity.password").get("user"),
                           "identity.password.user")
            password = spec["password"]
        except KeyError:
            raise BadRequest("Invalid input for field 'identity.password.user': id or name "
                             "with domain, and password, are required.",
                             field="identity.password.user")
        if not isinstance(password, str):
            raise BadRequest("Invalid input for field 'identity.password.user.password': "
                             "must be a string.", field="identity.password.user.password")
        with self.db.read() as s:
            user = self._find_user(s, spec)
            if user is not None and not _domain_enabled(s, user.domain_id):
                user = None  # a disabled domain's users cannot log in (same 401)
        stored = user.password_hash if user is not None else None
        if user is not None and self.verified.hit(user.id, stored, password):
            ok = True
        else:
            ok = passwords.verify_password(password, stored, cost=self.password_cost)
            if ok:
                self.verified.remember(user.id, stored, password)
        if not ok or user is None or not user.enabled:
            raise Unauthorized(AUTH_FAILED)
        return user

    def _find_user(self, s, spec: dict) -> User | None:
        if spec.get("id"):
            return s.get(User, spec["id"])
        name = spec.get("name")
        domain = self._find_domain(s, spec.get("domain"), required_for="user")
        if not name or domain is None:
            return None
        return s.scalars(select(User).where(User.name == name,
                                            User.domain_id == domain.id)).first()

    def _find_domain(self, s, spec, *, required_for: str) -> Domain | None:
        if not isinstance(spec, dict) or not (spec.get("id") or spec.get("name")):
            raise BadRequest(f"Invalid input: a {required_for} given by name needs its "
                             f"domain (id or name).", field=f"{required_for}.domain")
        if spec.get("id"):
            return s.get(Domain, spec["id"])
        return s.scalars(select(Domain).where(Domain.name == spec["name"])).first()

    def _by_token(self, identity: dict):
        token = _object(identity.get("token"), "identity.token").get("id")
        if not token:
            raise BadRequest("Invalid input for field 'identity.token.id': required.",
                             field="identity.token.id")
        info = self.validate(token)
        if info.app_cred is not None:
            # Keystone forbids rescoping a token that came from an application credential.
            raise Unauthorized(AUTH_FAILED)
        audits = [new_audit_id(), info.payload["a"][-1]]
        return info.user, info.payload["e"], audits, {}

    def _by_app_cred(self, identity: dict, scope) -> TokenInfo:
        spec = _object(identity.get("application_credential"),
                       "identity.application_credential")
        secret = spec.get("secret")
        if not isinstance(secret, str) or not (spec.get("id") or spec.get("name")):
            raise BadRequest("Invalid input for field 'identity.application_credential': id "
                             "(or name with user) and secret are required.",
                             field="identity.application_credential")
        with self.db.read() as s:
            cred = self._find_app_cred(s, spec)
            user = s.get(User, cred.user_id) if cred else None
            project = s.get(Project, cred.project_id) if cred else None
        stored = cred.secret_hash if cred else None
        ok = passwords.verify_password(secret, stored, cost=self.password_cost)
        if not ok or cred is None or user is None or not user.enabled or project is None:
            raise Unauthorized(AUTH_FAILED)
        if cred.expires_at is not None and cred.expires_at <= utcnow():
            raise Unauthorized(AUTH_FAILED)
        # An application credential is bound to its project: another scope is refused.
        wanted = _object(_object(scope, "scope").get("project"), "scope.project").get("id")
        if wanted not in (None, project.id):
            raise Unauthorized(AUTH_FAILED)
        expires = time.time() + self.token_lifetime
        if cred.expires_at is not None:
            expires = min(expires, cred.expires_at.timestamp())
        return self._mint(user.id, ["application_credential"], project, None,
                          expires, [new_audit_id()], {"ac": cred.id})

    def _find_app_cred(self, s, spec) -> ApplicationCredential | None:
        if spec.get("id"):
            return s.get(ApplicationCredential, spec["id"])
        user = self._find_user(s, spec.get("user") or {})
        if user is None:
            return None
        return s.scalars(select(ApplicationCredential).where(
            ApplicationCredential.user_id == user.id,
            ApplicationCredential.name == spec["name"])).first()

    def _resolve_scope(self, s, user: User, scope) -> tuple[Project | None, Domain | None]:
        if scope == "unscoped":
            return None, None
        if not scope:
            if user.default_project_id:
                project = s.get(Project, user.default_project_id)
                if project is not None and project.enabled and self.roles_for(
                        s, user.id, project.id, None):
                    return project, None
            return None, None
        if not isinstance(scope, dict):
            raise BadRequest("Invalid input for field 'scope': expected an object or "
                             "'unscoped'.", field="scope")
        if "project" in scope:
            spec = _object(scope["project"], "scope.project")
            if spec.get("id"):
                project = s.get(Project, spec["id"])
            else:
                domain = self._find_domain(s, spec.get("domain"), required_for="project")
                project = domain and s.scalars(select(Project).where(
                    Project.name == spec.get("name"), Project.domain_id == domain.id)).first()
            if project is None or not project.enabled or not _domain_enabled(s, project.domain_id):
                raise Unauthorized(AUTH_FAILED)
            if not self.roles_for(s, user.id, project.id, None):
                raise Unauthorized(f"User {user.id} has no access to project {project.id}")
            return project, None
        if "domain" in scope:
            domain = self._find_domain(s, _object(scope["domain"], "scope.domain"),
                                       required_for="scope")
            if domain is None or not domain.enabled:
                raise Unauthorized(AUTH_FAILED)
            if not self.roles_for(s, user.id, None, domain.id):
                raise Unauthorized(f"User {user.id} has no access to domain {domain.id}")
            return None, domain
        if "system" in scope:
            raise Unauthorized("System-scoped tokens are not supported; scope to a project.")
        raise BadRequest("Invalid input for field 'scope': allowed keys are project, domain.",
                         field="scope")

    def _mint(self, user_id, methods, project, domain, expires, audits, extra) -> TokenInfo:
        now = time.time()
        payload = {"v": 1, "u": user_id, "m": list(methods), "i": int(now * 1e6),
                   "e": int(expires if expires else now + self.token_lifetime), "a": audits}
        if project is not None:
            payload["p"] = project.id
        if domain is not None:
            payload["d"] = domain.id
        payload.update(extra)
        token = self.codec.encode(payload)
        info = self._load(token, TokenPayload(payload))
        return info

    # -- validating ------------------------------------------------------
    def validate_cached(self, token: str) -> TokenInfo | None:
        entry = self._cache.get(token)
        if entry is None or not self.revocations.fresh:
            return None
        cached_at, gen, info = entry
        if time.monotonic() - cached_at > self.cache_seconds or gen != self.generation.value():
            return None
        if info.payload["e"] <= time.time() or self.revocations.revoked(info.payload):
            return None
        return info

    def validate(self, token: str) -> TokenInfo:
        """The token's TokenInfo, from the cache while it is fresh. Requests
        that miss it together (every second the revocations go stale, every
        cache_seconds a token's entry: with 16 requests in flight, each one
        loaded both itself, about 4% of a small object PUT's CPU) share one
        reload of the revocations and one load of each token."""
        cached = self.validate_cached(token)
        if cached is not None:
            return cached
        payload = self.codec.decode(token)
        with self._loads.hold(token):
            self._refresh_revocations()
            cached = self.validate_cached(token)    # loaded meanwhile by another
            if cached is not None:
                return cached
            gen = self.generation.value()
            if self.revocations.revoked(payload):
                raise Unauthorized(AUTH_FAILED)
            info = self._load(token, payload)
            with self._cache_lock:
                if len(self._cache) > 20000:
                    self._cache.clear()
                self._cache[token] = (time.monotonic(), gen, info)
            return info

    def _refresh_revocations(self) -> None:
        """Reload the revocations when they are stale or another process of
        this host changed something (it may have revoked); once, however many
        threads ask."""
        with self._revocations_lock:
            gen = self.generation.value()
            if self.revocations.fresh and gen == self._revocations_gen:
                return
            self.revocations.load()
            self._revocations_gen = gen

    def _load(self, token: str, payload: TokenPayload) -> TokenInfo:
        with self.db.read() as s:
            user = s.get(User, payload["u"])
            if user is None or not user.enabled:
                raise Unauthorized(AUTH_FAILED)
            user_domain = s.get(Domain, user.domain_id)
            if user_domain is None or not user_domain.enabled:
                raise Unauthorized(AUTH_FAILED)
            project = s.get(Project, payload["p"]) if "p" in payload else None
            if project is not None and not _domain_enabled(s, project.domain_id):
                raise Unauthorized(AUTH_FAILED)
            domain = s.get(Domain, payload["d"]) if "d" in payload else None
            if ("p" in payload and (project is None or not project.enabled)) or (
                    "d" in payload and (domain is None or not domain.enabled)):
                raise Unauthorized(AUTH_FAILED)
            app_cred = s.get(ApplicationCredential, payload["ac"]) if "ac" in payload else None
            if "ac" in payload and app_cred is None:
                raise Unauthorized(AUTH_FAILED)
            roles: list[Role] = []
            if project is not None or domain is not None:
                roles = self.roles_for(s, user.id, project.id if project else None,
                                       domain.id if domain else None)
                if app_cred is not None:
                    allowed = expand_implied(s, app_cred.roles)
                    roles = [r for r in roles if r.id in allowed]
                if not roles:
                    raise Unauthorized(AUTH_FAILED)
            project_domain = s.get(Domain, project.domain_id) if project else None
        return TokenInfo(token, payload, user, user_domain, project, project_domain, domain,
                         roles, app_cred)

    def revoke(self, info: TokenInfo) -> None:
        self.add_revocation(audit_id=info.payload["a"][0])

    def add_revocation(self, *, audit_id=None, user_id=None, project_id=None,
                       session=None) -> None:
        rev = Revocation(audit_id=audit_id, user_id=user_id, project_id=project_id,
                         issued_before=utcnow(), created_at=utcnow())
        if session is not None:
            session.add(rev)
        else:
            with self.db.transaction() as s:
                s.add(rev)
                self._expire_old(s)
        self.revocations.add_local(rev)
        self.forget()

    def _expire_old(self, s) -> None:
        from sqlalchemy import delete
        cutoff = utcnow() - dt.timedelta(seconds=self.token_lifetime + 60)
        s.execute(delete(Revocation).where(Revocation.created_at < cutoff))

    def forget(self) -> None:
        """Drop cached validations (after any identity change on this host)."""
        with self._cache_lock:
            self._cache.clear()
        self.generation.bump()
