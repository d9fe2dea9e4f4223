"""Group commit of listing rows (stackbox.objectstore.listings) and the
change counter shared by the processes of a host (stackbox.common.generation)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
from sqlalchemy import select

from stackbox.common.db import Database, migrate
from stackbox.common.errors import NotFound
from stackbox.common.generation import LocalGeneration, SharedGeneration
from stackbox.objectstore.listings import ListingWriter, Put, Remove
from stackbox.objectstore.models import Container, Object


@pytest.fixture(autouse=True, params=["sqlite3", "core"])
def statements(request, monkeypatch):
    """Every test runs with the sqlite3 statements and with SQLAlchemy Core's
    (what PostgreSQL uses)."""
    monkeypatch.setattr(ListingWriter, "RAW_SQLITE", request.param == "sqlite3")
    return request.param


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    with db.transaction() as s:
        for name in ("c1", "c2"):
            s.add(Container(account="AUTH_a", name=name, meta={}, sysmeta={}, object_count=0,
                            bytes_used=0, put_timestamp="0000000001.00000"))
    yield db
    db.dispose()


def put(name, size, ts, container="c1"):
    return Put("AUTH_a", container, name, size, "e" * 32, "application/octet-stream",
               f"{ts:010d}.00000", None, False)


def counters(db):
    with db.read() as s:
        return {c.name: (c.object_count, c.bytes_used) for c in s.scalars(select(Container))}


def names(db, container="c1"):
    with db.read() as s:
        return sorted(s.scalars(select(Object.name).where(Object.container == container)))


def test_concurrent_changes_commit_in_batches_with_exact_counters(db):
    w = ListingWriter(db.engine)
    batches = []
    commit = w._commit
    w._commit = lambda batch: (batches.append(len(batch)), commit(batch))[1]
    gate = threading.Barrier(32)
    results = {}

    def one(i):
        gate.wait()
        results[i] = w.apply(put(f"o{i:02d}", i, 10, container="c1" if i % 2 else "c2"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(32)}
    assert counters(db) == {"c1": (16, sum(range(1, 32, 2))), "c2": (16, sum(range(0, 32, 2)))}
    assert sum(batches) == 32 and len(batches) < 32      # some went together
    # newer wins, older and equal are ignored, removes count down
    assert w.apply(put("o01", 1000, 11)) is True
    assert w.apply(put("o01", 5, 11)) is False
    assert w.apply(Remove("AUTH_a", "c1", "o03", "0000000009.00000")) is False
    assert w.apply(Remove("AUTH_a", "c1", "o03", "0000000012.00000")) is True
    assert w.apply(Remove("AUTH_a", "c1", "nothing", "0000000012.00000")) is False
    assert counters(db)["c1"] == (15, sum(range(1, 32, 2)) - 1 + 1000 - 3)


def test_a_deleted_container_fails_only_its_own_puts(db):
    with db.transaction() as s:
        s.delete(s.get(Container, ("AUTH_a", "c2")))
    w = ListingWriter(db.engine)
    errors, gate = {}, threading.Barrier(8)

    def one(i):
        gate.wait()
        try:
            w.apply(put(f"x{i}", 1, 10, container="c1" if i % 2 else "c2"))
        except NotFound as e:
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(errors) == [0, 2, 4, 6]
    assert all(e.field == "container" for e in errors.values())
    assert names(db) == ["x1", "x3", "x5", "x7"]
    assert counters(db) == {"c1": (4, 4)}


def test_a_database_error_fails_the_whole_batch_and_stores_nothing(db):
    w = ListingWriter(db.engine)
    bad = put("y", 1, 10)
    bad.etag = None                       # NOT NULL column: the INSERT fails
    with pytest.raises(Exception):
        w.apply(bad)
    assert names(db) == [] and counters(db)["c1"] == (0, 0)
    assert w.apply(put("z", 2, 10)) is True          # the writer goes on


def test_shared_generation_is_seen_by_every_mapping(tmp_path):
    a, b = SharedGeneration(tmp_path / "gen"), SharedGeneration(tmp_path / "gen")
    try:
        start = b.value()
        a.bump()
        assert b.value() == start + 1
        b.bump()
        b.bump()
        assert a.value() == start + 3
    finally:
        a.close()
        b.close()
    local = LocalGeneration()
    local.bump()
    assert local.value() == 1


def test_changes_to_one_name_in_one_batch_apply_in_arrival_order(db):
    from stackbox.objectstore.listings import _Slot
    w = ListingWriter(db.engine)
    assert w.apply(put("a", 5, 10)) is True
    batch = [_Slot(put("a", 7, 12)), _Slot(Remove("AUTH_a", "c1", "a", "0000000013.00000")),
             _Slot(put("b", 3, 10)), _Slot(Remove("AUTH_a", "c1", "b", "0000000011.00000")),
             _Slot(put("c", 4, 10)), _Slot(put("c", 9, 9)),
             _Slot(Remove("AUTH_a", "c1", "d", "0000000011.00000")), _Slot(put("d", 2, 12))]
    w._commit(batch)
    assert [s.result for s in batch] == [True, True, True, True, True, False, False, True]
    assert names(db) == ["c", "d"]
    assert counters(db)["c1"] == (2, 6)


def test_async_and_blocking_callers_share_batches(db):
    import asyncio
    w = ListingWriter(db.engine)

    async def main():
        blocking = [asyncio.to_thread(w.apply, put(f"t{i}", 1, 10)) for i in range(8)]
        awaiting = [w.apply_async(put(f"a{i}", 2, 10)) for i in range(8)]
        return await asyncio.gather(*blocking, *awaiting)

    assert asyncio.run(main()) == [True] * 16
    assert counters(db)["c1"] == (16, 24)


def test_async_errors_and_cancelled_requests(db):
    import asyncio
    w = ListingWriter(db.engine)

    async def main():
        with pytest.raises(NotFound):
            await w.apply_async(put("x", 1, 10, container="gone"))
        # a request cancelled while its row is being written: the row still
        # goes in (its object is on disk), and the writer goes on
        task = asyncio.ensure_future(w.apply_async(put("kept", 5, 10)))
        await asyncio.sleep(0)
        task.cancel()
        assert await w.apply_async(put("next", 1, 10)) is True

    asyncio.run(main())
    assert names(db) == ["kept", "next"]


def test_the_writer_thread_exits_when_idle_and_comes_back(db, monkeypatch):
    monkeypatch.setattr(ListingWriter, "IDLE_SECONDS", 0.05)
    w = ListingWriter(db.engine)
    assert w.apply(put("a", 1, 10)) is True
    deadline = 50
    while w._thread is not None and deadline:
        threading.Event().wait(0.02)
        deadline -= 1
    assert w._thread is None
    assert w.apply(put("b", 1, 10)) is True
    assert names(db) == ["a", "b"]


def test_writers_of_two_processes_take_turns_by_flock(db):
    """Each process has its own writer; on SQLite they queue on an flock (a
    second open of the lock file conflicts like another process's would)."""
    a, b = ListingWriter(db.engine), ListingWriter(db.engine)
    assert a._lock_path and a._lock_path.endswith("db.sqlite-listings.lock")
    done = threading.Event()
    with a._other_processes_excluded():
        t = threading.Thread(target=lambda: (b.apply(put("b", 1, 10)), done.set()))
        t.start()
        assert not done.wait(0.3)          # b waits for a's turn to end
    assert done.wait(10)
    t.join()
    assert names(db) == ["b"]


def test_a_batch_is_one_transaction(db):
    """A failure in one container's statements undoes the batch's earlier
    containers too (on the sqlite3 path the first UPDATE opens it)."""
    from stackbox.objectstore.listings import _Slot
    w = ListingWriter(db.engine)
    assert w.apply(put("keep", 4, 10, container="c2")) is True
    bad = put("y", 1, 11)
    bad.etag = None
    with pytest.raises(Exception):
        w._commit([_Slot(Remove("AUTH_a", "c2", "keep", "0000000012.00000")), _Slot(bad)])
    assert names(db, "c2") == ["keep"]
    assert counters(db) == {"c1": (0, 0), "c2": (1, 4)}


def test_batches_keep_one_connection_and_drop_it_after_an_error(db, statements):
    """On the sqlite3 path every batch uses the writer's own connection (no
    checkout from the pool); a batch that failed closes it and the next one
    opens another; a batch running while it is in use takes the pool's."""
    if statements != "sqlite3":
        pytest.skip("Core takes the pool's connections")
    from sqlalchemy import event
    checkouts = []
    event.listen(db.engine, "checkout", lambda *a: checkouts.append(1))
    w = ListingWriter(db.engine)
    for i in range(5):
        assert w.apply(put(f"k{i}", 1, 10)) is True
    first = w._kept
    assert first is not None and len(checkouts) == 1
    bad = put("y", 1, 11)
    bad.etag = None                       # NOT NULL column: the INSERT fails
    with pytest.raises(Exception):
        w.apply(bad)
    assert w._kept is None
    assert w.apply(put("k9", 1, 10)) is True
    assert w._kept is not None and w._kept is not first and len(checkouts) == 2
    with w._kept_lock:                    # as if another batch were using it
        assert w.apply(put("k10", 1, 10)) is True
    assert len(checkouts) == 3
    assert names(db) == [f"k{i}" for i in (0, 1, 10, 2, 3, 4, 9)]
    assert counters(db)["c1"] == (7, 7)


def test_close_lets_go_of_the_kept_connection_and_the_lock_file(db, statements):
    """After close the writer holds no connection and no lock file fd; the
    next change opens them again."""
    w = ListingWriter(db.engine)
    assert w.apply(put("k0", 1, 10)) is True
    lock_fd = w._lock_fd
    assert os.readlink(f"/proc/self/fd/{lock_fd}") == w._lock_path
    sqlite = w._kept.driver_connection if statements == "sqlite3" else None
    w.close()
    assert w._kept is None and w._lock_fd == -1
    assert (not os.path.exists(f"/proc/self/fd/{lock_fd}")
            or os.readlink(f"/proc/self/fd/{lock_fd}") != w._lock_path)
    if sqlite is not None:
        with pytest.raises(sqlite3.ProgrammingError):
            sqlite.execute("select 1")
    assert w.apply(put("k1", 1, 10)) is True
    assert names(db) == ["k0", "k1"]
    w.close()
