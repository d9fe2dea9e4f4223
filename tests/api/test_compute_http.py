"""Compute API over raw HTTP: version documents, microversion negotiation,
Nova's error bodies, and the validation of create requests."""

from __future__ import annotations

import base64

import pytest
import requests


@pytest.fixture(scope="module")
def nova(cloud):
    token = cloud.token("demo", cloud.demo_password, "demo")
    base = f"http://127.0.0.1:{cloud.ports['compute']}"
    s = requests.Session()
    s.headers.update({"X-Auth-Token": token, "Accept": "application/json"})
    return base, s


def test_version_documents_are_public(cloud):
    base = f"http://127.0.0.1:{cloud.ports['compute']}"
    doc = requests.get(f"{base}/v2.1", timeout=10).json()["version"]
    assert doc["id"] == "v2.1" and doc["min_version"] == "2.1"
    assert doc["version"] == "2.100"
    versions = requests.get(f"{base}/", timeout=10).json()["versions"]
    assert versions[0]["status"] == "CURRENT"
    # the catalog points at the port that answers
    catalog = requests.post(f"{cloud.auth_url}/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": cloud.admin_password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}},
        timeout=10).json()["token"]["catalog"]
    compute = [e for e in catalog if e["type"] == "compute"][0]
    assert compute["endpoints"][0]["url"].endswith(f":{cloud.ports['compute']}/v2.1")


def test_microversion_negotiation(nova):
    base, s = nova
    r = s.get(f"{base}/v2.1/flavors", headers={"OpenStack-API-Version": "compute 2.55"})
    assert r.headers["OpenStack-API-Version"] == "compute 2.55"
    assert "description" in r.json()["flavors"][0]
    r = s.get(f"{base}/v2.1/flavors")
    assert r.headers["OpenStack-API-Version"] == "compute 2.1"
    assert "description" not in r.json()["flavors"][0]
    r = s.get(f"{base}/v2.1/flavors", headers={"OpenStack-API-Version": "compute latest"})
    assert r.headers["OpenStack-API-Version"] == "compute 2.100"
    r = s.get(f"{base}/v2.1/flavors", headers={"OpenStack-API-Version": "compute 2.101"})
    assert r.status_code == 406


def test_errors_use_nova_bodies(nova):
    base, s = nova
    r = s.get(f"{base}/v2.1/servers/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["code"] == 404
    r = s.get(f"{base}/v2.1/flavors/nope")
    assert r.status_code == 404 and "nope" in r.json()["itemNotFound"]["message"]
    r = s.get(f"{base}/v2.1/servers", headers={"X-Auth-Token": "bogus"})
    assert r.status_code == 401


def _create(s, base, server: dict, mv="2.90"):
    body = {"server": {"name": "bad", "imageRef": "x", "flavorRef": "c1", **server}}
    return s.post(f"{base}/v2.1/servers", json=body,
                  headers={"OpenStack-API-Version": f"compute {mv}"})


def test_create_validation(nova, cloud):
    base, s = nova
    image = [i for i in cloud.openstack("image", "list", cloud="stackbox-demo")
             if i["Name"] == "tiny"][0]["ID"]
    r = _create(s, base, {"imageRef": image})
    assert r.status_code == 400 and "networks" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": image, "networks": "none", "user_data": "%%%"})
    assert r.status_code == 400 and "base 64" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": image, "networks": "none",
                          "user_data": base64.b64encode(b"x" * 50000).decode()})
    assert r.status_code == 400 and "65535" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": "no-such", "networks": "none"})
    assert r.status_code == 400 and "no-such" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": image, "networks": "none", "flavorRef": "zzz"})
    assert r.status_code == 400 and "zzz" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": image, "networks": "none", "key_name": "missing"})
    assert r.status_code == 400 and "missing" in r.json()["badRequest"]["message"]
    r = _create(s, base, {"imageRef": image, "networks": "bogus"})
    assert r.status_code == 400
    r = _create(s, base, {"imageRef": image, "networks": "none", "min_count": 3,
                          "max_count": 2})
    assert r.status_code == 400 and "min_count" in r.json()["badRequest"]["message"]
    r = s.get(f"{base}/v2.1/servers", params={"name": "^bad$"})
    assert r.json()["servers"] == []


def test_server_list_filters_and_paging(nova, cloud):
    base, s = nova
    image = [i for i in cloud.openstack("image", "list", cloud="stackbox-demo")
             if i["Name"] == "tiny"][0]["ID"]
    r = s.post(f"{base}/v2.1/servers", json={"server": {
        "name": "page", "imageRef": image, "flavorRef": "c1", "networks": "none",
        "min_count": 3, "max_count": 3}},
        headers={"OpenStack-API-Version": "compute 2.90"})
    assert r.status_code == 202, r.text
    hdr = {"OpenStack-API-Version": "compute 2.90"}
    listed = s.get(f"{base}/v2.1/servers/detail", params={"name": "^page-"},
                   headers=hdr).json()["servers"]
    assert sorted(x["name"] for x in listed) == ["page-1", "page-2", "page-3"]
    assert len({x["OS-EXT-SRV-ATTR:hostname"] for x in listed}) == 3
    first = s.get(f"{base}/v2.1/servers", params={"name": "^page-", "limit": 2},
                  headers=hdr).json()
    assert len(first["servers"]) == 2 and first["servers_links"][0]["rel"] == "next"
    rest = s.get(f"{base}/v2.1/servers", params={"name": "^page-", "limit": 2,
                                                 "marker": first["servers"][-1]["id"]},
                 headers=hdr).json()
    assert len(rest["servers"]) == 1
    by_flavor = s.get(f"{base}/v2.1/servers", params={"name": "^page-", "flavor": "1"},
                      headers=hdr).json()["servers"]
    assert by_flavor == []
    bad = s.get(f"{base}/v2.1/servers", params={"status": "NOPE"}, headers=hdr)
    assert bad.status_code == 400
    for x in listed:
        assert s.delete(f"{base}/v2.1/servers/{x['id']}").status_code == 204
