"""Object-store workers: several processes serve the object-store port
(`[object_store] workers`), and what one changes the others see at once.

A cloud with 3 workers (the stackbox process and two more). Every check uses
fresh connections, so the kernel hands them to different processes; the
access logs prove that more than one process served the test's requests.
Driven with python-swiftclient, requests (anonymous reads) and boto3.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import boto3
import pytest
import requests
from botocore.config import Config
from swiftclient import client as swc
from swiftclient.exceptions import ClientException

from tests.conftest import Cloud

ROUNDS = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cloud = Cloud(tmp_path_factory.mktemp("objworkers"), "sqlite", "",
                  extra={"object_store": ["workers = 3"]})
    cloud.start()
    try:
        wait_for_workers(cloud)
        yield cloud
    finally:
        cloud.stop()


def accepting(log_text: str) -> bool:
    """The log's last worker life has reached its accept loop: its last
    "accepting connections" line comes after its last start and its last
    stop. (Counting lines was wrong after a SIGKILL: the killed worker
    never logged "stopped", so the count said ready before the new one was.)"""
    ready = log_text.rfind("accepting connections on shared port")
    return ready > log_text.rfind("object-store worker ")   # its "serving port" or "stopped"


def wait_for_workers(store, timeout=30) -> None:
    """`up` returns when the stackbox process answers; its workers start
    beside it a moment later."""
    deadline = time.monotonic() + timeout
    logs = [store.data_dir / "log" / f"object-worker-{i}.log" for i in (1, 2)]
    while time.monotonic() < deadline:
        pids = worker_pids(store)
        if len(pids) == 2 and all(p.exists() and accepting(p.read_text()) for p in logs):
            return
        time.sleep(0.2)
    raise AssertionError("the object-store workers did not start")


def main_pid(store) -> int:
    return int((store.data_dir / "stackbox.pid").read_text())


def worker_pids(store) -> set[int]:
    parent, out = main_pid(store), set()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if ppid == parent and b"stackbox.objectstore.workers" in cmd:
            out.add(int(p))
    return out


def fresh(store) -> swc.Connection:
    """A new client (new token fetch, new TCP connection) per call."""
    return swc.Connection(authurl=store.auth_url, user="demo", key=store.demo_password,
                          auth_version="3", retries=0,
                          os_options={"project_name": "demo", "user_domain_name": "Default",
                                      "project_domain_name": "Default"})


@pytest.fixture(scope="module")
def demo(store):
    conn = fresh(store)
    url, token = conn.get_auth()
    yield {"url": url, "token": token}
    conn.close()


def get(url, **headers) -> requests.Response:
    with requests.Session() as s:           # one new connection per request
        return s.get(url, headers=headers, timeout=30)


def test_the_workers_run_and_share_the_port(store, demo):
    assert len(worker_pids(store)) == 2
    c = f"spread-{uuid.uuid4().hex[:8]}"
    sw = fresh(store)
    sw.put_container(c)
    for i in range(40):
        r = get(f"{demo['url']}/{c}?n={i}", **{"X-Auth-Token": demo["token"]})
        assert r.status_code == 204
    logs = store.data_dir / "log"
    served = [p.name for p in [logs / "stackbox.log", *logs.glob("object-worker-*.log")]
              if c in p.read_text()]
    assert len(served) >= 2, f"only {served} served the requests for {c}"


def test_container_changes_are_seen_by_every_process_at_once(store, demo):
    c = f"meta-{uuid.uuid4().hex[:8]}"
    sw = fresh(store)
    sw.put_container(c)
    sw.put_object(c, "o", b"hello")
    public = f"{demo['url']}/{c}/o"
    for i in range(ROUNDS):
        fresh(store).post_container(c, {"X-Container-Meta-Round": str(i)})
        assert fresh(store).head_container(c)["x-container-meta-round"] == str(i)
    for _ in range(3):
        # anonymous reads allowed, then refused again: each process must
        # drop the container ACL it cached the moment another one changes it
        fresh(store).post_container(c, {"X-Container-Read": ".r:*"})
        assert [get(public).status_code for _ in range(ROUNDS)] == [200] * ROUNDS
        fresh(store).post_container(c, {"X-Container-Read": ""})
        assert [get(public).status_code for _ in range(ROUNDS)] == [401] * ROUNDS
    # a quota set through one process holds in all of them
    fresh(store).post_container(c, {"X-Container-Meta-Quota-Count": "1"})
    for i in range(ROUNDS // 2):
        with pytest.raises(ClientException) as e:
            fresh(store).put_object(c, f"more{i}", b"x")
        assert e.value.http_status == 413
    assert [o["name"] for o in fresh(store).get_container(c)[1]] == ["o"]


def test_a_revoked_token_is_refused_by_every_process(store, demo):
    sw = fresh(store)
    url, token = sw.get_auth()
    assert all(get(url, **{"X-Auth-Token": token}).status_code in (200, 204)
               for _ in range(ROUNDS))
    r = requests.delete(f"{store.auth_url}/auth/tokens", timeout=30,
                        headers={"X-Auth-Token": token, "X-Subject-Token": token})
    assert r.status_code == 204
    assert [get(url, **{"X-Auth-Token": token}).status_code
            for _ in range(ROUNDS)] == [401] * ROUNDS


def test_a_deleted_ec2_credential_is_refused_by_every_process(store):
    env = store.user_env("demo", store.demo_password, "demo")
    cred = store.openstack("ec2", "credentials", "create", cloud=None, env=env)
    s3 = lambda: boto3.client(  # noqa: E731 - a new client and connection each time
        "s3", endpoint_url=f"http://127.0.0.1:{store.ports['object_store']}",
        aws_access_key_id=cred["access"], aws_secret_access_key=cred["secret"],
        region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    for _ in range(ROUNDS):
        assert "Buckets" in s3().list_buckets()
    store.openstack("ec2", "credentials", "delete", cred["access"], cloud=None, env=env,
                    as_json=False)
    for _ in range(ROUNDS):
        with pytest.raises(Exception) as e:
            s3().list_buckets()
        assert "InvalidAccessKeyId" in str(e.value)


def test_a_killed_worker_is_started_again_and_down_stops_them(store, demo):
    before = worker_pids(store)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = worker_pids(store)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    now = worker_pids(store)
    assert len(now) == 2 and victim not in now
    # requests keep working throughout
    assert all(get(demo["url"], **{"X-Auth-Token": demo["token"]}).status_code in (200, 204)
               for _ in range(ROUNDS))
    store.stop()
    try:
        for pid in now | {victim}:
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived stackbox"
    finally:
        store.start()
        wait_for_workers(store)


def test_a_burst_of_keep_alive_connections_is_dealt_out_evenly(store, demo):
    """A client that opens its connections at once (a benchmark's 16) gets
    them spread over the processes (stackbox.common.http.serving.SharedAccept),
    not all taken by the first event loop to wake, which then did all the
    work while the others idled."""
    import http.client
    from urllib.parse import urlsplit
    c = f"burst-{uuid.uuid4().hex[:8]}"
    fresh(store).put_container(c)
    url = urlsplit(demo["url"])
    conns = [http.client.HTTPConnection(url.hostname, url.port, timeout=30) for _ in range(12)]
    for conn in conns:
        conn.connect()          # all connected before any request is sent
    try:
        for i, conn in enumerate(conns):
            conn.request("GET", f"{url.path}/{c}?conn={i}", headers={"X-Auth-Token": demo["token"]})
            assert conn.getresponse().read() == b""
    finally:
        for conn in conns:
            conn.close()
    logs = store.data_dir / "log"
    served = {p.name: sum(f"{c}?conn={i} " in p.read_text() or f"{c}?conn={i}\"" in p.read_text()
                          for i in range(12))
              for p in [logs / "stackbox.log", *logs.glob("object-worker-*.log")]}
    assert sum(served.values()) == 12, served
    assert max(served.values()) - min(served.values()) <= 2, served
