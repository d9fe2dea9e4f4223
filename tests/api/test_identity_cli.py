"""Identity through the `openstack` CLI, against a started stackbox (SQLite and
PostgreSQL)."""

from __future__ import annotations

import requests


def test_token_issue_and_catalog(cloud):
    tok = cloud.openstack("token", "issue")
    assert tok["id"] and tok["project_id"] and tok["user_id"]
    catalog = cloud.openstack("catalog", "list")
    identity = [c for c in catalog if c["Type"] == "identity"]
    assert identity, catalog
    # The catalog points at the port that really serves the API.
    urls = {e["url"] for e in identity[0]["Endpoints"]}
    assert urls == {cloud.auth_url}
    assert requests.get(cloud.auth_url, timeout=10).status_code == 200
    # Nothing else is advertised: every endpoint in the catalog answers.
    for entry in catalog:
        for ep in entry["Endpoints"]:
            assert requests.get(ep["url"], timeout=10).status_code < 500


def test_token_revoke_gives_401(cloud):
    token = cloud.token()
    headers = {"X-Auth-Token": token}
    assert requests.get(f"{cloud.auth_url}/projects", headers=headers,
                        timeout=10).status_code == 200
    cloud.openstack("token", "revoke", token, as_json=False)
    r = requests.get(f"{cloud.auth_url}/projects", headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 401
    # Validating the revoked token as a subject says it is gone.
    admin = cloud.token()
    r = requests.get(f"{cloud.auth_url}/auth/tokens", timeout=10,
                     headers={"X-Auth-Token": admin, "X-Subject-Token": token})
    assert r.status_code == 404


def test_project_crud(cloud, unique):
    name = unique("proj")
    p = cloud.openstack("project", "create", "--description", "first", name)
    assert p["name"] == name and p["description"] == "first" and p["enabled"] is True
    cloud.openstack("project", "set", "--description", "second", "--disable", name,
                    as_json=False)
    shown = cloud.openstack("project", "show", name)
    assert shown["description"] == "second" and shown["enabled"] is False
    assert name in [x["Name"] for x in cloud.openstack("project", "list")]
    dup = cloud.openstack("project", "create", name, check=False)
    assert dup.returncode != 0 and "409" in dup.stderr + dup.stdout
    cloud.openstack("project", "delete", name, as_json=False)
    assert name not in [x["Name"] for x in cloud.openstack("project", "list")]
    gone = cloud.openstack("project", "show", name, check=False)
    assert gone.returncode != 0 and "no project found" in gone.stderr.lower()


def test_user_crud_and_password_change(cloud, unique):
    name, project = unique("user"), unique("proj")
    cloud.openstack("project", "create", project)
    u = cloud.openstack("user", "create", "--password", "pw-one-1", "--project", project,
                        "--email", "u@example.com", name)
    assert u["name"] == name and u["email"] == "u@example.com"
    cloud.openstack("role", "add", "--user", name, "--project", project, "member",
                    as_json=False)
    env = cloud.user_env(name, "pw-one-1", project)
    assert cloud.openstack("token", "issue", cloud=None, env=env)["user_id"] == u["id"]
    cloud.openstack("user", "password", "set", "--password", "pw-two-2",
                    "--original-password", "pw-one-1", cloud=None, env=env, as_json=False)
    old = cloud.openstack("token", "issue", cloud=None, env=env, check=False)
    assert old.returncode != 0 and "401" in old.stderr
    env["OS_PASSWORD"] = "pw-two-2"
    assert cloud.openstack("token", "issue", cloud=None, env=env)["user_id"] == u["id"]
    cloud.openstack("user", "set", "--disable", name, as_json=False)
    disabled = cloud.openstack("token", "issue", cloud=None, env=env, check=False)
    assert disabled.returncode != 0 and "401" in disabled.stderr
    cloud.openstack("user", "delete", name, as_json=False)
    cloud.openstack("project", "delete", project, as_json=False)
    assert name not in [x["Name"] for x in cloud.openstack("user", "list")]


def test_roles_groups_and_assignments(cloud, unique):
    role, group, user, project = unique("role"), unique("grp"), unique("user"), unique("proj")
    cloud.openstack("role", "create", role)
    cloud.openstack("project", "create", project)
    cloud.openstack("user", "create", "--password", "pw", user)
    cloud.openstack("group", "create", group)
    cloud.openstack("group", "add", "user", group, user, as_json=False)
    cloud.openstack("role", "add", "--group", group, "--project", project, role, as_json=False)
    direct = cloud.openstack("role", "assignment", "list", "--project", project, "--names")
    assert [(a["Role"], a["Group"]) for a in direct] == [(role, f"{group}@Default")]
    effective = cloud.openstack("role", "assignment", "list", "--effective", "--user", user,
                                "--names")
    assert [(a["Role"], a["Project"]) for a in effective] == [(role, f"{project}@Default")]
    # The user can now scope to the project through the group.
    env = cloud.user_env(user, "pw", project)
    assert cloud.openstack("token", "issue", cloud=None, env=env)["project_id"]
    cloud.openstack("role", "remove", "--group", group, "--project", project, role,
                    as_json=False)
    assert cloud.openstack("role", "assignment", "list", "--project", project) == []
    for args in (("group", "delete", group), ("user", "delete", user),
                 ("project", "delete", project), ("role", "delete", role)):
        cloud.openstack(*args, as_json=False)


def test_implied_roles(cloud):
    implied = cloud.openstack("implied", "role", "list")
    pairs = {(r["Prior Role Name"], r["Implied Role Name"]) for r in implied}
    assert {("admin", "member"), ("member", "reader")} <= pairs


def test_application_credential_login(cloud, unique):
    name = unique("ac")
    ac = cloud.openstack("application", "credential", "create", name)
    assert ac["Secret"] and ac["Project ID"]
    assert {r["name"] for r in ac["Roles"]} == {"admin", "member", "reader"}
    env = cloud.env(OS_AUTH_TYPE="v3applicationcredential", OS_AUTH_URL=cloud.auth_url,
                    OS_APPLICATION_CREDENTIAL_ID=ac["ID"],
                    OS_APPLICATION_CREDENTIAL_SECRET=ac["Secret"], OS_IDENTITY_API_VERSION="3")
    tok = cloud.openstack("token", "issue", cloud=None, env=env)
    assert tok["project_id"] == ac["Project ID"]
    assert cloud.openstack("project", "list", cloud=None, env=env)  # admin roles carried over
    env["OS_APPLICATION_CREDENTIAL_SECRET"] = "wrong"
    bad = cloud.openstack("token", "issue", cloud=None, env=env, check=False)
    assert bad.returncode != 0 and "401" in bad.stderr
    listed = cloud.openstack("application", "credential", "list")
    assert name in [x["Name"] for x in listed]
    cloud.openstack("application", "credential", "delete", name, as_json=False)
    env["OS_APPLICATION_CREDENTIAL_SECRET"] = ac["Secret"]
    gone = cloud.openstack("token", "issue", cloud=None, env=env, check=False)
    assert gone.returncode != 0


def test_ec2_credentials_crud(cloud):
    created = cloud.openstack("ec2", "credentials", "create")
    assert len(created["access"]) == 32 and len(created["secret"]) == 32
    listed = cloud.openstack("ec2", "credentials", "list")
    assert created["access"] in [c["Access"] for c in listed]
    shown = cloud.openstack("ec2", "credentials", "show", created["access"])
    assert shown["secret"] == created["secret"]
    cloud.openstack("ec2", "credentials", "delete", created["access"], as_json=False)
    listed = cloud.openstack("ec2", "credentials", "list")
    assert created["access"] not in [c["Access"] for c in listed]


def test_member_cannot_create_users(cloud, unique):
    res = cloud.openstack("user", "create", "--password", "x", unique("nope"),
                          cloud="stackbox-demo", check=False)
    assert res.returncode != 0 and "403" in res.stderr
    # ...but sees its own project and the catalog.
    assert cloud.openstack("catalog", "list", cloud="stackbox-demo")
    mine = cloud.openstack("project", "list", "--my-projects", cloud="stackbox-demo")
    assert [p["Name"] for p in mine] == ["demo"]


def test_reader_cannot_write(cloud, unique):
    user = unique("reader")
    cloud.openstack("user", "create", "--password", "pw-reader", user)
    cloud.openstack("role", "add", "--user", user, "--project", "demo", "reader",
                    as_json=False)
    env = cloud.user_env(user, "pw-reader", "demo")
    tok = cloud.openstack("token", "issue", cloud=None, env=env)
    assert tok["project_id"]
    for args in (("project", "create", unique("p")), ("role", "create", unique("r")),
                 ("user", "create", "--password", "x", unique("u"))):
        res = cloud.openstack(*args, cloud=None, env=env, check=False)
        assert res.returncode != 0 and "403" in res.stderr, (args, res.stderr)
    # A direct PATCH of the reader's own project is refused too.
    token = cloud.token(user, "pw-reader", "demo")
    r = requests.patch(f"{cloud.auth_url}/projects/{tok['project_id']}", timeout=10,
                       headers={"X-Auth-Token": token}, json={"project": {"description": "x"}})
    assert r.status_code == 403 and "identity:update_project" in r.json()["error"]["message"]
    cloud.openstack("user", "delete", user, as_json=False)
