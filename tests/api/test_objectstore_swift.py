"""The Swift v1 API of a started stackbox, driven by python-swiftclient (the
`swift` CLI and the library) and, for what clients hide, raw HTTP."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from swiftclient import client as swc
from swiftclient.exceptions import ClientException
from swiftclient.utils import generate_temp_url

from tests.conftest import VENV_BIN, run

SWIFT = str(VENV_BIN / "swift")


def _conn(cloud, user, password, project):
    return swc.Connection(authurl=cloud.auth_url, user=user, key=password, auth_version="3",
                          os_options={"project_name": project, "user_domain_name": "Default",
                                      "project_domain_name": "Default"},
                          retries=0)


@pytest.fixture
def sw(cloud):
    c = _conn(cloud, "admin", cloud.admin_password, "admin")
    yield c
    c.close()


@pytest.fixture
def sw_demo(cloud):
    c = _conn(cloud, "demo", cloud.demo_password, "demo")
    yield c
    c.close()


def _cli(cloud, *args, check=True, cwd=None, user="admin"):
    password = cloud.admin_password if user == "admin" else cloud.demo_password
    env = cloud.user_env(user, password, user)
    proc = run([SWIFT, *args], env=env, check=check, timeout=120) if cwd is None else None
    if cwd is not None:
        import subprocess
        proc = subprocess.run([SWIFT, *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
    return proc


def _disk_files(cloud, name_hash=None):
    root = cloud.data_dir / "objects"
    return [p for p in root.rglob("*.data") if "quarantined" not in p.parts]


def test_stat_and_upload_download_a_directory(cloud, tmp_path, unique):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "c.json").write_text('{"x": 1}')
    c = unique("dir")
    _cli(cloud, "upload", c, "tree", cwd=tmp_path)
    listed = _cli(cloud, "list", c).stdout.split()
    assert listed == ["tree/a.txt", "tree/sub/b.bin", "tree/sub/c.json"]
    assert _cli(cloud, "list", c, "--prefix", "tree/", "--delimiter", "/").stdout.split() == [
        "tree/a.txt", "tree/sub/"]
    out = tmp_path / "out"
    out.mkdir()
    _cli(cloud, "download", c, "-D", str(out))
    for rel in ("a.txt", "sub/b.bin", "sub/c.json"):
        assert (out / "tree" / rel).read_bytes() == (src / rel).read_bytes()
    stat = _cli(cloud, "stat", c).stdout
    assert "Objects: 3" in stat and f"Bytes: {300_000 + 6 + 8}" in stat
    acct = _cli(cloud, "stat").stdout
    assert "Account: AUTH_" in acct
    _cli(cloud, "delete", c)
    assert c not in _cli(cloud, "list").stdout.split()


def test_metadata_listing_formats_and_copy(sw, cloud, unique):
    c = unique("meta")
    sw.put_container(c, headers={"X-Container-Meta-Owner": "team-a"})
    assert sw.head_container(c)["x-container-meta-owner"] == "team-a"
    for name in ("a/1", "a/2", "b", "c/d/e"):
        sw.put_object(c, name, b"data-" + name.encode(), content_type="text/plain",
                      headers={"X-Object-Meta-Color": "blue"})
    h = sw.head_object(c, "a/1")
    assert h["x-object-meta-color"] == "blue" and h["content-type"] == "text/plain"
    assert h["etag"] == hashlib.md5(b"data-a/1").hexdigest()
    sw.post_object(c, "a/1", headers={"X-Object-Meta-Size": "L"})
    h = sw.head_object(c, "a/1")
    assert h["x-object-meta-size"] == "L" and "x-object-meta-color" not in h
    _, listing = sw.get_container(c, delimiter="/")
    assert [e.get("name") or e.get("subdir") for e in listing] == ["a/", "b", "c/"]
    _, listing = sw.get_container(c, prefix="a/", marker="a/1")
    assert [e["name"] for e in listing] == ["a/2"]
    _, listing = sw.get_container(c, limit=2)
    assert [e["name"] for e in listing] == ["a/1", "a/2"]
    url, token = sw.get_auth()
    r = requests.get(f"{url}/{c}?format=xml&prefix=c/", headers={"X-Auth-Token": token})
    assert r.status_code == 200 and "<name>c/d/e</name>" in r.text
    r = requests.get(f"{url}/{c}?reverse=true", headers={"X-Auth-Token": token})
    assert r.text.split() == ["c/d/e", "b", "a/2", "a/1"]
    sw.copy_object(c, "b", destination=f"/{c}/b-copy")
    assert sw.get_object(c, "b-copy")[1] == b"data-b"
    sw.put_object(c, "b-copy2", b"", headers={"X-Copy-From": f"{c}/b"})
    assert sw.get_object(c, "b-copy2")[1] == b"data-b"
    assert sw.head_container(c)["x-container-object-count"] == "6"


def test_ranges_conditionals_and_expiry(sw, unique):
    c = unique("rng")
    sw.put_container(c)
    body = bytes(range(256)) * 4
    etag = sw.put_object(c, "o", body)
    assert sw.get_object(c, "o", headers={"Range": "bytes=10-19"})[1] == body[10:20]
    assert sw.get_object(c, "o", headers={"Range": "bytes=-5"})[1] == body[-5:]
    h, data = sw.get_object(c, "o", headers={"Range": "bytes=0-1,100-101"})
    assert h["content-type"].startswith("multipart/byteranges")
    assert body[0:2] in data and body[100:102] in data
    with pytest.raises(ClientException) as e:
        sw.get_object(c, "o", headers={"Range": "bytes=5000-"})
    assert e.value.http_status == 416
    with pytest.raises(ClientException) as e:
        sw.get_object(c, "o", headers={"If-Match": '"nope"'})
    assert e.value.http_status == 412
    url, token = sw.get_auth()
    r = requests.get(f"{url}/{c}/o", headers={"X-Auth-Token": token, "If-None-Match": etag})
    assert r.status_code == 304
    with pytest.raises(ClientException) as e:
        sw.put_object(c, "o", b"again", headers={"If-None-Match": "*"})
    assert e.value.http_status == 412
    sw.put_object(c, "short-lived", b"x", headers={"X-Delete-After": "1"})
    time.sleep(1.5)
    with pytest.raises(ClientException) as e:
        sw.get_object(c, "short-lived")
    assert e.value.http_status == 404
    assert [o["name"] for o in sw.get_container(c)[1]] == ["o"]


def test_acl_sharing_between_projects(sw, sw_demo, cloud, unique):
    c = unique("acl")
    sw.put_container(c)
    sw.put_object(c, "doc", b"shared")
    admin_url, _ = sw.get_auth()
    demo_url, demo_token = sw_demo.get_auth()
    assert demo_url != admin_url
    demo_project = demo_url.rsplit("AUTH_", 1)[1]
    target = f"{admin_url}/{c}/doc"
    r = requests.get(target, headers={"X-Auth-Token": demo_token})
    assert r.status_code == 403
    sw.post_container(c, headers={"X-Container-Read": f"{demo_project}:*"})
    r = requests.get(target, headers={"X-Auth-Token": demo_token})
    assert r.status_code == 200 and r.content == b"shared"
    r = requests.put(f"{admin_url}/{c}/from-demo", data=b"hi",
                     headers={"X-Auth-Token": demo_token})
    assert r.status_code == 403
    sw.post_container(c, headers={"X-Container-Write": f"{demo_project}:*"})
    r = requests.put(f"{admin_url}/{c}/from-demo", data=b"hi",
                     headers={"X-Auth-Token": demo_token})
    assert r.status_code == 201
    assert sw.get_object(c, "from-demo")[1] == b"hi"
    # demo may not change the container itself or read the admin account
    assert requests.post(f"{admin_url}/{c}", headers={
        "X-Auth-Token": demo_token, "X-Container-Read": ".r:*"}).status_code == 403
    assert requests.get(admin_url, headers={"X-Auth-Token": demo_token}).status_code == 403
    # anonymous: nothing, then objects with .r:*, listings only with .rlistings
    assert requests.get(target).status_code == 401
    sw.post_container(c, headers={"X-Container-Read": ".r:*"})
    assert requests.get(target).content == b"shared"
    assert requests.get(f"{admin_url}/{c}").status_code == 401
    sw.post_container(c, headers={"X-Container-Read": ".r:*,.rlistings"})
    assert requests.get(f"{admin_url}/{c}").text.split() == ["doc", "from-demo"]
    with pytest.raises(ClientException) as e:
        sw.post_container(c, headers={"X-Container-Read": ".bogus"})
    assert e.value.http_status == 400


ODD_NAMES = ["what?x=1", "sharp#frag", "back\\slash", "per%25cent", "dir/sp ace \u00e9"]


def test_names_with_url_characters_are_names(sw, unique):
    """?, #, % and backslash are part of an object name (the client quotes
    them), not a query, a fragment or an escape: stored, listed, read and
    signed (tempurl) as the client wrote them."""
    c = unique("chars")
    sw.put_container(c)
    for name in ODD_NAMES:
        sw.put_object(c, name, name.encode())
    assert sorted(o["name"] for o in sw.get_container(c)[1]) == sorted(ODD_NAMES)
    for name in ODD_NAMES:
        assert sw.get_object(c, name)[1] == name.encode()
    sw.post_account(headers={"X-Account-Meta-Temp-URL-Key": "odd-key"})
    url, _ = sw.get_auth()
    path = f"/v1/{url.split('/v1/')[1]}/{c}/what?x=1"
    signed = generate_temp_url(path, 60, "odd-key", "GET")
    r = requests.get(url.split("/v1/")[0] + quote(path) + signed[len(path):])
    assert r.status_code == 200 and r.content == b"what?x=1", r.text
    for name in ODD_NAMES:
        sw.delete_object(c, name)


def test_tempurl(sw, unique):
    c = unique("tmp")
    sw.put_container(c)
    sw.put_object(c, "file.txt", b"temporary")
    sw.post_account(headers={"X-Account-Meta-Temp-URL-Key": "sekrit"})
    url, _ = sw.get_auth()
    base = url.split("/v1/")[0]
    path = f"/v1/{url.split('/v1/')[1]}/{c}/file.txt"
    for digest in ("sha1", "sha256", "sha512"):
        signed = generate_temp_url(path, 60, "sekrit", "GET", digest=digest)
        r = requests.get(base + signed)
        assert r.status_code == 200 and r.content == b"temporary", r.text
        assert 'filename="file.txt"' in r.headers["content-disposition"]
    assert requests.get(base + generate_temp_url(path, 60, "wrong", "GET")).status_code == 401
    expired = generate_temp_url(path, int(time.time()) - 10, "sekrit", "GET", absolute=True)
    assert requests.get(base + expired).status_code == 401
    put = generate_temp_url(f"/v1/{url.split('/v1/')[1]}/{c}/up", 60, "sekrit", "PUT")
    assert requests.put(base + put, data=b"via-tempurl").status_code == 201
    assert sw.get_object(c, "up")[1] == b"via-tempurl"
    # a GET signature does not allow a PUT
    get_only = generate_temp_url(f"/v1/{url.split('/v1/')[1]}/{c}/up", 60, "sekrit", "GET")
    assert requests.put(base + get_only, data=b"x").status_code == 401


def test_slo_and_dlo_uploads_with_the_cli(cloud, tmp_path, unique):
    data = os.urandom(2_500_000)
    (tmp_path / "big.bin").write_bytes(data)
    for mode in ("--use-slo", "--use-dlo"):
        c = unique("lo")
        _cli(cloud, "upload", mode, "-S", "1000000", c, "big.bin", cwd=tmp_path)
        stat = _cli(cloud, "stat", c, "big.bin").stdout
        assert "Content Length: 2500000" in stat
        assert ("Static-Large-Object: True" in stat) == (mode == "--use-slo")
        out = tmp_path / f"out{mode}"
        _cli(cloud, "download", c, "big.bin", "-o", str(out), cwd=tmp_path)
        assert out.read_bytes() == data
        assert len(_cli(cloud, "list", f"{c}_segments").stdout.split()) == 3
        _cli(cloud, "delete", c, "big.bin")
        assert _cli(cloud, "list", f"{c}_segments").stdout.split() == []


def test_bad_input_gets_the_right_status_and_stores_nothing(sw, cloud, unique):
    c = unique("bad")
    sw.put_container(c)
    url, token = sw.get_auth()
    auth = {"X-Auth-Token": token}
    before = len(_disk_files(cloud))
    assert requests.put(f"{url}/{c}/a%00b", data=b"x", headers=auth).status_code == 412
    assert requests.put(f"{url}/{c}/{'n' * 1025}", data=b"x", headers=auth).status_code == 400
    # a '/' in a container name makes it an object path of a missing container
    assert requests.put(f"{url}/{unique('no')}%2Fsub", headers=auth).status_code == 404
    r = requests.put(f"{url}/{c}/wrong-etag", data=b"abc",
                     headers={**auth, "ETag": "0" * 32})
    assert r.status_code == 422
    r = requests.put(f"{url}/{c}/big-meta", data=b"abc",
                     headers={**auth, "X-Object-Meta-Big": "v" * 257})
    assert r.status_code == 400 and "X-Object-Meta-Big".lower() in r.text.lower()
    many = {f"X-Object-Meta-K{i}": "v" * 250 for i in range(20)}
    assert requests.put(f"{url}/{c}/many", data=b"a", headers={**auth, **many}).status_code == 400
    r = requests.put(f"{url}/{c}/no-length", data=iter([b"chunk1", b"chunk2"]), headers=auth)
    assert r.status_code == 201                       # chunked is fine
    r = requests.put(f"{url}/{c}/deleted", data=b"x",
                     headers={**auth, "X-Delete-At": str(int(time.time()) - 5)})
    assert r.status_code == 400
    assert requests.delete(f"{url}/{unique('none')}", headers=auth).status_code == 404
    sw.put_object(c, "keep", b"x")
    assert requests.delete(f"{url}/{c}", headers=auth).status_code == 409
    assert [o["name"] for o in sw.get_container(c)[1]] == ["keep", "no-length"]
    assert len(_disk_files(cloud)) == before + 2 * 3    # 2 objects x 3 replicas
    assert requests.get(f"{url}/{c}?limit=10001", headers=auth).status_code == 412


def test_corrupt_replica_is_skipped_and_quarantined(sw, cloud, unique):
    c = unique("rot")
    sw.put_container(c)
    body = os.urandom(100_000)
    sw.put_object(c, "o", body)
    url, _ = sw.get_auth()
    account = url.rsplit("/", 1)[1]
    where = run([str(VENV_BIN / "stackbox"), "object", "locate", f"/{account}/{c}/o",
                 "--json", "--data-dir", str(cloud.data_dir)]).stdout
    import json
    h = json.loads(where)["hash"]
    files = sorted(p for p in _disk_files(cloud) if p.parent.name == h)
    assert len(files) == 3
    for f in files[:2]:
        with open(f, "r+b") as fh:
            fh.write(b"\0" * 16)
    for _ in range(4):
        assert sw.get_object(c, "o")[1] == body
    quarantined = list((cloud.data_dir / "objects").rglob(f"quarantined/objects/{h}/*"))
    live = [p for p in _disk_files(cloud) if p.parent.name == h]
    assert len(quarantined) + len(live) == 3 and len(live) >= 1


def test_info_and_healthcheck(cloud):
    base = f"http://127.0.0.1:{cloud.ports['object_store']}"
    info = requests.get(f"{base}/info").json()
    assert {"swift", "slo", "tempurl", "bulk_delete"} <= set(info)
    assert info["swift"]["max_object_name_length"] == 1024
    assert requests.get(f"{base}/healthcheck").text == "OK"


def test_versioned_writes(sw, unique):
    c, arch = unique("ver"), unique("arch")
    sw.put_container(arch)
    sw.put_container(c, headers={"X-Versions-Location": arch})
    assert sw.head_container(c)["x-versions-location"] == arch
    for body in (b"first", b"second"):
        sw.put_object(c, "doc", body)
    assert len(sw.get_container(arch)[1]) == 1
    sw.delete_object(c, "doc")
    assert sw.get_object(c, "doc")[1] == b"first"
    sw.delete_object(c, "doc")
    with pytest.raises(ClientException) as e:
        sw.get_object(c, "doc")
    assert e.value.http_status == 404


def test_unsatisfiable_range_names_the_size(sw, unique):
    c = unique("r416")
    sw.put_container(c)
    sw.put_object(c, "o", b"12345")
    url, token = sw.get_auth()
    r = requests.get(f"{url}/{c}/o", headers={"X-Auth-Token": token, "Range": "bytes=10-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */5"
    r = requests.get(f"{url}/{c}/o", headers={"X-Auth-Token": token, "X-Backend-Secret": "1"})
    assert r.status_code == 200 and not any(h.lower().startswith("x-backend")
                                            for h in r.headers)


def test_big_object_bodies_come_from_the_file(sw, cloud, unique):
    """Objects over the re-hashed size (4 MiB) and ranges of any object go out
    with sendfile (common/http/zerocopy.py): the bytes, full and ranged, are
    the object's; a client that leaves in the middle of a body costs the
    server nothing it keeps (the next requests are served, no error logged,
    no file left open)."""
    c = unique("big")
    sw.put_container(c)
    body = os.urandom(9 * 1024 * 1024 + 7)
    sw.put_object(c, "o", body)
    h, got = sw.get_object(c, "o")
    assert got == body and int(h["content-length"]) == len(body)
    h, got = sw.get_object(c, "o", headers={"Range": "bytes=1000-5000000"})
    assert got == body[1000:5000001] and h["content-range"] == f"bytes 1000-5000000/{len(body)}"
    h, got = sw.get_object(c, "o", headers={"Range": f"bytes=-{300 * 1024}"})
    assert got == body[-300 * 1024:]
    small = os.urandom(3 * 1024 * 1024)
    sw.put_object(c, "small", small)
    assert sw.get_object(c, "small", headers={"Range": "bytes=17-2000016"})[1] == small[17:2000017]

    objects = f"{cloud.data_dir / 'objects'}/"

    def open_fds():     # object files held open by any process (only the cloud's can)
        held = 0
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                held += sum(1 for fd in os.listdir(f"/proc/{p}/fd")
                            if os.readlink(f"/proc/{p}/fd/{fd}").startswith(objects))
            except OSError:
                continue
        return held

    url, token = sw.get_auth()
    for _ in range(3):      # read a little of each body, then hang up
        r = requests.get(f"{url}/{c}/o", headers={"X-Auth-Token": token}, stream=True)
        assert r.status_code == 200 and len(r.raw.read(64 * 1024)) == 64 * 1024
        r.raw._fp.fp.raw._sock.close()
        r.close()
    assert sw.get_object(c, "o")[1] == body
    deadline = time.time() + 10
    while open_fds() and time.time() < deadline:
        time.sleep(0.2)
    assert open_fds() == 0, "an object file stayed open after its client left"
    for log in (cloud.data_dir / "log").glob("*.log"):
        bad = [line for line in log.read_text().splitlines()
               if " ERROR " in line or " WARNING stackbox.http" in line]
        assert not bad, (log.name, bad)
