"""The proxy <-> object-server boundary over HTTP: a ring whose third device
lives behind a real `stackbox object-server` process on loopback.

Through the service (every path of the backend API), then through a started
stackbox with swiftclient: replicas land on the other "host", reads survive it
going away, the replicator brings it up to date when it is back, a corrupt
remote replica is quarantined and skipped, an aborted upload leaves nothing
there, and a request without the cluster's token is refused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from swiftclient import client as swc

from stackbox.common.config import ObjectStoreSettings
from stackbox.common.db import Database, migrate
from stackbox.objectstore.bootstrap import build_service
from stackbox.objectstore.errors import Quarantined
from stackbox.objectstore.objectserver import Frames
from stackbox.objectstore.replicator import Replicator
from stackbox.objectstore.ring import RingBuilder
from tests.conftest import STACKBOX, Cloud, free_port

A = "AUTH_remote"


class ObjectServer:
    """`stackbox object-server` in its own process group."""

    def __init__(self, data_dir: Path, devices: Path):
        self.data_dir, self.devices = data_dir, devices
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [STACKBOX, "object-server", "--data-dir", str(self.data_dir), "--devices",
             str(self.devices), "--bind", self.address], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("HEAD", "/x/0/a/c/o")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"object server exited: {self.proc.stderr.read()}")
                time.sleep(0.2)
        raise AssertionError("object server did not answer in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def make_ring(rings: Path, remote: str) -> None:
    builder = RingBuilder(4, 3)
    builder.add_device(1, zone=1, weight=100.0, path="d1")
    builder.add_device(2, zone=2, weight=100.0, path="d2")
    builder.add_device(3, zone=3, weight=100.0, path="d3", host=remote)
    builder.rebalance(seed=0)
    rings.mkdir(parents=True, exist_ok=True)
    builder.save(str(rings / "object.builder.json"))
    builder.save(str(rings / "object.ring.json"))


def files(root: Path, ext: str = ".data") -> list[Path]:
    return [p for p in root.rglob(f"*{ext}") if "quarantined" not in p.parts]


@pytest.fixture
def world(tmp_path):
    server = ObjectServer(tmp_path, tmp_path / "remote")
    (tmp_path / "remote" / "d3").mkdir(parents=True)
    for d in ("d1", "d2"):
        (tmp_path / "objects" / d).mkdir(parents=True)
    make_ring(tmp_path / "rings", server.address)
    server.start()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    svc = build_service(db, SimpleNamespace(data_dir=tmp_path, object_store=ObjectStoreSettings(
        replicas=3, devices=3, part_power=4)))
    try:
        yield SimpleNamespace(svc=svc, server=server, remote=tmp_path / "remote",
                              local=tmp_path / "objects")
    finally:
        svc.close()
        db.dispose()
        server.stop()


def test_replicas_reads_deletes_and_faults_across_the_http_boundary(world):
    svc = world.svc
    svc.create_container(A, "c")
    big = os.urandom(3 * 1024 * 1024 + 17)               # several frames and chunks
    svc.put_object(A, "c", "big", [big[i:i + 300_000] for i in range(0, len(big), 300_000)])
    svc.put_object(A, "c", "small", [b"tiny"])
    assert len(files(world.remote)) == 2 and len(files(world.local)) == 4
    remote_big = next(p for p in files(world.remote) if p.stat().st_size > len(big))
    # the remote copy is the same file format, byte for byte, as a local one
    twins = [p for p in files(world.local) if p.parent.name == remote_big.parent.name]
    assert twins and all(t.read_bytes() == remote_big.read_bytes() for t in twins)

    # only the remote replica left: GET and ranges come over HTTP
    for p in files(world.local):
        p.unlink()
    with svc.open_object(A, "c", "big") as o:
        assert hashlib.md5(o.read()).hexdigest() == hashlib.md5(big).hexdigest()
        assert b"".join(o.iter_range(1_000_000, 1_000_100)) == big[1_000_000:1_000_100]
    assert svc.read_object(A, "c", "small")[1] == b"tiny"

    # (each host's replicator walks only its own devices: write again so the
    # local replicas exist), then the other host goes away
    svc.put_object(A, "c", "big", [big])
    svc.put_object(A, "c", "small", [b"tiny"])
    world.server.stop()
    assert svc.read_object(A, "c", "small")[1] == b"tiny"        # local replicas serve
    svc.put_object(A, "c", "while-away", [b"quorum of two"])    # 2 of 3 is a quorum
    svc.delete_object(A, "c", "small")                           # tombstones: 2 of 3
    world.server.start()
    stats = Replicator(svc.backend, objects_per_second=10_000).run_pass()
    assert stats.errors == 0 and stats.copied >= 1 and stats.tombstones >= 1
    assert len(files(world.remote, ".ts")) == 1
    names = {p.parent.name for p in files(world.remote)}
    assert len(names) == 2                                        # big and while-away
    assert Replicator(svc.backend, objects_per_second=10_000).run_pass().copied == 0

    # a corrupt remote replica is quarantined over there and skipped here
    for p in files(world.local):
        p.unlink()
    victim = next(p for p in files(world.remote) if p.stat().st_size > len(big))
    with open(victim, "r+b") as fh:
        fh.write(b"\0" * 64)
    with pytest.raises(Quarantined):
        with svc.open_object(A, "c", "big") as o:
            o.read()
    assert not victim.exists()
    assert list(world.remote.rglob("quarantined/objects/*/*"))


def test_an_aborted_upload_and_a_bad_token_leave_nothing_on_the_object_server(world):
    svc = world.svc
    svc.create_container(A, "c")
    w = svc.backend.writer(A, "c", "half")
    w.write(b"x" * 500_000)
    w.abort()
    deadline = time.monotonic() + 10
    while list((world.remote / "d3" / "tmp").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((world.remote / "d3" / "tmp").glob("*")) == []
    assert files(world.remote) == []
    conn = http.client.HTTPConnection("127.0.0.1", world.server.port, timeout=10)
    conn.request("DELETE", "/d3/1/AUTH_remote/c/half",
                 headers={"X-Backend-Token": "0" * 64, "X-Backend-Timestamp": "1"})
    resp = conn.getresponse()
    assert resp.status == 403 and b"X-Backend-Token" in resp.read()
    conn.close()
    assert files(world.remote, ".ts") == []


def test_frames_parser_handles_any_split():
    from stackbox.objectstore.objectserver import FRAME
    body = b"".join([FRAME.pack(3), b"abc", FRAME.pack(2), b"de", FRAME.pack(0), b'{"x":1}'])
    for step in (1, 2, 5, len(body)):
        f, got = Frames(), []
        for i in range(0, len(body), step):
            got += f.feed(body[i:i + step])
        assert b"".join(got) == b"abcde" and f.done and f.trailer == b'{"x":1}'


def test_a_started_cloud_stores_a_replica_on_the_object_server(tmp_path):
    """`stackbox ring` puts a device on another host; swiftclient's objects
    get a replica there, and stay readable when that host is down."""
    cloud = Cloud(tmp_path / "c", "sqlite", "")
    server = ObjectServer(cloud.data_dir, tmp_path / "host2")
    (tmp_path / "host2" / "d3").mkdir(parents=True)
    cloud.stackbox("ring", "create", "--part-power", "6", "--replicas", "3")
    for i, host in ((1, "local"), (2, "local"), (3, server.address)):
        if host == "local":
            (cloud.data_dir / "objects" / f"d{i}").mkdir(parents=True)
        cloud.stackbox("ring", "add", "--id", str(i), "--zone", str(i), "--weight", "100",
                       "--path", f"d{i}", "--host", host)
    cloud.stackbox("ring", "rebalance")
    server.start()
    try:
        cloud.start()
        sw = swc.Connection(authurl=cloud.auth_url, user="admin", key=cloud.admin_password,
                            auth_version="3", retries=0,
                            os_options={"project_name": "admin", "user_domain_name": "Default",
                                        "project_domain_name": "Default"})
        sw.put_container("c")
        body = os.urandom(200_000)
        sw.put_object("c", "o", body)
        assert len(files(tmp_path / "host2")) == 1
        server.stop()
        assert sw.get_object("c", "o")[1] == body
        sw.put_object("c", "o2", b"two of three")
        assert sw.get_object("c", "o2")[1] == b"two of three"
        sw.close()
    finally:
        cloud.stop()
        server.stop()
