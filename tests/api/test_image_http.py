"""The image API over raw HTTP: what clients rely on but do not show —
status codes, error bodies, JSON patch, ranges, inspection and quota."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import requests

from tests.api.test_image_cli import qcow2
from tests.conftest import Cloud

PATCH = "application/openstack-images-v2.1-json-patch"


@pytest.fixture
def glance(cloud):
    return Glance(cloud)


class Glance:
    def __init__(self, cloud, *, user="admin", password=None, project="admin"):
        self.url = f"http://127.0.0.1:{cloud.image_port}"
        self.token = cloud.token(user, password, project)
        self.cloud = cloud
        self.created: list[str] = []

    def req(self, method, path, *, headers=None, **kw):
        h = {"X-Auth-Token": self.token, **(headers or {})}
        return requests.request(method, self.url + path, headers=h, timeout=60, **kw)

    def create(self, **body) -> dict:
        r = self.req("POST", "/v2/images", json=body)
        assert r.status_code == 201, r.text
        self.created.append(r.json()["id"])
        return r.json()

    def patch(self, image_id, ops, ctype=PATCH):
        return self.req("PATCH", f"/v2/images/{image_id}", json=ops,
                        headers={"Content-Type": ctype})

    def upload(self, image_id, data, **headers):
        return self.req("PUT", f"/v2/images/{image_id}/file", data=data,
                        headers={"Content-Type": "application/octet-stream", **headers})


def test_versions_and_schemas(glance):
    r = requests.get(glance.url + "/", timeout=10)
    assert r.status_code == 300
    versions = r.json()["versions"]
    assert versions[0]["status"] == "CURRENT" and versions[0]["id"].startswith("v2.")
    assert versions[0]["links"][0]["href"] == f"{glance.url}/v2/"
    assert {v["id"] for v in versions} >= {"v2.0", "v2.16"}
    image = glance.req("GET", "/v2/schemas/image").json()
    assert image["name"] == "image" and "visibility" in image["properties"]
    assert image["additionalProperties"] == {"type": "string"}
    images = glance.req("GET", "/v2/schemas/images").json()
    assert images["properties"]["images"]["items"]["name"] == "image"
    assert glance.req("GET", "/v2/schemas/members").json()["name"] == "members"
    assert requests.get(glance.url + "/v2/images", timeout=10).status_code == 401


def test_create_show_fields_like_glance(glance):
    img = glance.create(name="fields", disk_format="qcow2", container_format="bare",
                        os_type="windows", hw_vif_model="e1000", min_ram=64)
    for key in ("checksum", "size", "virtual_size", "os_hash_algo", "os_hash_value"):
        assert key in img and img[key] is None, key
    assert img["status"] == "queued" and img["visibility"] == "shared"
    assert img["self"] == f"/v2/images/{img['id']}" and img["file"].endswith("/file")
    assert img["schema"] == "/v2/schemas/image" and img["os_hidden"] is False
    assert img["os_type"] == "windows" and img["hw_vif_model"] == "e1000"
    assert len(img["created_at"]) == 20 and img["created_at"].endswith("Z")
    got = glance.req("GET", f"/v2/images/{img['id']}").json()
    assert got == img
    # Glance's rules for bad bodies
    r = glance.req("POST", "/v2/images", json={"name": "x", "status": "active"})
    assert r.status_code == 403 and "read-only" in r.text
    r = glance.req("POST", "/v2/images", json={"name": "x", "hw_cpu_cores": 2})
    assert r.status_code == 400 and "hw_cpu_cores" in r.text
    r = glance.req("POST", "/v2/images", json={"disk_format": "floppy"})
    assert r.status_code == 400 and "disk_format" in r.text
    r = glance.req("POST", "/v2/images", json={"kernel_id": "not-a-uuid"})
    assert r.status_code == 400
    fixed = "6c2b4d0c-8b5b-4a80-9e9a-3a4c0e6b9f1e"
    assert glance.create(id=fixed, name="fixed")["id"] == fixed
    r = glance.req("POST", "/v2/images", json={"id": fixed})
    assert r.status_code == 409
    for image_id in glance.created:
        glance.req("DELETE", f"/v2/images/{image_id}")


def test_error_bodies(glance):
    missing = "/v2/images/00000000-0000-0000-0000-000000000000"
    r = glance.req("GET", missing)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "404 Not Found" in r.text and "No image found with ID" in r.text
    r = glance.req("GET", missing, headers={"Accept": "application/json"})
    assert r.json()["code"] == "404 Not Found" and "No image found" in r.json()["message"]
    r = glance.req("GET", missing, headers={"Accept": "text/plain"})
    assert r.text.startswith("404 Not Found\n\nNo image found with ID")


def test_json_patch(glance):
    img = glance.create(name="patchme", disk_format="raw", container_format="bare")
    iid = img["id"]
    r = glance.patch(iid, [{"op": "replace", "path": "/name", "value": "patched"},
                           {"op": "add", "path": "/os_distro", "value": "debian"},
                           {"op": "add", "path": "/tags", "value": ["a", "b"]},
                           {"op": "replace", "path": "/min_disk", "value": 3}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["os_distro"], body["tags"], body["min_disk"]) == (
        "patched", "debian", ["a", "b"], 3)
    r = glance.patch(iid, [{"op": "remove", "path": "/os_distro"}])
    assert r.status_code == 200 and "os_distro" not in r.json()
    assert glance.patch(iid, [{"op": "replace", "path": "/nope", "value": "x"}]
                        ).status_code == 409
    assert glance.patch(iid, [{"op": "remove", "path": "/nope"}]).status_code == 409
    assert glance.patch(iid, [{"op": "remove", "path": "/name"}]).status_code == 403
    assert glance.patch(iid, [{"op": "replace", "path": "/size", "value": 1}]
                        ).status_code == 403
    assert glance.patch(iid, [{"op": "move", "path": "/name"}]).status_code == 400
    assert glance.patch(iid, [{"op": "add", "path": "/visibility", "value": "bogus"}]
                        ).status_code == 400
    r = glance.patch(iid, [{"op": "replace", "path": "/name", "value": "x"}],
                     ctype="application/json")
    assert r.status_code == 415
    # tags by URL
    assert glance.req("PUT", f"/v2/images/{iid}/tags/c").status_code == 204
    assert glance.req("DELETE", f"/v2/images/{iid}/tags/a").status_code == 204
    assert glance.req("DELETE", f"/v2/images/{iid}/tags/zz").status_code == 404
    assert glance.req("GET", f"/v2/images/{iid}").json()["tags"] == ["b", "c"]
    glance.req("DELETE", f"/v2/images/{iid}")


def test_upload_download_range(glance):
    data = os.urandom(3 * 1024 * 1024 + 17)
    img = glance.create(name="rawdata", disk_format="raw", container_format="bare")
    iid = img["id"]
    assert glance.req("GET", f"/v2/images/{iid}/file").status_code == 204  # no data yet
    r = glance.upload(iid, data)
    assert r.status_code == 204, r.text
    got = glance.req("GET", f"/v2/images/{iid}").json()
    assert got["status"] == "active" and got["size"] == len(data)
    assert got["virtual_size"] == len(data)
    assert got["checksum"] == hashlib.md5(data).hexdigest()
    assert got["os_hash_value"] == hashlib.sha512(data).hexdigest()
    r = glance.req("GET", f"/v2/images/{iid}/file")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-MD5"] == got["checksum"]
    r = glance.req("GET", f"/v2/images/{iid}/file", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = glance.req("GET", f"/v2/images/{iid}/file", headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = glance.req("GET", f"/v2/images/{iid}/file",
                   headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    # an active image takes no second upload
    assert glance.upload(iid, b"again").status_code == 409
    # disk_format is fixed once there is data
    assert glance.patch(iid, [{"op": "replace", "path": "/disk_format",
                               "value": "qcow2"}]).status_code == 403
    glance.req("DELETE", f"/v2/images/{iid}")
    assert not (glance.cloud.data_dir / "images" / iid).exists()


def _staging_empty(cloud) -> bool:
    return list((cloud.data_dir / "images" / "staging").iterdir()) == []


def _rejected(glance, tmp_path, path, disk_format, expect: str):
    img = glance.create(name="bad", disk_format=disk_format, container_format="bare")
    with open(path, "rb") as f:
        r = glance.upload(img["id"], f)
    assert r.status_code == 400, r.text
    assert expect in r.text
    got = glance.req("GET", f"/v2/images/{img['id']}").json()
    assert got["status"] == "queued" and got["size"] is None and got["checksum"] is None
    assert not (glance.cloud.data_dir / "images" / img["id"]).exists()
    assert _staging_empty(glance.cloud)
    glance.req("DELETE", f"/v2/images/{img['id']}")


def test_qcow2_declared_raw_is_rejected(glance, tmp_path):
    _rejected(glance, tmp_path, qcow2(tmp_path / "q.qcow2"), "raw",
              "declared &#x27;raw&#x27; but the data is &#x27;qcow2&#x27;")


def test_raw_declared_qcow2_is_rejected(glance, tmp_path):
    raw = tmp_path / "r.img"
    raw.write_bytes(os.urandom(65536))
    _rejected(glance, tmp_path, raw, "qcow2", "qcow2")


def test_qcow2_with_backing_file_is_rejected(glance, tmp_path):
    base = qcow2(tmp_path / "base.qcow2")
    over = tmp_path / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                    str(over)], check=True)
    _rejected(glance, tmp_path, over, "qcow2", "backing file")


def test_qcow2_with_external_data_file_is_rejected(glance, tmp_path):
    img = tmp_path / "df.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={tmp_path / 'data.raw'}", str(img), "1M"], check=True)
    _rejected(glance, tmp_path, img, "qcow2", "external data file")


def test_list_filters_sort_and_pages(glance, unique):
    tag = unique("page")
    made = [glance.create(name=f"{tag}-{i}", tags=[tag], disk_format=fmt,
                          container_format="bare")["id"]
            for i, fmt in enumerate(["raw", "qcow2", "raw", "iso", "raw"])]
    try:
        r = glance.req("GET", "/v2/images", params={"tag": tag, "sort": "name:asc",
                                                    "limit": 2})
        body = r.json()
        assert [i["name"] for i in body["images"]] == [f"{tag}-0", f"{tag}-1"]
        assert body["first"] == "/v2/images" and body["schema"] == "/v2/schemas/images"
        names = [i["name"] for i in body["images"]]
        while "next" in body:
            assert body["next"].startswith("/v2/images?")
            body = glance.req("GET", body["next"]).json()
            names += [i["name"] for i in body["images"]]
        assert names == [f"{tag}-{i}" for i in range(5)]
        r = glance.req("GET", "/v2/images", params={"tag": tag, "disk_format": "raw",
                                                    "sort_key": "name", "sort_dir": "desc"})
        assert [i["name"] for i in r.json()["images"]] == [f"{tag}-4", f"{tag}-2", f"{tag}-0"]
        r = glance.req("GET", "/v2/images", params={"tag": tag, "status": "active"})
        assert r.json()["images"] == []
        r = glance.req("GET", "/v2/images", params={"sort_key": "bogus"})
        assert r.status_code == 400
        r = glance.req("GET", "/v2/images", params={"marker": "nope"})
        assert r.status_code == 400
    finally:
        for image_id in made:
            glance.req("DELETE", f"/v2/images/{image_id}")


def test_deactivated_image_data_is_forbidden(cloud, glance):
    demo = Glance(cloud, user="demo", password=cloud.demo_password, project="demo")
    img = demo.create(name="deact", disk_format="raw", container_format="bare")
    assert demo.upload(img["id"], b"x" * 1000).status_code == 204
    assert demo.req("POST", f"/v2/images/{img['id']}/actions/deactivate").status_code == 204
    assert demo.req("GET", f"/v2/images/{img['id']}").json()["status"] == "deactivated"
    assert demo.req("GET", f"/v2/images/{img['id']}/file").status_code == 403
    assert glance.req("GET", f"/v2/images/{img['id']}/file").status_code == 200
    assert demo.req("POST", f"/v2/images/{img['id']}/actions/reactivate").status_code == 204
    assert demo.req("GET", f"/v2/images/{img['id']}/file").content == b"x" * 1000
    assert demo.req("DELETE", f"/v2/images/{img['id']}").status_code == 204


def test_reader_can_read_but_not_write(cloud, glance, unique):
    user = unique("reader")
    cloud.openstack("user", "create", "--password", "pw-reader", user)
    cloud.openstack("role", "add", "--user", user, "--project", "demo", "reader",
                    as_json=False)
    demo = Glance(cloud, user="demo", password=cloud.demo_password, project="demo")
    reader = Glance(cloud, user=user, password="pw-reader", project="demo")
    img = demo.create(name="readable", disk_format="raw", container_format="bare")
    try:
        assert reader.req("GET", f"/v2/images/{img['id']}").status_code == 200
        assert reader.req("POST", "/v2/images", json={"name": "no"}).status_code == 403
        assert reader.upload(img["id"], b"data").status_code == 403
        assert reader.patch(img["id"], [{"op": "replace", "path": "/name",
                                         "value": "x"}]).status_code == 403
        assert reader.req("DELETE", f"/v2/images/{img['id']}").status_code == 403
    finally:
        demo.req("DELETE", f"/v2/images/{img['id']}")
        cloud.openstack("user", "delete", user, as_json=False)


@pytest.fixture
def small_quota_cloud(tmp_path):
    c = Cloud(tmp_path, "sqlite", "")
    c.config.write_text(c.config.read_text().replace(
        "[image]\n", "[image]\nmax_project_bytes = 1000000\n"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_quota_exceeded_is_413(small_quota_cloud):
    glance = Glance(small_quota_cloud)
    first = glance.create(name="fits", disk_format="raw", container_format="bare")
    assert glance.upload(first["id"], b"a" * 600000).status_code == 204
    second = glance.create(name="too-big", disk_format="raw", container_format="bare")
    r = glance.upload(second["id"], b"b" * 600000)
    assert r.status_code == 413, r.text
    for word in ("image_size_total", "limit 1000000", "in use 600000"):
        assert word in r.text, r.text
    assert glance.req("GET", f"/v2/images/{second['id']}").json()["status"] == "queued"
    assert _staging_empty(small_quota_cloud)
    # without a declared length the stream is cut off when it crosses the limit
    r = glance.upload(second["id"], (b"c" * 100000 for _ in range(6)))
    assert r.status_code == 413 and "image_size_total" in r.text
    assert _staging_empty(small_quota_cloud)
    assert glance.upload(second["id"], b"d" * 400000).status_code == 204
