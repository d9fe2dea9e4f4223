"""First-start bootstrap and the catalog sync run at every start.

The catalog is rewritten from the addresses the services really listen on, so
an endpoint can never point at a port nobody serves.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml
from sqlalchemy import delete, select

from stackbox.common.db import Database, new_id, utcnow
from stackbox.identity import passwords
from stackbox.identity.models import (Assignment, Domain, Endpoint, ImpliedRole, Project, Region,
                                      Role, Service, User)

# service name in Settings.service_ports() -> (catalog type, catalog name, path suffix)
CATALOG = {
    "identity": ("identity", "keystone", "/v3"),
    "compute": ("compute", "nova", "/v2.1"),
    "image": ("image", "glance", ""),
    "network": ("network", "neutron", ""),
    "volume": ("block-storage", "cinder", "/v3/%(project_id)s"),
    "object_store": ("object-store", "swift", "/v1/AUTH_%(project_id)s"),
    "load-balancer": ("load-balancer", "octavia", ""),
}

ROLES = ("admin", "member", "reader", "service", "ResellerAdmin")
IMPLIES = (("admin", "member"), ("member", "reader"))
USERS = (("admin", "admin", "admin"), ("demo", "demo", "member"))  # user, project, role


def bootstrap(db: Database, *, password_cost: int) -> dict[str, str] | None:
    """Create the default domain, roles, admin and demo. Returns the generated
    passwords on first start, None when already bootstrapped."""
    with db.transaction() as s:
        if s.get(Domain, "default") is not None:
            return None
        s.add(Domain(id="default", name="Default", description="The default domain",
                     enabled=True))
        roles = {}
        for name in ROLES:
            roles[name] = Role(id=new_id(), name=name, description="")
            s.add(roles[name])
        s.flush()
        for prior, implied in IMPLIES:
            s.add(ImpliedRole(prior_role_id=roles[prior].id, implied_role_id=roles[implied].id))
        created = {}
        for user, project, role in USERS:
            p = Project(id=new_id(), name=project, domain_id="default",
                        description=f"Bootstrap project {project}", enabled=True,
                        tags=[], extra={})
            password = secrets.token_urlsafe(18)
            u = User(id=new_id(), name=user, domain_id="default", enabled=True,
                     password_hash=passwords.hash_password(password, cost=password_cost),
                     default_project_id=p.id, description="", extra={}, created_at=utcnow())
            s.add_all([p, u])
            s.flush()
            s.add(Assignment(actor_type="user", actor_id=u.id, target_type="project",
                             target_id=p.id, role_id=roles[role].id))
            created[user] = password
    return created


def sync_catalog(db: Database, settings) -> None:
    region = settings.identity.region
    wanted = settings.service_ports()
    with db.transaction() as s:
        if s.get(Region, region) is None:
            s.add(Region(id=region, description=""))
        known = {svc.type: svc for svc in s.scalars(select(Service))}
        types = {CATALOG[name][0] for name in wanted}
        for stale in set(known) - types:
            s.execute(delete(Endpoint).where(Endpoint.service_id == known[stale].id))
            s.delete(known[stale])
        for name in wanted:
            type_, svc_name, suffix = CATALOG[name]
            svc = known.get(type_)
            if svc is None:
                svc = Service(id=new_id(), type=type_, name=svc_name, description="",
                              enabled=True)
                s.add(svc)
                s.flush()
            url = settings.base_url(name) + suffix
            existing = {e.interface: e for e in s.scalars(
                select(Endpoint).where(Endpoint.service_id == svc.id))}
            for iface in ("public", "internal", "admin"):
                ep = existing.pop(iface, None)
                if ep is None:
                    s.add(Endpoint(id=new_id(), service_id=svc.id, interface=iface,
                                   region_id=region, url=url, enabled=True))
                else:
                    ep.url, ep.region_id, ep.enabled = url, region, True
            for leftover in existing.values():
                s.delete(leftover)


def write_credentials(data_dir: Path, settings, passwords_: dict[str, str]) -> None:
    """clouds.yaml (clouds stackbox and stackbox-demo) and openrc files, mode 0600."""
    auth_url = settings.base_url("identity") + "/v3"
    region = settings.identity.region
    clouds = {}
    for cloud, user, project in (("stackbox", "admin", "admin"),
                                 ("stackbox-demo", "demo", "demo")):
        clouds[cloud] = {
            "auth": {"auth_url": auth_url, "username": user, "password": passwords_[user],
                     "project_name": project, "user_domain_name": "Default",
                     "project_domain_name": "Default"},
            "region_name": region, "identity_api_version": 3, "interface": "public"}
        _write_private(data_dir / f"openrc-{user}", "".join(
            f"export {k}={v}\n" for k, v in (
                ("OS_AUTH_URL", auth_url), ("OS_USERNAME", user),
                ("OS_PASSWORD", passwords_[user]), ("OS_PROJECT_NAME", project),
                ("OS_USER_DOMAIN_NAME", "Default"), ("OS_PROJECT_DOMAIN_NAME", "Default"),
                ("OS_REGION_NAME", region), ("OS_IDENTITY_API_VERSION", "3"),
                ("OS_INTERFACE", "public"))))
    _write_private(data_dir / "clouds.yaml",
                   yaml.safe_dump({"clouds": clouds}, sort_keys=True))


def refresh_credentials(data_dir: Path, settings) -> None:
    """Rewrite the files with the current URLs (ports may have changed) and
    the passwords already in them."""
    path = data_dir / "clouds.yaml"
    if not path.exists():
        return
    clouds = yaml.safe_load(path.read_text()).get("clouds", {})
    found = {c["auth"]["username"]: c["auth"]["password"] for c in clouds.values()}
    if {"admin", "demo"} <= set(found):
        write_credentials(data_dir, settings, found)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
