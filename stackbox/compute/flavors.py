"""Flavors (with extra specs and access lists), keypairs and quotas: the
compute resources that are only records."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from stackbox.common.db import Database
from stackbox.common.errors import BadRequest, Conflict, Forbidden, NotFound, QuotaExceeded
from stackbox.common.http.context import RequestContext
from stackbox.compute.models import (Flavor, FlavorAccess, KeyPair, Quota, Server,
                                     ServerGroup)

# (name, id, vcpus, ram MiB, disk GiB): Nova's classic set, plus a flavor small
# enough for the bundled tiny guest.
DEFAULT_FLAVORS = [("m1.tiny", "1", 1, 512, 1), ("m1.small", "2", 1, 2048, 20),
                   ("m1.medium", "3", 2, 4096, 40), ("m1.large", "4", 4, 8192, 80),
                   ("m1.xlarge", "5", 8, 16384, 160), ("c1.tiny", "c1", 1, 128, 1)]

DEFAULT_QUOTAS = {"instances": 10, "cores": 20, "ram": 51200, "key_pairs": 100,
                  "server_groups": 10, "server_group_members": 10, "metadata_items": 128,
                  "injected_files": 5, "injected_file_content_bytes": 10240,
                  "injected_file_path_bytes": 255}
# reported by the API with -1 (unlimited) for old microversions; owned by the network service
NETWORK_QUOTAS = {"fixed_ips": -1, "floating_ips": -1, "security_groups": -1,
                  "security_group_rules": -1, "networks": -1}

KEYPAIR_NAME = re.compile(r"^[A-Za-z0-9 _.@-]{1,255}$")
EXTRA_SPEC_KEY = re.compile(r"^[\w.:\- ]{1,255}$")


def fingerprint(public_key: str) -> str:
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise BadRequest("Keypair data is invalid: public_key is not an OpenSSH public key "
                         "(expected 'ssh-ed25519 AAAA...' or 'ssh-rsa AAAA...').",
                         field="public_key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        serialization.load_ssh_public_key(public_key.strip().encode())
    except Exception:
        raise BadRequest("Keypair data is invalid: public_key could not be decoded.",
                         field="public_key")
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def generate_keypair() -> tuple[str, str]:
    """(private key PEM, public key) as Nova's keypair generation returns them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public + " Generated-by-Nova"


class FlavorService:
    def __init__(self, db: Database):
        self.db = db

    def ensure_defaults(self) -> None:
        with self.db.transaction() as s:
            if s.scalar(select(func.count()).select_from(Flavor)):
                return
            for name, fid, vcpus, ram, disk in DEFAULT_FLAVORS:
                s.add(Flavor(id=fid, name=name, vcpus=vcpus, ram=ram, disk=disk,
                             ephemeral=0, swap=0, extra_specs={}))

    def _visible(self, s, ctx: RequestContext, flavor: Flavor) -> bool:
        if flavor.is_public or ctx.is_admin:
            return True
        return s.get(FlavorAccess, (flavor.id, ctx.project_id)) is not None

    def get(self, ctx: RequestContext, flavor_id: str) -> Flavor:
        with self.db.read() as s:
            flavor = s.get(Flavor, flavor_id)
            if flavor is None:
                # the CLI resolves names through GET /flavors/{name} first
                flavor = s.scalar(select(Flavor).where(Flavor.name == flavor_id))
            if flavor is None or not self._visible(s, ctx, flavor):
                raise NotFound(f"Flavor {flavor_id} could not be found.")
            return flavor

    def list(self, ctx: RequestContext, *, is_public: bool | None = True,
             min_ram: int | None = None, min_disk: int | None = None) -> list[Flavor]:
        with self.db.read() as s:
            q = select(Flavor).order_by(Flavor.id)
            if min_ram is not None:
                q = q.where(Flavor.ram >= min_ram)
            if min_disk is not None:
                q = q.where(Flavor.disk >= min_disk)
            flavors = list(s.scalars(q))
            if not ctx.is_admin:
                allowed = set(s.scalars(select(FlavorAccess.flavor_id)
                                        .where(FlavorAccess.project_id == ctx.project_id)))
                return [f for f in flavors if f.is_public or f.id in allowed]
            if is_public is None:
                return flavors
            # admin: is_public=true lists public ones, false private ones (Nova)
            return [f for f in flavors if f.is_public == is_public]

    def create(self, ctx: RequestContext, *, name: str, vcpus: int, ram: int, disk: int,
               flavor_id: str | None = None, ephemeral: int = 0, swap: int = 0,
               rxtx_factor: float = 1.0, is_public: bool = True,
               description: str | None = None) -> Flavor:
        self._admin(ctx)
        with self.db.transaction() as s:
            fid = flavor_id or str(uuid.uuid4())
            if s.get(Flavor, fid) is not None:
                raise Conflict(f"Flavor with ID {fid} already exists.")
            if s.scalar(select(Flavor).where(Flavor.name == name)) is not None:
                raise Conflict(f"Flavor with name {name} already exists.")
            flavor = Flavor(id=fid, name=name, vcpus=vcpus, ram=ram, disk=disk,
                            ephemeral=ephemeral, swap=swap, rxtx_factor=rxtx_factor,
                            is_public=is_public, description=description, extra_specs={})
            s.add(flavor)
            return flavor

    def update(self, ctx: RequestContext, flavor_id: str, *, description: str | None) -> Flavor:
        self._admin(ctx)
        with self.db.transaction() as s:
            flavor = self._get_any(s, flavor_id)
            flavor.description = description
            return flavor

    def delete(self, ctx: RequestContext, flavor_id: str) -> None:
        self._admin(ctx)
        with self.db.transaction() as s:
            s.delete(self._get_any(s, flavor_id))

    @staticmethod
    def _get_any(s, flavor_id: str) -> Flavor:
        flavor = s.get(Flavor, flavor_id)
        if flavor is None:
            raise NotFound(f"Flavor {flavor_id} could not be found.")
        return flavor

    @staticmethod
    def _admin(ctx: RequestContext) -> None:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-flavor-manage to be "
                            "performed.")

    def set_extra_specs(self, ctx: RequestContext, flavor_id: str, specs: dict) -> dict:
        self._admin(ctx)
        for key, value in specs.items():
            if not EXTRA_SPEC_KEY.match(key):
                raise BadRequest(f"Invalid extra spec key {key!r}: use letters, digits, "
                                 "'_', '-', '.', ':' and spaces.", field="extra_specs")
            if not isinstance(value, (str, int, float, bool)) or len(str(value)) > 255:
                raise BadRequest(f"Invalid extra spec value for {key!r}: a string of at "
                                 "most 255 characters.", field="extra_specs")
        with self.db.transaction() as s:
            flavor = self._get_any(s, flavor_id)
            flavor.extra_specs = {**flavor.extra_specs, **{k: str(v) for k, v in specs.items()}}
            return {k: str(v) for k, v in specs.items()}

    def delete_extra_spec(self, ctx: RequestContext, flavor_id: str, key: str) -> None:
        self._admin(ctx)
        with self.db.transaction() as s:
            flavor = self._get_any(s, flavor_id)
            if key not in flavor.extra_specs:
                raise NotFound(f"Flavor {flavor_id} has no extra specs with key {key}.")
            flavor.extra_specs = {k: v for k, v in flavor.extra_specs.items() if k != key}

    def access(self, ctx: RequestContext, flavor_id: str) -> list[str]:
        self._admin(ctx)
        with self.db.read() as s:
            flavor = self._get_any(s, flavor_id)
            if flavor.is_public:
                raise NotFound("Access list not available for public flavors.")
            return list(s.scalars(select(FlavorAccess.project_id)
                                  .where(FlavorAccess.flavor_id == flavor_id)))

    def add_access(self, ctx: RequestContext, flavor_id: str, project_id: str) -> list[str]:
        self._admin(ctx)
        with self.db.transaction() as s:
            flavor = self._get_any(s, flavor_id)
            if flavor.is_public:
                raise Conflict("Can not add access to a public flavor.")
            if s.get(FlavorAccess, (flavor_id, project_id)) is not None:
                raise Conflict(f"Flavor access already exists for flavor {flavor_id} and "
                               f"project {project_id} combination.")
            s.add(FlavorAccess(flavor_id=flavor_id, project_id=project_id))
        return self.access(ctx, flavor_id)

    def remove_access(self, ctx: RequestContext, flavor_id: str, project_id: str) -> list[str]:
        self._admin(ctx)
        with self.db.transaction() as s:
            row = s.get(FlavorAccess, (flavor_id, project_id))
            if row is None:
                raise NotFound(f"Flavor access not found for {flavor_id} / {project_id} "
                               "combination.")
            s.delete(row)
        return self.access(ctx, flavor_id)


class KeypairService:
    def __init__(self, db: Database, quotas: "QuotaService"):
        self.db = db
        self.quotas = quotas

    def _owner(self, ctx: RequestContext, user_id: str | None) -> str:
        if user_id and user_id != ctx.user_id:
            if not ctx.is_admin:
                raise Forbidden("Policy doesn't allow os_compute_api:os-keypairs to be "
                                "performed for another user.")
            return user_id
        return ctx.user_id

    def create(self, ctx: RequestContext, *, name: str, public_key: str | None,
               key_type: str = "ssh", user_id: str | None = None) -> tuple[KeyPair, str | None]:
        if not KEYPAIR_NAME.match(name or ""):
            raise BadRequest("Keypair name contains unsafe characters or is not 1-255 "
                             "characters long (letters, digits, spaces, '_', '-', '.', '@').",
                             field="name")
        owner = self._owner(ctx, user_id)
        private = None
        if public_key is None:
            private, public_key = generate_keypair()
        fp = fingerprint(public_key)
        with self.db.transaction() as s:
            if s.get(KeyPair, (owner, name)) is not None:
                raise Conflict(f"Key pair '{name}' already exists.")
            count = s.scalar(select(func.count()).select_from(KeyPair)
                             .where(KeyPair.user_id == owner))
            self.quotas.check(s, ctx.project_id, {"key_pairs": 1}, {"key_pairs": count})
            kp = KeyPair(user_id=owner, name=name, type=key_type, public_key=public_key.strip(),
                         fingerprint=fp)
            s.add(kp)
        return kp, private

    def list(self, ctx: RequestContext, *, user_id: str | None = None) -> list[KeyPair]:
        owner = self._owner(ctx, user_id)
        with self.db.read() as s:
            return list(s.scalars(select(KeyPair).where(KeyPair.user_id == owner)
                                  .order_by(KeyPair.name)))

    def get(self, ctx: RequestContext, name: str, *, user_id: str | None = None) -> KeyPair:
        owner = self._owner(ctx, user_id)
        with self.db.read() as s:
            kp = s.get(KeyPair, (owner, name))
            if kp is None:
                raise NotFound(f"Keypair {name} not found for user {owner}")
            return kp

    def delete(self, ctx: RequestContext, name: str, *, user_id: str | None = None) -> None:
        owner = self._owner(ctx, user_id)
        with self.db.transaction() as s:
            kp = s.get(KeyPair, (owner, name))
            if kp is None:
                raise NotFound(f"Keypair {name} not found for user {owner}")
            s.delete(kp)


class QuotaService:
    def __init__(self, db: Database):
        self.db = db

    def limits(self, s, project_id: str) -> dict[str, int]:
        out = dict(DEFAULT_QUOTAS)
        for row in s.scalars(select(Quota).where(Quota.project_id == project_id)):
            out[row.resource] = row.hard_limit
        return out

    def usage(self, s, project_id: str, user_id: str | None = None) -> dict[str, int]:
        row = s.execute(select(func.count(), func.coalesce(func.sum(Server.flavor["vcpus"]
                                                                    .as_integer()), 0),
                               func.coalesce(func.sum(Server.flavor["ram"].as_integer()), 0))
                        .where(Server.project_id == project_id)).one()
        groups = s.scalar(select(func.count()).select_from(ServerGroup)
                          .where(ServerGroup.project_id == project_id))
        used = {"instances": row[0], "cores": int(row[1]), "ram": int(row[2]),
                "server_groups": groups}
        if user_id:
            used["key_pairs"] = s.scalar(select(func.count()).select_from(KeyPair)
                                         .where(KeyPair.user_id == user_id))
        return used

    def check(self, s, project_id: str, requested: dict[str, int],
              in_use: dict[str, int] | None = None) -> None:
        """Raise QuotaExceeded naming the first resource over its limit."""
        limits = self.limits(s, project_id)
        used = in_use if in_use is not None else self.usage(s, project_id)
        for resource, amount in requested.items():
            limit = limits.get(resource, -1)
            if limit >= 0 and used.get(resource, 0) + amount > limit:
                raise QuotaExceeded(resource, limit=limit, in_use=used.get(resource, 0),
                                    requested=amount)

    def get(self, project_id: str) -> dict[str, int]:
        with self.db.read() as s:
            return self.limits(s, project_id)

    def detail(self, project_id: str, user_id: str | None = None) -> dict[str, dict]:
        with self.db.read() as s:
            limits = self.limits(s, project_id)
            used = self.usage(s, project_id, user_id)
        return {k: {"limit": v, "in_use": used.get(k, 0), "reserved": 0}
                for k, v in limits.items()}

    def update(self, ctx: RequestContext, project_id: str, values: dict[str, int]) -> dict:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:update to be "
                            "performed.")
        for key, value in values.items():
            if key not in DEFAULT_QUOTAS:
                raise BadRequest(f"Invalid quota {key!r}; allowed: "
                                 f"{', '.join(sorted(DEFAULT_QUOTAS))}.", field=key)
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise BadRequest(f"Invalid value {value!r} for quota {key}: an integer "
                                 ">= -1 (-1 is unlimited).", field=key)
        with self.db.transaction() as s:
            for key, value in values.items():
                row = s.get(Quota, (project_id, key))
                if row is None:
                    s.add(Quota(project_id=project_id, resource=key, hard_limit=value))
                else:
                    row.hard_limit = value
        return self.get(project_id)

    def reset(self, ctx: RequestContext, project_id: str) -> None:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:delete to be "
                            "performed.")
        with self.db.transaction() as s:
            for row in s.scalars(select(Quota).where(Quota.project_id == project_id)):
                s.delete(row)
