"""kill -9 of the stackbox process in the middle of an upload: after a restart
the object does not exist, the listing and counters do not show it, and the
half-written temp files are never visible."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import requests

from tests.conftest import Cloud


@pytest.fixture
def own_cloud(tmp_path):
    c = Cloud(tmp_path, "sqlite", "")
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_kill_mid_upload_leaves_no_object(own_cloud):
    cloud = own_cloud
    token = cloud.token()
    r = requests.get(f"{cloud.auth_url}/auth/catalog", headers={"X-Auth-Token": token})
    url = next(e["url"] for s in r.json()["catalog"] if s["type"] == "object-store"
               for e in s["endpoints"] if e["interface"] == "public")
    assert requests.put(f"{url}/c", headers={"X-Auth-Token": token}).status_code == 201
    path = url.split(":", 2)[2].split("/", 1)[1]
    port = cloud.ports["object_store"]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall((f"PUT /{path}/c/partial HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n"
                   f"Content-Length: {50 << 20}\r\n\r\n").encode())
        for _ in range(20):                     # 20 MiB of the promised 50
            s.sendall(b"x" * (1 << 20))
        time.sleep(0.5)
        pid = int((cloud.data_dir / "stackbox.pid").read_text())
        os.kill(pid, signal.SIGKILL)
    tmp_files = [p for p in (cloud.data_dir / "objects").rglob("tmp/*")]
    assert tmp_files, "the upload should have been in progress on disk"
    (cloud.data_dir / "stackbox.pid").unlink()
    cloud.start()
    token = cloud.token()
    auth = {"X-Auth-Token": token}
    assert requests.head(f"{url}/c/partial", headers=auth).status_code == 404
    assert requests.get(f"{url}/c", headers=auth).status_code == 204       # empty listing
    assert requests.head(f"{url}/c", headers=auth).headers["x-container-bytes-used"] == "0"
    assert list((cloud.data_dir / "objects").rglob("*.data")) == []
