"""Disk files: one file per object, footer metadata, timestamps, integrity."""

from __future__ import annotations

import hashlib
import itertools
import os
import tracemalloc

import pytest

from stackbox.common.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from stackbox.objectstore import diskfile
from stackbox.objectstore.diskfile import DiskFileManager, normalize_timestamp
from stackbox.objectstore.errors import OlderTimestamp, Quarantined

DEV, PART = "sda", 17
NAME = ("AUTH_test", "photos", "cat.jpg")


@pytest.fixture
def mgr(tmp_path):
    (tmp_path / DEV).mkdir()
    return DiskFileManager(str(tmp_path), hash_prefix="pre", hash_suffix="suf")


def put(mgr, data: bytes, *, name=NAME, ts="1700000000.00000", meta=None, chunk=1000):
    with mgr.writer(DEV, PART, *name) as w:
        for i in range(0, len(data), chunk):
            w.write(data[i:i + chunk])
        return w.commit(dict(meta or {}), timestamp=ts)


def get(mgr, name=NAME, start=0, end=None) -> bytes:
    with mgr.open(DEV, PART, *name) as r:
        return b"".join(r.read_range(start, end))


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def test_put_get_and_layout(mgr, tmp_path):
    data = os.urandom(150_000)
    meta = put(mgr, data, meta={"content_type": "image/jpeg"})
    assert meta["etag"] == hashlib.md5(data).hexdigest()
    assert meta["size"] == len(data)
    assert meta["timestamp"] == "1700000000.00000"
    assert meta["name"] == "/AUTH_test/photos/cat.jpg"
    assert get(mgr) == data
    h = diskfile.hash_path(*NAME, prefix="pre", suffix="suf").hex()
    assert files_under(tmp_path) == [f"{DEV}/objects/{PART}/{h[-3:]}/{h}/1700000000.00000.data"]
    # Data first, then metadata and footer: the file is self-describing.
    path = tmp_path / DEV / "objects" / str(PART) / h[-3:] / h / "1700000000.00000.data"
    raw = path.read_bytes()
    assert raw[:len(data)] == data and raw[-diskfile.FOOTER.size:].startswith(diskfile.MAGIC)


def test_range_reads_are_chunked(mgr):
    data = bytes(range(256)) * 1024            # 256 KiB
    put(mgr, data, chunk=65536)
    assert get(mgr, start=10, end=20) == data[10:20]
    assert get(mgr, start=100_000) == data[100_000:]
    assert get(mgr, start=5, end=5) == b""
    with mgr.open(DEV, PART, *NAME) as r:
        chunks = list(r.read_range(0, r.size))
        assert all(len(c) <= 64 * 1024 for c in chunks) and len(chunks) == 4
        with pytest.raises(BadRequest) as ei:
            r.read_range(0, r.size + 1)
        assert ei.value.field == "range"
        assert r.verify()


def test_empty_object(mgr):
    meta = put(mgr, b"")
    assert meta["etag"] == hashlib.md5(b"").hexdigest() and meta["size"] == 0
    assert get(mgr) == b""


def test_metadata_roundtrip_with_unicode_names(mgr):
    name = ("AUTH_tëst", "Ünïcødé ☃", "dir/sub dir/文件 🐱.txt")
    user_meta = {"content_type": "text/plain; charset=utf-8",
                 "user": {"Colour": "blåå", "Emoji": "🎉"}, "n": 3}
    put(mgr, b"hello", name=name, meta=user_meta)
    head = mgr.head(DEV, PART, *name)
    assert head["name"] == "/" + "/".join(name)
    for k, v in user_meta.items():
        assert head[k] == v
    assert get(mgr, name=name) == b"hello"
    with pytest.raises(NotFound):
        mgr.head(DEV, PART, *NAME)


def test_client_supplied_etag_and_size_are_checked(mgr, tmp_path):
    with mgr.writer(DEV, PART, *NAME) as w:
        w.write(b"abc")
        w.commit({"etag": '"' + hashlib.md5(b"abc").hexdigest().upper() + '"', "size": 3})
    with pytest.raises(BadRequest) as ei:
        with mgr.writer(DEV, PART, *NAME) as w:
            w.write(b"abd")
            w.commit({"etag": hashlib.md5(b"abc").hexdigest()},
                     timestamp="1800000000.00000")
    assert ei.value.field == "etag"
    assert get(mgr) == b"abc"                    # the bad upload changed nothing
    assert os.listdir(tmp_path / DEV / "tmp") == []
    with pytest.raises(BadRequest) as ei:
        with mgr.writer(DEV, PART, *NAME) as w:
            w.write(b"abc")
            w.commit({"bad": object()}, timestamp="1800000000.00000")
    assert ei.value.field == "metadata"


def test_abort_leaves_nothing(mgr, tmp_path):
    w = mgr.writer(DEV, PART, *NAME)
    w.write(b"x" * 100_000)
    assert len(os.listdir(tmp_path / DEV / "tmp")) == 1
    w.abort()
    assert files_under(tmp_path / DEV) == []
    with pytest.raises(NotFound):
        mgr.open(DEV, PART, *NAME)
    # An exception inside the with-block aborts too.
    with pytest.raises(RuntimeError):
        with mgr.writer(DEV, PART, *NAME) as w:
            w.write(b"partial")
            raise RuntimeError("client went away")
    assert files_under(tmp_path / DEV) == []


def test_newer_timestamp_wins_older_put_ignored(mgr, tmp_path):
    put(mgr, b"new", ts="1700000002.00000")
    with pytest.raises(OlderTimestamp) as ei:
        put(mgr, b"old", ts="1700000001.99999")
    assert isinstance(ei.value, Conflict) and ei.value.existing == "1700000002.00000"
    with pytest.raises(OlderTimestamp):          # equal is not newer (Swift: 409)
        put(mgr, b"same", ts="1700000002.00000")
    assert get(mgr) == b"new"
    assert os.listdir(tmp_path / DEV / "tmp") == []
    put(mgr, b"newer", ts=1700000003.5)
    assert get(mgr) == b"newer"
    assert mgr.head(DEV, PART, *NAME)["timestamp"] == "1700000003.50000"
    # Older versions are cleaned up: one file per object.
    assert len([f for f in files_under(tmp_path / DEV) if "/objects/" in "/" + f]) == 1


def test_tombstone_beats_older_put(mgr, tmp_path):
    put(mgr, b"v1", ts="1700000001.00000")
    assert mgr.delete(DEV, PART, *NAME, "1700000005.00000") is True
    with pytest.raises(NotFound):
        mgr.open(DEV, PART, *NAME)
    with pytest.raises(OlderTimestamp):          # a PUT from before the delete
        put(mgr, b"stale", ts="1700000004.00000")
    with pytest.raises(NotFound):
        mgr.head(DEV, PART, *NAME)
    objects = [f for f in files_under(tmp_path / DEV) if f.startswith("objects/")]
    assert len(objects) == 1 and objects[0].endswith("1700000005.00000.ts")
    assert mgr.delete(DEV, PART, *NAME, "1700000006.00000") is False
    with pytest.raises(OlderTimestamp):
        mgr.delete(DEV, PART, *NAME, "1700000003.00000")
    put(mgr, b"v2", ts="1700000007.00000")       # a newer PUT resurrects it
    assert get(mgr) == b"v2"


def test_delete_at_the_data_timestamp_conflicts(mgr, tmp_path):
    put(mgr, b"v1", ts="1700000001.00000")
    with pytest.raises(OlderTimestamp):          # Swift: a tie is not newer, 409
        mgr.delete(DEV, PART, *NAME, "1700000001.00000")
    assert get(mgr) == b"v1"
    assert [f.rsplit("/", 1)[1] for f in files_under(tmp_path / DEV)] == ["1700000001.00000.data"]


def test_rename_never_replaces_without_renameat2(mgr, tmp_path, monkeypatch):
    """Where the file system has no RENAME_NOREPLACE, link + unlink is used:
    the same version is still never replaced, and no temp file is left."""
    real = diskfile.ctypes.CDLL

    class NoRenameat2:
        def __init__(self, *a, **kw):
            self._lib = real(*a, **kw)

        def __getattr__(self, name):
            if name == "renameat2":
                raise AttributeError(name)
            return getattr(self._lib, name)
    monkeypatch.setattr(diskfile.ctypes, "CDLL", NoRenameat2)
    monkeypatch.setattr(diskfile, "_rename_noreplace", diskfile._renamer())
    put(mgr, b"first", ts="1700000001.00000")
    with pytest.raises(OlderTimestamp):
        put(mgr, b"second", ts="1700000001.00000")
    assert get(mgr) == b"first"
    put(mgr, b"third", ts="1700000002.00000")
    assert get(mgr) == b"third"
    assert os.listdir(tmp_path / DEV / "tmp") == []
    assert len([f for f in files_under(tmp_path / DEV) if f.startswith("objects/")]) == 1


def test_temp_names_skip_a_dead_writers_leftover(mgr, tmp_path, monkeypatch):
    monkeypatch.setattr(diskfile, "_tmp_names", itertools.count(7))
    stale = tmp_path / DEV / "tmp" / f"{os.getpid():x}-7.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"from a crashed process with the same pid")
    put(mgr, b"new")
    assert get(mgr) == b"new"
    assert os.listdir(tmp_path / DEV / "tmp") == [stale.name]
    assert stale.read_bytes().startswith(b"from a crashed")


def test_writer_makes_tmp_but_never_a_device(mgr, tmp_path):
    put(mgr, b"x")                                # tmp is made on first use
    assert (tmp_path / DEV / "tmp").is_dir()
    with pytest.raises(ServiceUnavailable):
        mgr.writer("sdb", PART, *NAME)
    assert not (tmp_path / "sdb").exists()


def test_delete_of_missing_object_still_records_tombstone(mgr):
    assert mgr.delete(DEV, PART, *NAME, "1700000005.00000") is False
    with pytest.raises(OlderTimestamp):
        put(mgr, b"late", ts="1700000004.00000")


def _data_path(mgr):
    return os.path.join(mgr.object_dir(DEV, PART, *NAME),
                        os.listdir(mgr.object_dir(DEV, PART, *NAME))[0])


def test_audit_detects_flipped_data_byte_and_quarantine(mgr, tmp_path):
    put(mgr, os.urandom(200_000))
    (part, path), = list(mgr.iter_data_files(DEV))
    assert part == PART and mgr.audit(path)
    with open(path, "r+b") as f:
        f.seek(123_456)
        byte = f.read(1)
        f.seek(123_456)
        f.write(bytes([byte[0] ^ 0x01]))
    assert not mgr.audit(path)
    dest = mgr.quarantine(DEV, PART, *NAME)
    assert dest.startswith(str(tmp_path / DEV / "quarantined" / "objects"))
    assert os.path.exists(dest) and not os.path.exists(path)
    with pytest.raises(NotFound):
        mgr.open(DEV, PART, *NAME)


def test_full_read_of_corrupt_data_quarantines(mgr):
    put(mgr, b"a" * 100_000)
    path = _data_path(mgr)
    with open(path, "r+b") as f:
        f.write(b"b")
    with mgr.open(DEV, PART, *NAME) as r:
        assert not r.verify()
        with pytest.raises(Quarantined):
            b"".join(r.read_range())
    with pytest.raises(NotFound):
        mgr.open(DEV, PART, *NAME)


@pytest.mark.parametrize("damage", ["metadata", "truncate", "magic"])
def test_corrupt_metadata_is_quarantined_on_open(mgr, tmp_path, damage):
    put(mgr, b"payload" * 100, meta={"content_type": "text/plain"})
    path = _data_path(mgr)
    raw = bytearray(open(path, "rb").read())
    if damage == "metadata":
        raw[-diskfile.FOOTER.size - 5] ^= 0xFF
    elif damage == "truncate":
        raw = raw[:100] + raw[-diskfile.FOOTER.size:]
    else:
        raw[-diskfile.FOOTER.size] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    assert not mgr.audit(path)
    with pytest.raises(Quarantined) as ei:
        mgr.open(DEV, PART, *NAME)
    assert isinstance(ei.value, NotFound)
    assert os.listdir(tmp_path / DEV / "quarantined" / "objects")
    with pytest.raises(NotFound):
        mgr.open(DEV, PART, *NAME)


def test_audit_detects_misplaced_file(mgr, tmp_path):
    put(mgr, b"x")
    src = _data_path(mgr)
    other = mgr.object_dir(DEV, PART, "AUTH_test", "photos", "dog.jpg")
    os.makedirs(other)
    dst = os.path.join(other, os.path.basename(src))
    os.rename(src, dst)
    assert not mgr.audit(dst)


def test_large_object_streams_with_bounded_memory(mgr):
    chunk = os.urandom(64 * 1024)
    total = 20 * 1024 * 1024
    md5 = hashlib.md5()
    tracemalloc.start()
    try:
        with mgr.writer(DEV, PART, *NAME) as w:
            for _ in range(total // len(chunk)):
                w.write(chunk)
                md5.update(chunk)
            meta = w.commit({})
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        check = hashlib.md5()
        with mgr.open(DEV, PART, *NAME) as r:
            for piece in r.read_range():
                check.update(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta["size"] == total and meta["etag"] == md5.hexdigest() == check.hexdigest()
    assert write_peak < 2 * 1024 * 1024, write_peak
    assert read_peak < 2 * 1024 * 1024, read_peak


def test_timestamps():
    assert normalize_timestamp(1700000000.12345) == "1700000000.12345"
    assert normalize_timestamp("1700000000.1") == "1700000000.10000"
    assert normalize_timestamp(5) == "0000000005.00000"
    # the canonical form's fast path agrees with the general one
    for canonical in ("1700000000.12345", "0000000000.00000", "9999999999.99999"):
        assert diskfile._ticks(canonical) == diskfile._ticks(canonical + "0")
        assert normalize_timestamp(canonical) == canonical
    for bad in ("soon", -1, "nan", True, "17000000\u00b2\u00b2.12345", "170000000-.12345",
                "1700000000x12345"):
        with pytest.raises(BadRequest) as ei:
            normalize_timestamp(bad)
        assert ei.value.field == "timestamp"


def test_input_validation(mgr):
    with pytest.raises(BadRequest) as ei:
        mgr.writer("../etc", PART, *NAME)
    assert ei.value.field == "device"
    with pytest.raises(ServiceUnavailable):          # never writes to an absent mount
        mgr.writer("sdz", PART, *NAME)
    with pytest.raises(BadRequest) as ei:
        mgr.open(DEV, -1, *NAME)
    assert ei.value.field == "partition"
    with pytest.raises(BadRequest):
        mgr.open(DEV, PART, "AUTH_test", "", "o")


def test_reap_tmp(mgr, tmp_path):
    w = mgr.writer(DEV, PART, *NAME)
    w.write(b"crashed writer")
    assert mgr.reap_tmp(DEV, older_than=3600) == 0
    assert mgr.reap_tmp(DEV, older_than=-1) == 1
    assert os.listdir(tmp_path / DEV / "tmp") == []
    w.abort()      # tolerates its temp file being gone already


def test_big_upload_starts_writeback_and_commits_intact(mgr, monkeypatch):
    calls = []
    real = diskfile._sync_file_range
    monkeypatch.setattr(diskfile, "WRITEBACK_EVERY", 1 << 20)
    monkeypatch.setattr(diskfile, "_sync_file_range",
                        lambda fd, off, n, flags: calls.append((off, n)) or
                        (real(fd, off, n, flags) if real else 0))
    data = os.urandom(3 << 20)
    meta = put(mgr, data, chunk=512 << 10)
    assert calls == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20)]
    assert meta["etag"] == hashlib.md5(data).hexdigest()
    assert get(mgr) == data


def test_mkdirs_makes_missing_parents_and_accepts_existing_ones(tmp_path):
    deep = tmp_path / "objects" / "7" / "abc" / "0123abc"
    diskfile._mkdirs(str(deep))
    assert deep.is_dir()
    diskfile._mkdirs(str(deep))                 # there already: no error
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        diskfile._mkdirs(str(tmp_path / "file" / "x"))
