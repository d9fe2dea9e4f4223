"""Storage faults on a started stackbox, seen through the real clients
(python-swiftclient and boto3):

- a device directory removed (a dead disk): every object still reads, new
  writes land on a handoff, and once an empty replacement directory is back
  the replicator (a 1 s interval here) restores every replica;
- full devices (small tmpfs mounts over the device directories): Swift's 507,
  S3's 500 InternalError with a message saying why, and no partial object on
  any device, in the listing or in the counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from swiftclient import client as swc
from swiftclient.exceptions import ClientException

from tests.conftest import Cloud

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs over a device needs root")
    cloud = Cloud(tmp_path_factory.mktemp("objfaults"), "sqlite", "",
                  extra={"object_store": ["replicator_interval = 1"]})
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def sw(store):
    conn = swc.Connection(authurl=store.auth_url, user="demo", key=store.demo_password,
                          auth_version="3", retries=0,
                          os_options={"project_name": "demo", "user_domain_name": "Default",
                                      "project_domain_name": "Default"})
    yield conn
    conn.close()


def devices(store) -> dict[str, Path]:
    root = store.data_dir / "objects"
    return {p.name: p for p in sorted(root.iterdir()) if p.name.startswith("d")}


def data_files(path: Path, name_hash: str | None = None) -> list[Path]:
    return [p for p in path.rglob("*.data") if "quarantined" not in p.parts
            and (name_hash is None or p.parent.name == name_hash)]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_removed_device_still_serves_reads_and_the_replicator_restores_it(store, sw):
    c = f"dead-{uuid.uuid4().hex[:8]}"
    sw.put_container(c)
    bodies = {f"o{i}": os.urandom(10_000 + i) for i in range(12)}
    for name, body in bodies.items():
        sw.put_object(c, name, body)
    devs = devices(store)
    assert len(devs) == 3
    assert sum(len(data_files(p)) for p in devs.values()) == 3 * len(bodies)
    victim = devs["d1"]
    shutil.rmtree(victim)                         # the disk is gone
    try:
        for name, body in bodies.items():
            assert sw.get_object(c, name)[1] == body
        # a write while the disk is away still gets its replicas (two
        # primaries + no handoff with 3 devices: the quorum of 2 holds)
        sw.put_object(c, "while-away", b"written while d1 was missing")
        assert sw.get_object(c, "while-away")[1] == b"written while d1 was missing"
    finally:
        victim.mkdir()                            # an empty replacement disk
    total = 3 * len(bodies) + 3
    wait_for(lambda: sum(len(data_files(p)) for p in devices(store).values()) == total,
             60, f"the replicator to restore {total} replica files")
    assert len(data_files(victim)) >= len(bodies)
    # what it copied back is the same bytes, not just a file of the name
    for path in data_files(victim):
        twins = [p for d in devices(store).values() if d != victim
                 for p in data_files(d, path.parent.name)]
        assert twins and all(t.read_bytes() == path.read_bytes() for t in twins)
    for name, body in bodies.items():
        assert sw.get_object(c, name)[1] == body


@pytest.fixture
def full_devices(store):
    """A 1 MiB tmpfs over every device directory; unmounted afterwards."""
    mounted = []
    try:
        for path in devices(store).values():
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755",
                            f"sbx-full-{path.name}", str(path)], check=True, timeout=30)
            mounted.append(path)
        yield mounted
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)], check=False, timeout=30)


def s3_client(store):
    cred = store.openstack("ec2", "credentials", "create", cloud="stackbox-demo")
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{store.ports['object_store']}",
                        aws_access_key_id=cred["access"], aws_secret_access_key=cred["secret"],
                        region_name="RegionOne", config=Config(retries={"max_attempts": 1}))


def test_full_disk_is_507_for_swift_and_internal_error_for_s3_and_stores_nothing(
        store, sw, full_devices):
    c = f"full-{uuid.uuid4().hex[:8]}"
    sw.put_container(c)
    big = os.urandom(4 * MiB)
    with pytest.raises(ClientException) as e:
        sw.put_object(c, "big", big)
    assert e.value.http_status == 507, e.value
    assert "No space left on device" in e.value.http_response_content.decode(), e.value
    s3 = s3_client(store)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=c, Key="big-s3", Body=big)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert err.value.response["Error"]["Code"] == "InternalError"
    message = err.value.response["Error"]["Message"]
    assert "could not store" in message and "No space left on device" in message, message
    # nothing half-stored: no file of either object on any device and no
    # temp file, no listing entry, no bytes counted, and the space is free
    # again: a small object fits. (Other files may be there: the replicator,
    # every second in this module, rightly copies the first test's objects
    # onto what look like freshly replaced disks.)
    url, _ = sw.get_auth()
    account = url.rsplit("/", 1)[1]
    hashes = {json.loads(store.stackbox("object", "locate", f"/{account}/{c}/{name}",
                                        "--json").stdout)["hash"]
              for name in ("big", "big-s3")}
    leftovers = [p for d in full_devices for p in d.rglob("*") if p.is_file()
                 and (p.parent.name in hashes or "tmp" in p.relative_to(d).parts)]
    assert leftovers == []
    headers, listing = sw.get_container(c)
    assert listing == [] and int(headers["x-container-bytes-used"]) == 0
    for name in ("big", "big-s3"):
        with pytest.raises(ClientException) as e:
            sw.head_object(c, name)
        assert e.value.http_status == 404
    small = os.urandom(64 * 1024)
    etag = sw.put_object(c, "small", small)
    assert etag == hashlib.md5(small).hexdigest()
    assert s3.get_object(Bucket=c, Key="small")["Body"].read() == small
    sw.delete_object(c, "small")
