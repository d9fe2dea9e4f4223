"""Identity over raw HTTP (requests), for the details a client library hides:
status codes, headers and error bodies. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import requests

T = 30


def _base(cloud) -> str:
    return cloud.auth_url.rsplit("/v3", 1)[0]


def _auth(user, password, scope=None, *, methods=("password",)) -> dict:
    body = {"auth": {"identity": {"methods": list(methods), "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}}}}
    if scope is not None:
        body["auth"]["scope"] = scope
    return body


def _project_scope(name):
    return {"project": {"name": name, "domain": {"id": "default"}}}


def _issue(cloud, body, params=None):
    return requests.post(f"{cloud.auth_url}/auth/tokens", json=body, params=params, timeout=T)


def _keystone_error(r, code, title):
    assert r.status_code == code, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["title"] == title
    assert isinstance(err["message"], str) and err["message"]
    return err["message"]


class Admin:
    """Admin token + helpers that create users/projects and remember them."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.token = cloud.token()
        self.h = {"X-Auth-Token": self.token}
        self.created: list[str] = []

    def req(self, method, path, **kw):
        return requests.request(method, f"{self.cloud.auth_url}{path}", headers=self.h,
                                timeout=T, **kw)

    def project(self, name, **extra) -> str:
        r = self.req("POST", "/projects", json={"project": {"name": name, **extra}})
        assert r.status_code == 201, r.text
        self.created.append(f"/projects/{r.json()['project']['id']}")
        return r.json()["project"]["id"]

    def user(self, name, password, project_id=None, role="member", **extra) -> str:
        body = {"name": name, "password": password, **extra}
        r = self.req("POST", "/users", json={"user": body})
        assert r.status_code == 201, r.text
        uid = r.json()["user"]["id"]
        self.created.append(f"/users/{uid}")
        if project_id:
            self.grant("projects", project_id, uid, role)
        return uid

    def role_id(self, name) -> str:
        return self.req("GET", "/roles", params={"name": name}).json()["roles"][0]["id"]

    def grant(self, target, target_id, user_id, role):
        r = self.req("PUT", f"/{target}/{target_id}/users/{user_id}/roles/{self.role_id(role)}")
        assert r.status_code == 204, r.text

    def domain(self, name) -> str:
        r = self.req("POST", "/domains", json={"domain": {"name": name}})
        assert r.status_code == 201, r.text
        self.created.append(f"/domains/{r.json()['domain']['id']}")
        return r.json()["domain"]["id"]

    def cleanup(self):
        for path in reversed(self.created):
            if path.startswith("/domains/"):
                self.req("PATCH", path, json={"domain": {"enabled": False}})
            self.req("DELETE", path)


@pytest.fixture
def admin(cloud):
    a = Admin(cloud)
    yield a
    a.cleanup()


def test_version_documents_and_request_ids(cloud):
    r = requests.get(f"{_base(cloud)}/", timeout=T)
    assert r.status_code == 300
    values = r.json()["versions"]["values"]
    v3 = [v for v in values if v["id"].startswith("v3")]
    assert len(v3) == 1 and v3[0]["status"] == "stable"
    assert {"rel": "self", "href": f"{cloud.auth_url}/"} in v3[0]["links"]
    r2 = requests.get(cloud.auth_url, timeout=T)
    assert r2.status_code == 200 and r2.json()["version"]["id"] == v3[0]["id"]
    r3 = requests.get(f"{cloud.auth_url}/projects", timeout=T)  # 401 from the middleware
    r4 = _issue(cloud, _auth("admin", cloud.admin_password, _project_scope("admin")))
    r5 = requests.get(f"{cloud.auth_url}/no-such-thing",
                      headers={"X-Auth-Token": r4.headers["X-Subject-Token"]}, timeout=T)
    ids = [x.headers.get("x-openstack-request-id", "") for x in (r, r2, r3, r4, r5)]
    assert [x.status_code for x in (r3, r4, r5)] == [401, 201, 404]
    assert all(i.startswith("req-") and len(i) > 10 for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_issue_token_body(cloud):
    r = _issue(cloud, _auth("admin", cloud.admin_password, _project_scope("admin")))
    assert r.status_code == 201, r.text
    assert r.headers["X-Subject-Token"]
    tok = r.json()["token"]
    assert tok["methods"] == ["password"]
    assert tok["user"]["name"] == "admin" and tok["user"]["domain"]["id"] == "default"
    assert tok["project"]["name"] == "admin" and tok["project"]["domain"]["id"] == "default"
    assert {x["name"] for x in tok["roles"]} >= {"admin", "member", "reader"}
    assert "identity" in {c["type"] for c in tok["catalog"]}
    assert tok["expires_at"] > tok["issued_at"] and tok["expires_at"].endswith("Z")
    assert len(tok["audit_ids"]) == 1 and tok["audit_ids"][0]
    r = _issue(cloud, _auth("admin", cloud.admin_password, _project_scope("admin")),
               params="nocatalog")
    assert r.status_code == 201 and "catalog" not in r.json()["token"]
    assert r.json()["token"]["roles"]


def test_unscoped_tokens(cloud, admin, unique):
    r = _issue(cloud, _auth("admin", cloud.admin_password, "unscoped"))
    assert r.status_code == 201, r.text
    tok = r.json()["token"]
    assert tok["user"]["name"] == "admin"
    assert not {"roles", "catalog", "project", "domain"} & set(tok)
    # A user with no default project and no scope gets an unscoped token too.
    name = unique("nodef")
    admin.user(name, "pw-nodef-1")
    r = _issue(cloud, _auth(name, "pw-nodef-1"))
    assert r.status_code == 201, r.text
    assert not {"roles", "catalog", "project"} & set(r.json()["token"])


def test_domain_scope_needs_a_domain_role(cloud, admin, unique):
    r = _issue(cloud, _auth("admin", cloud.admin_password, {"domain": {"id": "default"}}))
    _keystone_error(r, 401, "Unauthorized")
    name = unique("domadm")
    uid = admin.user(name, "pw-dom-1")
    admin.grant("domains", "default", uid, "reader")
    r = _issue(cloud, _auth(name, "pw-dom-1", {"domain": {"name": "Default"}}))
    assert r.status_code == 201, r.text
    tok = r.json()["token"]
    assert tok["domain"] == {"id": "default", "name": "Default"} and "project" not in tok
    assert [x["name"] for x in tok["roles"]] == ["reader"]


def test_rescope_by_token_keeps_expiry(cloud):
    r = _issue(cloud, _auth("admin", cloud.admin_password, "unscoped"))
    first = r.json()["token"]
    body = {"auth": {"identity": {"methods": ["token"],
                                  "token": {"id": r.headers["X-Subject-Token"]}},
                     "scope": _project_scope("admin")}}
    r2 = _issue(cloud, body)
    assert r2.status_code == 201, r2.text
    second = r2.json()["token"]
    assert second["expires_at"] == first["expires_at"]
    assert second["project"]["name"] == "admin" and "token" in second["methods"]
    assert second["audit_ids"][1] == first["audit_ids"][0]
    assert r2.headers["X-Subject-Token"] != r.headers["X-Subject-Token"]


def test_wrong_password_and_unknown_user_look_the_same(cloud, unique):
    wrong = _issue(cloud, _auth("admin", "not-the-password", _project_scope("admin")))
    nobody = _issue(cloud, _auth(unique("ghost"), "not-the-password", _project_scope("admin")))
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json()
    assert wrong.json()["error"]["title"] == "Unauthorized"
    assert "X-Subject-Token" not in wrong.headers


@pytest.mark.parametrize("path", ["/auth/tokens", "/projects"])
def test_malformed_json_is_400(cloud, admin, path):
    r = requests.post(f"{cloud.auth_url}{path}", data="{not json", timeout=T,
                      headers={"X-Auth-Token": admin.token,
                               "Content-Type": "application/json"})
    msg = _keystone_error(r, 400, "Bad Request")
    assert "not valid JSON" in msg


def test_validation_errors_name_the_field(cloud, admin, unique):
    r = admin.req("POST", "/projects", json={"project": {"name": 5}})
    assert "'project.name'" in _keystone_error(r, 400, "Bad Request")
    r = admin.req("POST", "/projects", json={"name": unique("p")})
    assert "'project'" in _keystone_error(r, 400, "Bad Request")


def test_missing_and_garbage_tokens_are_401(cloud):
    r = requests.get(f"{cloud.auth_url}/projects", timeout=T)
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "title", "message"}
    _keystone_error(r, 401, "Unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")
    r = requests.get(f"{cloud.auth_url}/projects", headers={"X-Auth-Token": "garbage"},
                     timeout=T)
    _keystone_error(r, 401, "Unauthorized")


def test_validate_head_and_revoke(cloud, admin):
    subject = cloud.token()
    both = {"X-Auth-Token": admin.token, "X-Subject-Token": subject}
    r = requests.head(f"{cloud.auth_url}/auth/tokens", headers=both, timeout=T)
    assert r.status_code == 200 and r.headers["X-Subject-Token"] == subject
    r = requests.get(f"{cloud.auth_url}/auth/tokens", headers=both, timeout=T)
    assert r.status_code == 200 and r.json()["token"]["project"]["name"] == "admin"
    r = requests.delete(f"{cloud.auth_url}/auth/tokens", headers=both, timeout=T)
    assert r.status_code == 204
    r = requests.get(f"{cloud.auth_url}/auth/tokens", headers=both, timeout=T)
    _keystone_error(r, 404, "Not Found")
    r = requests.get(f"{cloud.auth_url}/projects", headers={"X-Auth-Token": subject},
                     timeout=T)
    _keystone_error(r, 401, "Unauthorized")
    # The caller's own token is untouched.
    assert admin.req("GET", "/projects").status_code == 200


def test_password_change_by_admin_revokes_user_tokens(cloud, admin, unique):
    name, pname = unique("pwch"), unique("pwproj")
    pid = admin.project(pname)
    uid = admin.user(name, "pw-old-1", pid)
    tok = cloud.token(name, "pw-old-1", pname)
    h = {"X-Auth-Token": tok}
    assert requests.get(f"{cloud.auth_url}/users/{uid}", headers=h, timeout=T).status_code == 200
    r = admin.req("PATCH", f"/users/{uid}", json={"user": {"password": "pw-new-2"}})
    assert r.status_code == 200, r.text
    r = requests.get(f"{cloud.auth_url}/users/{uid}", headers=h, timeout=T)
    _keystone_error(r, 401, "Unauthorized")
    r = _issue(cloud, _auth(name, "pw-old-1", _project_scope(pname)))
    _keystone_error(r, 401, "Unauthorized")
    r = _issue(cloud, _auth(name, "pw-new-2", _project_scope(pname)))
    assert r.status_code == 201 and r.json()["token"]["project"]["id"] == pid


def test_disabling_a_project_invalidates_its_tokens(cloud, admin, unique):
    pname = unique("disproj")
    pid = admin.project(pname)
    name = unique("disuser")
    admin.user(name, "pw-dis-1", pid)
    h = {"X-Auth-Token": cloud.token(name, "pw-dis-1", pname)}
    assert requests.get(f"{cloud.auth_url}/projects/{pid}", headers=h,
                        timeout=T).status_code == 200
    r = admin.req("PATCH", f"/projects/{pid}", json={"project": {"enabled": False}})
    assert r.status_code == 200 and r.json()["project"]["enabled"] is False
    r = requests.get(f"{cloud.auth_url}/projects/{pid}", headers=h, timeout=T)
    _keystone_error(r, 401, "Unauthorized")
    _keystone_error(_issue(cloud, _auth(name, "pw-dis-1", _project_scope(pname))),
                    401, "Unauthorized")


def test_tokens_survive_key_rotation(cloud, admin):
    before = cloud.token()
    out = cloud.stackbox("keys", "rotate")
    assert "new primary token signing key" in out.stdout
    after = cloud.token()
    for tok in (before, after):
        r = requests.get(f"{cloud.auth_url}/auth/tokens", timeout=T,
                         headers={"X-Auth-Token": admin.token, "X-Subject-Token": tok})
        assert r.status_code == 200, r.text
        r = requests.get(f"{cloud.auth_url}/projects", headers={"X-Auth-Token": tok},
                         timeout=T)
        assert r.status_code == 200, r.text


def test_unknown_path_is_keystone_404(cloud, admin):
    r = admin.req("GET", "/no-such-resource")
    msg = _keystone_error(r, 404, "Not Found")
    assert msg == "The resource could not be found."
    r = admin.req("PUT", "/projects", json={})
    _keystone_error(r, 405, "Method Not Allowed")


def test_unknown_path_without_token_is_404(cloud):
    r = requests.get(f"{cloud.auth_url}/no-such-resource", timeout=T)
    _keystone_error(r, 404, "Not Found")


@pytest.mark.parametrize("case", ["token-str", "app-cred-str", "scope-project-str"])
def test_malformed_auth_members_are_400_not_500(cloud, case):
    auth = {"token-str": {"identity": {"methods": ["token"], "token": "abc"}},
            "app-cred-str": {"identity": {"methods": ["application_credential"],
                                          "application_credential": "x"}},
            # valid credentials, so that the scope is what gets parsed
            "scope-project-str": _auth("admin", cloud.admin_password,
                                       {"project": "admin"})["auth"]}[case]
    r = requests.post(f"{cloud.auth_url}/auth/tokens", json={"auth": auth}, timeout=T)
    _keystone_error(r, 400, "Bad Request")


def test_disabling_a_domain_invalidates_its_tokens(cloud, admin, unique):
    did = admin.domain(unique("dom"))
    pid = admin.project(unique("dproj"), domain_id=did)
    name = unique("duser")
    admin.user(name, "pw-dom-2", pid, domain_id=did)
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": name, "domain": {"id": did}, "password": "pw-dom-2"}}},
        "scope": {"project": {"id": pid}}}}
    r = _issue(cloud, body)
    assert r.status_code == 201, r.text
    h = {"X-Auth-Token": r.headers["X-Subject-Token"]}
    r = admin.req("PATCH", f"/domains/{did}", json={"domain": {"enabled": False}})
    assert r.status_code == 200 and r.json()["domain"]["enabled"] is False
    _keystone_error(_issue(cloud, body), 401, "Unauthorized")
    r = requests.get(f"{cloud.auth_url}/projects/{pid}", headers=h, timeout=T)
    _keystone_error(r, 401, "Unauthorized")


def test_demo_sees_only_itself(cloud, admin):
    demo = cloud.token("demo", cloud.demo_password, "demo")
    h = {"X-Auth-Token": demo}
    me = requests.get(f"{cloud.auth_url}/auth/tokens", timeout=T,
                      headers={**h, "X-Subject-Token": demo}).json()["token"]["user"]["id"]
    admin_id = admin.req("GET", "/users", params={"name": "admin"}).json()["users"][0]["id"]
    r = requests.get(f"{cloud.auth_url}/users/{admin_id}", headers=h, timeout=T)
    assert "identity:get_user" in _keystone_error(r, 403, "Forbidden")
    r = requests.get(f"{cloud.auth_url}/users/{me}", headers=h, timeout=T)
    assert r.status_code == 200 and r.json()["user"]["name"] == "demo"
    # EC2 credentials belong to their owner only.
    demo_pid = admin.req("GET", "/projects", params={"name": "demo"}).json()["projects"][0]["id"]
    ec2 = f"{cloud.auth_url}/users/{admin_id}/credentials/OS-EC2"
    r = requests.post(ec2, headers=h, json={"tenant_id": demo_pid}, timeout=T)
    _keystone_error(r, 403, "Forbidden")
    _keystone_error(requests.get(ec2, headers=h, timeout=T), 403, "Forbidden")
    r = requests.post(f"{cloud.auth_url}/users/{me}/credentials/OS-EC2", headers=h,
                      json={"tenant_id": demo_pid}, timeout=T)
    assert r.status_code == 201 and r.json()["credential"]["user_id"] == me
    access = r.json()["credential"]["access"]
    r = requests.delete(f"{cloud.auth_url}/users/{me}/credentials/OS-EC2/{access}",
                        headers=h, timeout=T)
    assert r.status_code == 204
