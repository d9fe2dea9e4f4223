"""Identity resources as Keystone v3 returns them, field for field."""

from __future__ import annotations

import datetime as dt


def iso(t: dt.datetime | None, *, micro: bool = True) -> str | None:
    if t is None:
        return None
    t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def link(base: str, path: str) -> dict:
    return {"self": f"{base}/v3/{path}"}


def domain(base, d) -> dict:
    return {"id": d.id, "name": d.name, "description": d.description, "enabled": d.enabled,
            "tags": [], "options": {}, "links": link(base, f"domains/{d.id}")}


def project(base, p) -> dict:
    out = dict(p.extra or {})
    out.update({"id": p.id, "name": p.name, "domain_id": p.domain_id,
                "description": p.description, "enabled": p.enabled, "parent_id": p.domain_id,
                "is_domain": False, "tags": list(p.tags or []), "options": {},
                "links": link(base, f"projects/{p.id}")})
    return out


def user(base, u) -> dict:
    out = dict(u.extra or {})
    out.update({"id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
                "password_expires_at": None, "options": {}, "description": u.description,
                "links": link(base, f"users/{u.id}")})
    if u.default_project_id:
        out["default_project_id"] = u.default_project_id
    return out


def group(base, g) -> dict:
    return {"id": g.id, "name": g.name, "domain_id": g.domain_id,
            "description": g.description, "links": link(base, f"groups/{g.id}")}


def role(base, r) -> dict:
    return {"id": r.id, "name": r.name, "domain_id": None, "description": r.description,
            "options": {}, "links": link(base, f"roles/{r.id}")}


def role_ref(base, r) -> dict:
    return {"id": r.id, "name": r.name, "links": link(base, f"roles/{r.id}")}


def region(base, r) -> dict:
    return {"id": r.id, "description": r.description, "parent_region_id": None,
            "links": link(base, f"regions/{r.id}")}


def service(base, s) -> dict:
    return {"id": s.id, "type": s.type, "name": s.name, "description": s.description,
            "enabled": s.enabled, "links": link(base, f"services/{s.id}")}


def endpoint(base, e) -> dict:
    return {"id": e.id, "interface": e.interface, "region_id": e.region_id,
            "region": e.region_id, "service_id": e.service_id, "url": e.url,
            "enabled": e.enabled, "links": link(base, f"endpoints/{e.id}")}


def app_cred(base, c, roles, *, secret: str | None = None) -> dict:
    out = {"id": c.id, "name": c.name, "description": c.description, "user_id": c.user_id,
           "project_id": c.project_id, "unrestricted": c.unrestricted,
           "expires_at": iso(c.expires_at), "access_rules": [],
           "roles": [{"id": r.id, "name": r.name, "domain_id": None} for r in roles],
           "links": link(base, f"users/{c.user_id}/application_credentials/{c.id}")}
    if secret is not None:
        out["secret"] = secret
    return out


def ec2(base, c) -> dict:
    return {"user_id": c.user_id, "tenant_id": c.project_id, "access": c.access,
            "secret": c.secret, "trust_id": None,
            "links": link(base, f"users/{c.user_id}/credentials/OS-EC2/{c.access}")}


def assignment(base, row: dict, *, include_names: bool) -> dict:
    names = row["names"]
    out: dict = {"role": {"id": row["role_id"]}}
    actor = {"id": row["actor_id"]}
    target = {"id": row["target_id"]}
    if include_names:
        out["role"]["name"] = names["role"].get(row["role_id"])
        a_name, a_dom = names[row["actor_type"]].get(row["actor_id"], (None, None))
        actor.update(name=a_name, domain={"id": a_dom, "name": names["domain"].get(a_dom)})
        if row["target_type"] == "project":
            t_name, t_dom = names["project"].get(row["target_id"], (None, None))
            target.update(name=t_name, domain={"id": t_dom, "name": names["domain"].get(t_dom)})
        else:
            target["name"] = names["domain"].get(row["target_id"])
    out[row["actor_type"]] = actor
    out["scope"] = {row["target_type"]: target}
    path = (f"{row['target_type']}s/{row['target_id']}/{row['actor_type']}s/"
            f"{row['actor_id']}/roles/{row['role_id']}")
    out["links"] = {"assignment": f"{base}/v3/{path}"}
    if row.get("via_group"):
        out["links"]["membership"] = (f"{base}/v3/groups/{row['via_group']}/users/"
                                      f"{row['actor_id']}")
    return out


def scoped_catalog(catalog: list[dict], project_id: str | None) -> list[dict]:
    """Keystone fills %(project_id)s / %(tenant_id)s / $(project_id)s in
    endpoint URLs from the token's project (Swift's /v1/AUTH_<id>); a token
    without a project gets no such endpoint, as in Keystone."""
    out = []
    for svc in catalog:
        eps = []
        for ep in svc["endpoints"]:
            url = ep["url"]
            if "(project_id)s" in url or "(tenant_id)s" in url:
                if project_id is None:
                    continue
                for key in ("%(project_id)s", "$(project_id)s", "%(tenant_id)s",
                            "$(tenant_id)s"):
                    url = url.replace(key, project_id)
            eps.append(dict(ep, url=url))
        out.append(dict(svc, endpoints=eps))
    return out


def token(info, catalog: list[dict] | None) -> dict:
    p = info.payload
    body = {"methods": info.methods,
            "user": {"id": info.user.id, "name": info.user.name,
                     "domain": {"id": info.user_domain.id, "name": info.user_domain.name},
                     "password_expires_at": None},
            "audit_ids": list(p["a"]),
            "expires_at": iso(p.expires_at),
            "issued_at": iso(p.issued_at)}
    if info.project is not None:
        body["project"] = {"id": info.project.id, "name": info.project.name,
                           "domain": {"id": info.project_domain.id,
                                      "name": info.project_domain.name}}
        body["is_domain"] = False
    if info.domain is not None:
        body["domain"] = {"id": info.domain.id, "name": info.domain.name}
    if info.project is not None or info.domain is not None:
        body["roles"] = [{"id": r.id, "name": r.name} for r in info.roles]
        if catalog is not None:
            body["catalog"] = scoped_catalog(catalog, info.project and info.project.id)
    if info.app_cred is not None:
        body["application_credential"] = {"id": info.app_cred.id, "name": info.app_cred.name,
                                          "restricted": not info.app_cred.unrestricted}
    return {"token": body}
