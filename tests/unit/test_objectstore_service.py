"""The object-store service on real SQLite and real device directories:
replicas, quorum, listings (prefix/delimiter/marker/reverse), counters,
SLO assembly, expiry and bad names leaving nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
import time
from types import SimpleNamespace

import pytest

from stackbox.common.config import ObjectStoreSettings
from stackbox.common.db import Database, migrate
from stackbox.common.errors import BadRequest, Conflict, NotFound
from stackbox.objectstore.bootstrap import build_service
from stackbox.objectstore.errors import InsufficientStorage, PreconditionFailed, Unprocessable
from stackbox.objectstore.service import Listing, ObjectEntry, Subdir
from stackbox.objectstore.steprunner import StepRunner

A = "AUTH_p1"


def _service(tmp_path, replicas=3, *, io_uring=True):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    settings = SimpleNamespace(data_dir=tmp_path, object_store=ObjectStoreSettings(
        replicas=replicas, devices=3, part_power=6, io_uring=io_uring))
    s = build_service(db, settings)
    return s, db


@pytest.fixture
def svc(tmp_path):
    s, db = _service(tmp_path)
    yield s
    s.close()
    db.dispose()


@pytest.fixture
def svc1(tmp_path):
    """One replica: big chunks go to the disk in a pool thread while the
    request's thread computes the md5 (storage.ReplicatedWriter.write)."""
    s, db = _service(tmp_path, replicas=1)
    yield s
    s.close()
    db.dispose()


def _files(root, ext=".data"):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(ext)]


def test_put_writes_three_replicas_and_lists_at_once(svc, tmp_path):
    svc.create_container(A, "c")
    info = svc.put_object(A, "c", "o1", [b"hello ", b"world"], content_type="text/plain",
                          meta={"Color": "blue"})
    assert info.etag == hashlib.md5(b"hello world").hexdigest() and info.size == 11
    assert len(_files(tmp_path / "objects")) == 3
    assert [e.name for e in svc.list_objects(A, "c")] == ["o1"]
    c = svc.container_info(A, "c", cached=False)
    assert (c.object_count, c.bytes_used) == (1, 11)
    with svc.open_object(A, "c", "o1") as o:
        assert o.read() == b"hello world" and o.info.meta == {"color": "blue"}
        assert b"".join(o.iter_range(2, 5)) == b"llo"
    svc.put_object(A, "c", "o1", [b"x"])               # overwrite: count stays 1
    a = svc.account_info(A)
    assert (a.container_count, a.object_count, a.bytes_used) == (1, 1, 1)


def test_get_survives_a_corrupt_and_a_missing_replica(svc, tmp_path):
    svc.create_container(A, "c")
    svc.put_object(A, "c", "o", [b"payload" * 100])
    files = sorted(_files(tmp_path / "objects"))
    for path in files[:2]:
        with open(path, "r+b") as f:
            f.write(b"XXXX")                            # damage data, keep the footer
    for _ in range(3):
        info, data = svc.read_object(A, "c", "o")
        assert data == b"payload" * 100
    os.unlink(files[2])                                 # only bad copies left
    with pytest.raises(NotFound):
        svc.read_object(A, "c", "o")
    assert [f for f in _files(tmp_path / "objects") if "/quarantined/" not in f] == []
    assert len(_files(tmp_path / "objects")) == 2       # both moved to quarantine


def _replica_states(svc, tmp_path, name, *bodies):
    """PUT each body in turn; returns each version's three replica files,
    copied aside before the next version replaced them."""
    states = []
    for body in bodies:
        svc.put_object(A, "c", name, [body])
        saved = []
        for path in sorted(_files(tmp_path / "objects")):
            if f"/{_hash_dir(path)}/" in path:
                aside = tmp_path / f"aside-{len(states)}-{len(saved)}"
                shutil.copy2(path, aside)
                saved.append((path, aside))
        states.append(saved)
    return states


def _hash_dir(path):
    return os.path.basename(os.path.dirname(path))


def test_a_replica_that_missed_an_overwrite_is_not_served(svc, tmp_path):
    svc.create_container(A, "c")
    old, new = _replica_states(svc, tmp_path, "o", b"old", b"new")
    for (new_path, _), (old_path, aside) in zip(new[:2], old[:2]):
        os.unlink(new_path)                         # two replicas missed the overwrite
        shutil.copy2(aside, old_path)
    for _ in range(3):
        assert svc.read_object(A, "c", "o")[1] == b"new"


def test_a_replica_that_missed_a_delete_does_not_bring_the_object_back(svc, tmp_path):
    svc.create_container(A, "c")
    (versions,) = _replica_states(svc, tmp_path, "o", b"gone")
    svc.delete_object(A, "c", "o")
    tombstones = sorted(_files(tmp_path / "objects", ".ts"))
    assert len(tombstones) == 3
    for ts, (path, aside) in zip(tombstones[:2], versions[:2]):
        os.unlink(ts)                               # two replicas missed the delete
        shutil.copy2(aside, path)
    with pytest.raises(NotFound):
        svc.read_object(A, "c", "o")


def test_a_read_opens_only_the_newest_replica(svc, tmp_path, monkeypatch):
    from stackbox.objectstore import diskfile
    svc.create_container(A, "c")
    svc.put_object(A, "c", "o", [b"x" * 100])
    opened = []
    real_open = os.open

    def counting_open(path, *args, **kw):
        opened.append(str(path))
        return real_open(path, *args, **kw)
    monkeypatch.setattr(diskfile.os, "open", counting_open)
    assert svc.read_object(A, "c", "o")[1] == b"x" * 100
    assert len([p for p in opened if p.endswith(".data")]) == 1


def test_quorum_lost_is_507_and_leaves_nothing(svc, tmp_path):
    svc.create_container(A, "c")
    for d in ("d1", "d2", "d3"):
        shutil.rmtree(tmp_path / "objects" / d)
    with pytest.raises(InsufficientStorage):
        svc.put_object(A, "c", "o", [b"x"])
    assert svc.list_objects(A, "c") == []


def test_listing_prefix_delimiter_marker_reverse(svc):
    svc.create_container(A, "c")
    names = ["a/1", "a/2", "a/b/3", "b", "c/1", "c0", "d"]
    for n in names:
        svc.put_object(A, "c", n, [b"."])

    def ls(**kw):
        return [e.name for e in svc.list_objects(A, "c", Listing(**kw))]
    assert ls() == names
    assert ls(delimiter="/") == ["a/", "b", "c/", "c0", "d"]
    assert ls(prefix="a/", delimiter="/") == ["a/1", "a/2", "a/b/"]
    assert ls(delimiter="/", marker="a/") == ["b", "c/", "c0", "d"]
    assert ls(marker="b", end_marker="d") == ["c/1", "c0"]
    assert ls(reverse=True, limit=3) == ["d", "c0", "c/1"]
    assert ls(reverse=True, delimiter="/") == ["d", "c0", "c/", "b", "a/"]
    assert ls(prefix="c", limit=1) == ["c/1"]
    assert isinstance(svc.list_objects(A, "c", Listing(delimiter="/"))[0], Subdir)


def test_bad_input_is_refused_and_stores_nothing(svc, tmp_path):
    svc.create_container(A, "c")
    for bad in ("a\x00b", "x" * 1025):
        with pytest.raises(BadRequest):
            svc.put_object(A, "c", bad, [b"x"])
    with pytest.raises(BadRequest):
        svc.create_container(A, "a/b")
    with pytest.raises(BadRequest):
        svc.put_object(A, "c", "o", [b"x"], meta={"k": "v" * 257})
    with pytest.raises(Unprocessable):
        svc.put_object(A, "c", "o", [b"x"], etag="0" * 32)
    with pytest.raises(BadRequest):
        svc.put_object(A, "c", "o", [b"x"], size=2)
    assert svc.list_objects(A, "c") == [] and _files(tmp_path / "objects") == []
    assert not any(os.listdir(tmp_path / "objects" / d / "tmp")
                   for d in ("d1", "d2", "d3"))


def test_delete_and_non_empty_container(svc):
    svc.create_container(A, "c")
    svc.put_object(A, "c", "o", [b"x"])
    with pytest.raises(Conflict):
        svc.delete_container(A, "c")
    svc.delete_object(A, "c", "o")
    with pytest.raises(NotFound):
        svc.open_object(A, "c", "o")
    with pytest.raises(NotFound):
        svc.delete_object(A, "c", "o")
    svc.delete_container(A, "c")
    assert svc.account_info(A).container_count == 0


def test_slo_reads_as_the_concatenation(svc):
    svc.create_container(A, "c")
    svc.create_container(A, "segs")
    parts = [b"a" * 10, b"b" * 5, b"c" * 7]
    segs = []
    for i, p in enumerate(parts):
        info = svc.put_object(A, "segs", f"p{i}", [p])
        segs.append({"path": f"/segs/p{i}", "etag": info.etag, "size_bytes": len(p)})
    m = svc.put_slo_manifest(A, "c", "big", segs)
    assert m.size == 22 and m.slo
    with svc.open_object(A, "c", "big") as o:
        assert o.read() == b"".join(parts)
        assert b"".join(o.iter_range(8, 17)) == b"aabbbbbcc"
    [entry] = svc.list_objects(A, "c")
    assert isinstance(entry, ObjectEntry) and entry.size == 22
    with pytest.raises(BadRequest):
        svc.put_slo_manifest(A, "c", "bad", [{"path": "/segs/p0", "etag": "f" * 32}])


def test_expiry_and_async_put_and_if_none_match(svc):
    svc.create_container(A, "c")

    async def body():
        for _ in range(3):
            yield b"z" * 700_000
    info = asyncio.run(svc.put_object_async(A, "c", "big", body(),
                                            delete_at=int(time.time()) + 30))
    assert info.size == 2_100_000
    with pytest.raises(PreconditionFailed):
        svc.put_object(A, "c", "big", [b"x"], if_none_match=True)
    assert svc.expire(now=time.time() + 60) == 1
    with pytest.raises(NotFound):
        svc.head_object(A, "c", "big")
    assert svc.container_info(A, "c", cached=False).object_count == 0


@pytest.fixture(params=["io_uring", "threads"])
def svc_runner(request, tmp_path):
    """The service with each runner of small writes: on the event loop with
    io_uring (where this kernel allows it), and the step runner's threads
    (`io_uring = false`)."""
    from stackbox.objectstore import uring
    if request.param == "io_uring" and uring.usable() is not None:
        pytest.skip(f"io_uring: {uring.usable()}")
    s, db = _service(tmp_path, io_uring=request.param == "io_uring")
    assert type(s.steps) is (uring.UringRunner if request.param == "io_uring" else StepRunner)
    yield s
    s.close()
    db.dispose()


def test_small_async_writes_go_to_the_step_runner_unless_they_need_the_database(svc_runner):
    """A small PUT or DELETE is committed by the step runner with its listing
    row; one into a container with versions or a quota takes a worker thread
    (copies and counts from the database would hold up the runner's batch)."""
    svc = svc_runner
    svc.create_container(A, "plain")
    svc.create_container(A, "archive")
    svc.create_container(A, "kept", sysmeta={"versions_location": "archive"})
    svc.create_container(A, "capped", sysmeta={"quota_count": "5"})

    async def one(body):
        yield body

    async def writes():
        for c in ("plain", "kept", "capped"):
            for body in (b"v1", b"v2"):
                await svc.put_object_async(A, c, "o", one(body))
            await svc.delete_object_async(A, c, "o")
    asyncio.run(writes())
    assert svc.steps.jobs == 3              # plain: two PUTs and the DELETE
    assert svc.read_object(A, "kept", "o")[1] == b"v1"        # the DELETE restored v1
    assert [e.name for e in svc.list_objects(A, "archive")] == []
    for c in ("plain", "capped"):
        with pytest.raises(NotFound):
            svc.head_object(A, c, "o")
        assert svc.container_info(A, c, cached=False).object_count == 0
    assert svc.container_info(A, "kept", cached=False).object_count == 1


def test_versions_location_stack_and_history(svc):
    svc.create_container(A, "archive")
    svc.create_container(A, "docs", sysmeta={"versions_location": "archive"})
    for body in (b"v1", b"v2", b"v3"):
        svc.put_object(A, "docs", "note", [body])
    assert len(svc.list_objects(A, "archive")) == 2
    assert svc.list_objects(A, "archive")[0].name.startswith("004note/")
    svc.post_object(A, "docs", "note", meta={"k": "v"})       # POST is not a new version
    assert len(svc.list_objects(A, "archive")) == 2
    svc.delete_object(A, "docs", "note")                       # v2 comes back
    assert svc.read_object(A, "docs", "note")[1] == b"v2"
    svc.delete_object(A, "docs", "note")
    assert svc.read_object(A, "docs", "note")[1] == b"v1"
    svc.delete_object(A, "docs", "note")
    with pytest.raises(NotFound):
        svc.head_object(A, "docs", "note")
    assert svc.list_objects(A, "archive") == []
    svc.create_container(A, "hist", sysmeta={"history_location": "archive"})
    svc.put_object(A, "hist", "h", [b"one"])
    svc.put_object(A, "hist", "h", [b"two"])
    svc.delete_object(A, "hist", "h")
    with pytest.raises(NotFound):
        svc.head_object(A, "hist", "h")
    kept = [svc.read_object(A, "archive", e.name)[1] for e in svc.list_objects(A, "archive")]
    assert kept == [b"one", b"two"]


def test_auditor_quarantines_rot_at_a_bounded_rate(svc, tmp_path):
    from stackbox.objectstore.auditor import Auditor
    svc.create_container(A, "c")
    svc.put_object(A, "c", "good", [b"g" * 1000])
    svc.put_object(A, "c", "bad", [b"b" * 1000])
    files = [f for f in _files(tmp_path / "objects") if "/quarantined/" not in f]
    victim = next(f for f in files if open(f, "rb").read(1) == b"b")
    with open(victim, "r+b") as f:
        f.write(b"X")
    started = time.monotonic()
    stats = Auditor(svc.backend, bytes_per_second=0, files_per_second=20).run_pass()
    assert time.monotonic() - started >= 5 / 20         # 6 files at 20/s
    assert (stats.files, stats.quarantined) == (6, 1)
    assert not os.path.exists(victim)
    assert svc.read_object(A, "c", "bad")[1] == b"b" * 1000   # the other replicas serve


def test_replicator_restores_a_replaced_device_and_drains_handoffs(svc, tmp_path):
    from stackbox.objectstore.replicator import Replicator
    svc.create_container(A, "c")
    for i in range(10):
        svc.put_object(A, "c", f"o{i}", [f"body{i}".encode()])
    svc.put_object(A, "c", "gone", [b"x"])
    svc.delete_object(A, "c", "gone")
    dev = tmp_path / "objects" / "d2"
    shutil.rmtree(dev)
    dev.mkdir()                                            # an empty replacement disk
    stats = Replicator(svc.backend, objects_per_second=10_000).run_pass()
    assert stats.copied == 10 and stats.tombstones == 1 and stats.errors == 0
    assert len(_files(dev)) == 10 and len(_files(dev, ".ts")) == 1
    assert len(_files(tmp_path / "objects")) == 30
    again = Replicator(svc.backend, objects_per_second=10_000).run_pass()
    assert again.copied == 0


def test_missing_device_uses_a_handoff_that_the_replicator_drains(tmp_path):
    from stackbox.objectstore.replicator import Replicator
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    svc = build_service(db, SimpleNamespace(data_dir=tmp_path, object_store=ObjectStoreSettings(
        replicas=3, devices=4, part_power=4)))
    try:
        svc.create_container(A, "c")
        _part, primaries, _ = svc.backend.nodes(A, "c", "o")
        down = tmp_path / "objects" / primaries[0].name
        shutil.rmtree(down)                                 # a device that is not mounted
        svc.put_object(A, "c", "o", [b"data"])
        spare = {f"d{i}" for i in range(1, 5)} - {p.name for p in primaries}
        assert len(_files(tmp_path / "objects" / spare.pop())) == 1   # the handoff got it
        down.mkdir()                                        # the device is back, empty
        stats = Replicator(svc.backend, objects_per_second=10_000).run_pass()
        assert stats.copied == 1 and stats.handoffs_removed == 1
        assert sorted(p.split("/objects/")[1].split("/")[0] for p in
                      _files(tmp_path / "objects")) == sorted(p.name for p in primaries)
        assert svc.read_object(A, "c", "o")[1] == b"data"
    finally:
        svc.close()
        db.dispose()


@pytest.mark.postgres
def test_listings_sort_by_bytes_on_a_postgresql_with_a_natural_language_locale(tmp_path):
    """An operator's database created with an ICU locale (where "a" < "B") still
    lists in Swift's byte order, and markers page through it exactly."""
    import psycopg

    from tests.conftest import PG_ADMIN_URL
    if not PG_ADMIN_URL:
        pytest.skip("STACKBOX_TEST_PG_URL not set")
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"sbx_icu_{os.urandom(5).hex()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
                     "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
        assert conn.execute("SELECT 'a' < 'B' COLLATE \"en-US-x-icu\"").fetchone()[0]
    url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    try:
        migrate(url)
        db = Database(url)
        settings = ObjectStoreSettings(replicas=1, devices=1, part_power=4)
        svc = build_service(db, SimpleNamespace(data_dir=tmp_path, object_store=settings))
        try:
            for c in ("b", "B", "a"):
                svc.create_container(A, c)
            names = ["a", "B", "é", "Z/1", "_", "z"]
            for n in names:
                svc.put_object(A, "a", n, [b"x"])
            in_bytes = sorted(names, key=lambda n: n.encode())
            assert [e.name for e in svc.list_objects(A, "a")] == in_bytes
            assert [e.name for e in svc.list_objects(A, "a", Listing(marker="Z/1"))] == \
                in_bytes[in_bytes.index("Z/1") + 1:]
            assert [c.name for c in svc.list_containers(A)] == ["B", "a", "b"]
        finally:
            svc.close()
            db.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_delimiter_walk_fetches_few_rows_per_subdir():
    """100 subdirs of 1,000 names each: the walk jumps past each subdir with a
    few-row query instead of reading a 1,000-row batch per subdir."""
    from stackbox.objectstore.service import ObjectStoreService
    names = sorted(f"d{d:02d}/o{i:04d}" for d in range(100) for i in range(1000)) + ["top"]
    fetched, prefix = [], ""

    def fetch(marker, n):
        rows = [(x,) for x in names if x > marker and x.startswith(prefix)][:n]
        fetched.append(len(rows))
        return rows
    got = [name for name, _row in ObjectStoreService._walk(fetch, Listing(delimiter="/"), 10000)]
    assert got == [f"d{d:02d}/" for d in range(100)] + ["top"]
    assert sum(fetched) <= 5 * 101, sum(fetched)
    # without subdirs the batches grow back to full pages
    fetched.clear()
    prefix = "d07/"
    flat = [name for name, _row in ObjectStoreService._walk(fetch, Listing(prefix="d07/",
                                                                           delimiter="/"), 10000)]
    assert len(flat) == 1000 and len(fetched) <= 8


def test_large_async_put_is_pipelined_and_counts_overwrites(svc, tmp_path):
    """Bodies over WRITE_BUFFER are written while the next buffer arrives;
    the data, etag and counters must be exactly those of the whole body."""
    svc.create_container(A, "c")
    parts = [os.urandom(300_000) for _ in range(12)]       # ~3.4 buffers

    async def body(chunks):
        for p in chunks:
            await asyncio.sleep(0)
            yield p
    info = asyncio.run(svc.put_object_async(A, "c", "big", body(parts)))
    whole = b"".join(parts)
    assert info.size == len(whole) and info.etag == hashlib.md5(whole).hexdigest()
    with svc.open_object(A, "c", "big") as o:
        assert o.read() == whole
    asyncio.run(svc.put_object_async(A, "c", "big", body([b"short"])))
    c = svc.container_info(A, "c", cached=False)
    assert (c.object_count, c.bytes_used) == (1, 5)
    svc.delete_object(A, "c", "big")
    c = svc.container_info(A, "c", cached=False)
    assert (c.object_count, c.bytes_used) == (0, 0)


def test_one_replica_large_put_writes_and_hashes_big_chunks_side_by_side(svc1, tmp_path,
                                                                       monkeypatch):
    svc1.create_container(A, "c")
    parts = [os.urandom(1 << 20) for _ in range(3)] + [b"tail"]
    real_write = os.write
    writers = set()

    def watched(fd, data):
        if len(data) >= 1 << 20:
            writers.add(threading.get_ident())
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", watched)
    info = svc1.put_object(A, "c", "big", iter(parts))
    monkeypatch.undo()
    whole = b"".join(parts)
    assert info.size == len(whole) and info.etag == hashlib.md5(whole).hexdigest()
    with svc1.open_object(A, "c", "big") as o:
        assert o.read() == whole
    assert len(_files(tmp_path / "objects")) == 1
    # the big chunks went to the disk in the pool, not in the hashing thread
    assert writers and threading.get_ident() not in writers

    # the only replica failing a big write: 507, and no temp file left
    def full(fd, data):
        if len(data) >= 1 << 20:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(InsufficientStorage):
        svc1.put_object(A, "c", "full", iter(parts))
    monkeypatch.undo()
    assert _files(tmp_path / "objects", ".tmp") == []
    with pytest.raises(NotFound):
        svc1.head_object(A, "c", "full")


def test_large_async_put_failing_mid_stream_leaves_nothing(svc, tmp_path):
    svc.create_container(A, "c")

    async def body():
        for _ in range(5):
            yield b"y" * 700_000
        raise ConnectionError("client went away")
    with pytest.raises(ConnectionError):
        asyncio.run(svc.put_object_async(A, "c", "gone", body()))
    assert _files(tmp_path / "objects") == []
    assert _files(tmp_path / "objects", ".tmp") == []
    with pytest.raises(NotFound):
        svc.head_object(A, "c", "gone")
    assert svc.container_info(A, "c", cached=False).object_count == 0


def test_fan_out_runs_every_replica_and_keeps_order(svc):
    import threading
    seen = {}
    out = svc.backend.fan_out(lambda x: seen.setdefault(x, threading.get_ident()) and x * 2,
                              [1, 2, 3])
    assert out == [2, 4, 6] and len(seen) == 3
    assert seen[1] == threading.get_ident()     # the first runs in the caller's thread
    assert seen[2] != seen[1] and seen[3] != seen[1]


def test_authorize_async_checks_a_non_owner_in_a_thread(svc):
    """A caller without an operator role is checked against the container's
    ACLs, a database query: on the event loop authorize() refuses to run it
    (LoopReads would redo it in a thread), authorize_async() runs it there."""
    from stackbox.objectstore import acl
    from stackbox.objectstore.loopreads import NeedsThread
    from stackbox.common.errors import Forbidden
    svc.create_container(A, "c", sysmeta={"read_acl": acl.parse(".r:*", header="X-Container-Read")})
    reader = SimpleNamespace(project_id="p1", project_name="demo", user_id="u1",
                             user_name="reader", roles=["reader"])
    owner = SimpleNamespace(project_id="p1", roles=["member"], user_id="u2")

    async def main():
        with pytest.raises(NeedsThread):
            svc.authorize(reader, A, "c")
        assert await svc.authorize_async(owner, A, "c", write=True) is True
        assert await svc.authorize_async(reader, A, "c") is False        # the ACL allows it
        with pytest.raises(Forbidden):
            await svc.authorize_async(reader, A, "c", write=True)
    asyncio.run(main())


def _commit_events(monkeypatch, fail_fdatasync_on=None):
    """Record the flushes and renames of a commit, in order."""
    from stackbox.objectstore import diskfile
    events = []
    real_sync, real_rename, real_fsync = os.fdatasync, diskfile._rename_noreplace, os.fsync
    calls = iter(range(100))

    def fdatasync(fd):
        events.append("fdatasync")
        if next(calls) == fail_fdatasync_on:
            raise OSError(5, "Input/output error")
        real_sync(fd)
    monkeypatch.setattr(diskfile.os, "fdatasync", fdatasync)
    monkeypatch.setattr(diskfile, "_rename_noreplace",
                        lambda a, b: events.append("rename") or real_rename(a, b))
    monkeypatch.setattr(diskfile.os, "fsync",     # only directories are fsynced
                        lambda fd: events.append("fsync_dir") or real_fsync(fd))
    return events


def test_replicas_commit_step_by_step_in_one_thread(svc, tmp_path, monkeypatch):
    """All three files are flushed before any is renamed, and all renamed
    before any directory is flushed: each step's first flush commits the
    journal for the three (no thread per replica)."""
    svc.create_container(A, "c")
    w = svc.backend.writer(A, "c", "o")
    w.write(b"data")
    events = _commit_events(monkeypatch)
    assert w.commit({}, "1700000000.00000")["etag"] == hashlib.md5(b"data").hexdigest()
    assert events == ["fdatasync"] * 3 + ["rename"] * 3 + ["fsync_dir"] * 3
    assert len(_files(tmp_path / "objects")) == 3


def test_a_replica_failing_its_flush_is_dropped_and_the_rest_commit(svc, tmp_path,
                                                                    monkeypatch):
    svc.create_container(A, "c")
    w = svc.backend.writer(A, "c", "o")
    w.write(b"data")
    events = _commit_events(monkeypatch, fail_fdatasync_on=1)
    w.commit({}, "1700000000.00000")                 # 2 of 3: a quorum
    assert events == ["fdatasync"] * 3 + ["rename"] * 2 + ["fsync_dir"] * 2
    assert len(_files(tmp_path / "objects")) == 2
    assert [f for d in ("d1", "d2", "d3") for f in os.listdir(tmp_path / "objects" / d / "tmp")] == []


def test_an_unexpected_error_mid_commit_leaves_no_temp_file(svc, tmp_path, monkeypatch):
    from stackbox.objectstore import diskfile
    svc.create_container(A, "c")
    w = svc.backend.writer(A, "c", "o")
    w.write(b"data")

    def broken(fd):
        raise RuntimeError("bug")
    monkeypatch.setattr(diskfile.os, "fdatasync", broken)
    with pytest.raises(RuntimeError):
        w.commit({}, "1700000000.00000")
    assert _files(tmp_path / "objects") == []
    assert [f for d in ("d1", "d2", "d3") for f in os.listdir(tmp_path / "objects" / d / "tmp")] == []


def test_tombstones_are_written_step_by_step_too(svc, tmp_path, monkeypatch):
    svc.create_container(A, "c")
    svc.put_object(A, "c", "o", [b"data"])
    events = _commit_events(monkeypatch)
    assert svc.backend.delete(A, "c", "o", "1900000000.00000") is True
    assert events == ["fdatasync"] * 3 + ["rename"] * 3 + ["fsync_dir"] * 3
    assert len(_files(tmp_path / "objects", ".ts")) == 3 and _files(tmp_path / "objects") == []
