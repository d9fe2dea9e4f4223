"""Identity through openstacksdk (conn.identity.*), against a started stackbox
(SQLite and PostgreSQL)."""

from __future__ import annotations

import openstack
import openstack.config
import pytest
from openstack import exceptions




@pytest.fixture
def cleanup(admin):
    """Registers delete calls; runs them in reverse order, ignoring 404s."""
    todo = []
    yield lambda fn, *args, **kw: todo.append((fn, args, kw))
    for fn, args, kw in reversed(todo):
        try:
            fn(*args, **kw)
        except exceptions.NotFoundException:
            pass


def test_project_crud_and_find(admin, cleanup, unique):
    name = unique("sdkproj")
    p = admin.identity.create_project(name=name, description="first", domain_id="default")
    cleanup(admin.identity.delete_project, p.id)
    assert p.id and p.name == name and p.description == "first" and p.is_enabled is True
    assert p.domain_id == "default"
    got = admin.identity.get_project(p.id)
    assert (got.id, got.name, got.description) == (p.id, name, "first")
    found = admin.identity.find_project(name)
    assert found is not None and found.id == p.id
    upd = admin.identity.update_project(p, description="second", is_enabled=False)
    assert upd.description == "second" and upd.is_enabled is False
    got = admin.identity.get_project(p.id)
    assert got.description == "second" and got.is_enabled is False
    assert p.id in {x.id for x in admin.identity.projects(name=name)}
    with pytest.raises(exceptions.ConflictException):
        admin.identity.create_project(name=name, domain_id="default")
    admin.identity.delete_project(p.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.identity.get_project(p.id)
    assert admin.identity.find_project(name) is None


def test_user_crud(admin, cloud, cleanup, unique):
    name = unique("sdkuser")
    u = admin.identity.create_user(name=name, password="pw-sdk-1", email="a@example.com",
                                   domain_id="default", description="d1")
    cleanup(admin.identity.delete_user, u.id)
    assert u.id and u.name == name and u.email == "a@example.com" and u.is_enabled is True
    upd = admin.identity.update_user(u, email="b@example.com", description="d2")
    assert upd.email == "b@example.com" and upd.description == "d2"
    got = admin.identity.get_user(u.id)
    assert (got.name, got.email, got.description) == (name, "b@example.com", "d2")
    assert admin.identity.find_user(name).id == u.id
    admin.identity.update_user(u, is_enabled=False)
    assert admin.identity.get_user(u.id).is_enabled is False
    admin.identity.delete_user(u.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.identity.get_user(u.id)
    assert u.id not in {x.id for x in admin.identity.users()}


def test_role_assignment_and_filtering(admin, cloud, cleanup, unique):
    p = admin.identity.create_project(name=unique("raproj"), domain_id="default")
    cleanup(admin.identity.delete_project, p.id)
    u = admin.identity.create_user(name=unique("rauser"), password="pw-ra-1",
                                   domain_id="default")
    cleanup(admin.identity.delete_user, u.id)
    member = admin.identity.find_role("member")
    reader = admin.identity.find_role("reader")
    admin.identity.assign_project_role_to_user(p, u, member)
    assert admin.identity.validate_user_has_project_role(p, u, member) is True
    assert admin.identity.validate_user_has_project_role(p, u, reader) is False

    direct = list(admin.identity.role_assignments(user_id=u.id))
    assert [(a.role["id"], a.scope["project"]["id"]) for a in direct] == [(member.id, p.id)]
    by_project = list(admin.identity.role_assignments(scope_project_id=p.id))
    assert [(a.user["id"], a.role["id"]) for a in by_project] == [(u.id, member.id)]
    assert list(admin.identity.role_assignments(scope_project_id=p.id,
                                                role_id=reader.id)) == []
    # effective: member implies reader
    eff = list(admin.identity.role_assignments(user_id=u.id, effective=True))
    assert {a.role["id"] for a in eff} == {member.id, reader.id}
    named = list(admin.identity.role_assignments(user_id=u.id, include_names=True))
    assert named[0].role["name"] == "member" and named[0].scope["project"]["name"] == p.name

    tok = cloud.token(u.name, "pw-ra-1", p.name)  # the user can scope to the project
    assert tok

    admin.identity.unassign_project_role_from_user(p, u, member)
    assert list(admin.identity.role_assignments(user_id=u.id)) == []
    assert admin.identity.validate_user_has_project_role(p, u, member) is False


def test_groups_and_membership(admin, cleanup, unique):
    g = admin.identity.create_group(name=unique("sdkgrp"), domain_id="default",
                                    description="g")
    cleanup(admin.identity.delete_group, g.id)
    u = admin.identity.create_user(name=unique("grpuser"), password="pw", domain_id="default")
    cleanup(admin.identity.delete_user, u.id)
    assert admin.identity.check_user_in_group(u, g) is False
    admin.identity.add_user_to_group(u, g)
    assert admin.identity.check_user_in_group(u, g) is True
    assert [x.id for x in admin.identity.group_users(g)] == [u.id]
    assert [x.id for x in admin.identity.user_groups(u)] == [g.id]
    admin.identity.remove_user_from_group(u, g)
    assert admin.identity.check_user_in_group(u, g) is False
    assert list(admin.identity.group_users(g)) == []
    admin.identity.delete_group(g.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.identity.get_group(g.id)


def test_domain_lifecycle(admin, cleanup, unique):
    name = unique("sdkdom")
    d = admin.identity.create_domain(name=name, description="dd", is_enabled=True)
    cleanup(admin.identity.delete_domain, d.id)
    cleanup(admin.identity.update_domain, d.id, is_enabled=False)
    assert d.name == name and d.is_enabled is True
    with pytest.raises(exceptions.ForbiddenException) as err:
        admin.identity.delete_domain(d.id)
    assert err.value.status_code == 403 and "disable" in str(err.value)
    assert admin.identity.get_domain(d.id).name == name  # still there
    admin.identity.update_domain(d.id, is_enabled=False)
    admin.identity.delete_domain(d.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.identity.get_domain(d.id)
    # created disabled, deleted straight away
    d2 = admin.identity.create_domain(name=unique("sdkdom"), is_enabled=False)
    cleanup(admin.identity.delete_domain, d2.id)
    assert d2.is_enabled is False
    admin.identity.delete_domain(d2.id)
    assert admin.identity.find_domain(d2.name) is None


def test_default_domain_cannot_be_deleted(admin):
    with pytest.raises(exceptions.ForbiddenException) as err:
        admin.identity.delete_domain("default")
    assert err.value.status_code == 403 and "default domain" in str(err.value).lower()
    with pytest.raises(exceptions.ForbiddenException):
        admin.identity.update_domain("default", is_enabled=False)
    d = admin.identity.get_domain("default")
    assert d.name == "Default" and d.is_enabled is True


def test_catalog_listing(admin, cloud):
    regions = [r.id for r in admin.identity.regions()]
    assert regions
    services = {s.type: s for s in admin.identity.services()}
    assert "identity" in services and services["identity"].name == "keystone"
    idsvc = services["identity"]
    eps = list(admin.identity.endpoints(service_id=idsvc.id))
    assert {e.interface: e.url for e in eps} == {
        "public": cloud.auth_url, "internal": cloud.auth_url, "admin": cloud.auth_url}
    assert all(e.region_id in regions for e in eps)
    public = list(admin.identity.endpoints(interface="public"))
    assert {e.service_id for e in public} == set(s.id for s in services.values())
    assert admin.identity.get_service(idsvc.id).type == "identity"


def test_application_credential_login(admin, cloud, unique):
    user_id = admin.current_user_id
    name = unique("sdkac")
    ac = admin.identity.create_application_credential(user_id, name, description="ci")
    try:
        assert ac.secret and ac.project_id == admin.current_project_id
        assert {r["name"] for r in ac.roles} == {"admin", "member", "reader"}
        conn = openstack.connection.Connection(
            auth_type="v3applicationcredential", identity_api_version="3",
            auth={"auth_url": cloud.auth_url, "application_credential_id": ac.id,
                  "application_credential_secret": ac.secret})
        try:
            assert conn.current_project_id == ac.project_id
            assert conn.current_user_id == user_id
            assert "admin" in {p.name for p in conn.identity.projects()}
        finally:
            conn.close()
        listed = admin.identity.application_credentials(user_id)
        assert name in {c.name for c in listed}
        bad = openstack.connection.Connection(
            auth_type="v3applicationcredential", identity_api_version="3",
            auth={"auth_url": cloud.auth_url, "application_credential_id": ac.id,
                  "application_credential_secret": "wrong"})
        with pytest.raises(exceptions.SDKException) as err:
            bad.authorize()
        assert "401" in str(err.value)
    finally:
        admin.identity.delete_application_credential(user_id, ac.id)
    with pytest.raises(exceptions.NotFoundException):
        admin.identity.get_application_credential(user_id, ac.id)


def test_demo_cannot_list_projects_but_sees_its_own(demo, cloud):
    with pytest.raises(exceptions.ForbiddenException):
        list(demo.identity.projects())
    mine = list(demo.identity.user_projects(demo.current_user_id))
    assert [p.name for p in mine] == ["demo"]
    assert mine[0].id == demo.current_project_id


def test_implied_roles(admin):
    roles = {r.id: r.name for r in admin.identity.roles()}
    r = admin.identity.get("/role_inferences")
    assert r.status_code == 200, r.text
    pairs = {(roles[rule["prior_role"]["id"]], imp["name"])
             for rule in r.json()["role_inferences"] for imp in rule["implies"]}
    assert {("admin", "member"), ("member", "reader")} <= pairs
    member = admin.identity.find_role("member")
    r = admin.identity.get(f"/roles/{member.id}/implies")
    assert [x["name"] for x in r.json()["role_inference"]["implies"]] == ["reader"]
