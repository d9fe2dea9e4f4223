"""One object = one file on one device; data and metadata together.

Layout (Swift's):
    <devices_root>/<device>/objects/<partition>/<suffix>/<hash>/<timestamp>.data|.ts
    <devices_root>/<device>/tmp/                 uploads in progress (same fs: rename)
    <devices_root>/<device>/quarantined/objects/<hash>/   corrupt files, kept for forensics
`hash` is md5(prefix + "/a/c/o" + suffix) in hex (shared with the ring), and
`suffix` its last three hex digits, so replication can compare directories.

File format: the data bytes, then a JSON metadata block, then a fixed footer
    >8s H H I Q 32s  = magic, format version, flags (0), metadata length,
                       data length, sha256 of the metadata block
Why a footer and not a header or xattrs:
* xattrs: ext4 keeps only ~4 KiB of them per inode; user metadata plus names
  would not fit, and Swift's pickled xattrs are the thing STYLE.md says to avoid.
* header: the etag and size are only known after the last byte arrives; a
  header would need a reserved, size-capped region and a seek back.
* footer: stream the data straight to a temp file while hashing it, append the
  metadata (etag included), fsync, rename. A HEAD is one open + one pread of
  the file's tail; data starts at offset 0 so a range read is a plain pread.
The footer's lengths must add up to the file size, which catches truncation;
the sha256 catches a damaged metadata block; the md5 etag (re-hashed by the
auditor, or inline on any full read) catches damaged data.

Timestamps are Swift's X-Timestamp strings (`1700000000.12345`); the newest
file in a hash directory wins, `.ts` (tombstone) beating `.data` on a tie,
exactly as in Swift, so replicas converge however writes interleave.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import os
import struct
import time
import uuid
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Iterator, NamedTuple

from stackbox.common.errors import BadRequest, NotFound, ServiceUnavailable
from stackbox.common import fsutil
from stackbox.objectstore.errors import CorruptFile, OlderTimestamp, Quarantined
from stackbox.objectstore.hashing import hash_path, object_path

MAGIC = b"SBXOBJ\r\n"          # \r\n: a text-mode copy that mangles newlines is caught
FORMAT_VERSION = 1
FOOTER = struct.Struct(">8sHHIQ32s")
CHUNK_SIZE = 64 * 1024
MAX_METADATA = 64 * 1024
SYSTEM_KEYS = ("name", "etag", "size", "timestamp")
VERIFY_READS_UP_TO = 4 * 1024 * 1024   # full reads up to this size are re-hashed
_EXT_RANK = {".data": 0, ".ts": 1}   # on equal timestamps a delete wins


# --- timestamps --------------------------------------------------------------

def normalize_timestamp(value: float | int | str) -> str:
    """Swift's X-Timestamp form: 10 digits, a dot, 5 digits."""
    ticks = _ticks(value)
    return f"{ticks // 100_000:010d}.{ticks % 100_000:05d}"


def _ticks(value) -> int:
    # The canonical form (every file name, every timestamp stackbox makes)
    # directly; anything else through Decimal, not float, so that
    # "1700000000.12345" round-trips exactly.
    if type(value) is str and len(value) == 16 and value[10] == "." and value.isascii():
        head, tail = value[:10], value[11:]
        if head.isdigit() and tail.isdigit():
            return int(head) * 100_000 + int(tail)
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        ticks = int((Decimal(str(value)) * 100_000).to_integral_value(ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError):
        raise BadRequest(f"invalid timestamp {value!r}", field="timestamp") from None
    if not 0 <= ticks < 10**15:
        raise BadRequest(f"timestamp {value!r} is out of range", field="timestamp")
    return ticks


# --- file format -------------------------------------------------------------

_METADATA_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False)   # json.dumps makes one per call


def _encode_metadata(meta: dict) -> bytes:
    try:
        raw = _METADATA_ENCODER.encode(meta).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise BadRequest(f"metadata is not JSON-serialisable text: {exc}",
                         field="metadata") from None
    if len(raw) > MAX_METADATA:
        raise BadRequest(f"metadata is {len(raw)} bytes, limit {MAX_METADATA}", field="metadata")
    return raw


def _footer(meta_raw: bytes, data_len: int) -> bytes:
    return FOOTER.pack(MAGIC, FORMAT_VERSION, 0, len(meta_raw), data_len,
                       hashlib.sha256(meta_raw).digest())


def _read_trailer(fd: int, path: str) -> tuple[dict, int]:
    """(metadata, data length) from an open object file, or CorruptFile."""
    size = os.fstat(fd).st_size
    if size < FOOTER.size:
        raise CorruptFile("shorter than the footer", path=path)
    # One pread usually covers footer and metadata; a second only for big metadata.
    tail_len = min(size, FOOTER.size + 4096)
    tail = os.pread(fd, tail_len, size - tail_len)
    magic, version, _flags, meta_len, data_len, digest = FOOTER.unpack(tail[-FOOTER.size:])
    if magic != MAGIC:
        raise CorruptFile("bad magic: not an object file", path=path)
    if version != FORMAT_VERSION:
        raise CorruptFile(f"unsupported object format version {version}", path=path)
    if data_len + meta_len + FOOTER.size != size:
        raise CorruptFile(f"lengths in footer ({data_len}+{meta_len}) do not match "
                          f"file size {size}: truncated?", path=path)
    if meta_len + FOOTER.size <= tail_len:
        raw = tail[tail_len - FOOTER.size - meta_len:tail_len - FOOTER.size]
    else:
        raw = os.pread(fd, meta_len, data_len)
    if hashlib.sha256(raw).digest() != digest:
        raise CorruptFile("metadata checksum mismatch", path=path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise CorruptFile(f"metadata is not JSON: {exc}", path=path) from None
    if not isinstance(meta, dict) or "timestamp" not in meta:
        raise CorruptFile("metadata lacks a timestamp", path=path)
    return meta, data_len


def _iter_pread(fd: int, start: int, end: int, chunk: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        data = os.pread(fd, min(chunk, end - pos), pos)
        if not data:
            raise CorruptFile("file shrank while being read", path=f"fd {fd}")
        pos += len(data)
        yield data


# --- directory state ---------------------------------------------------------

def _on_disk(datadir: str) -> list[tuple[int, int, str]]:
    """(ticks, ext rank, filename) of every object file, newest first."""
    try:
        names = os.listdir(datadir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext in _EXT_RANK:
            try:
                found.append((_ticks(stem), _EXT_RANK[ext], name))
            except BadRequest:
                continue      # not ours; leave it for an operator
    return sorted(found, reverse=True)


class Peek(NamedTuple):
    """An object's newest file on one device (DiskFileManager.peek); newer
    compares greater (on equal timestamps a tombstone wins)."""
    ticks: int
    rank: int           # _EXT_RANK
    name: str
    datadir: str

    @property
    def tombstone(self) -> bool:
        return self.name.endswith(".ts")


# --- the backend API ---------------------------------------------------------

class DiskFileManager:
    """This is the backend API: everything above (object server, auditor,
    replicator) stores and finds objects only through these methods, so a
    second implementation (in memory, another format) can replace it.

    writer / open / head / delete        the object lifecycle
    quarantine / audit / iter_data_files / reap_tmp   housekeeping

    Pass the ring's hash_prefix/hash_suffix so directory hashes match the
    ones the ring (and `stackbox object locate`) reports.
    """

    def __init__(self, devices_root: str, *, hash_prefix: str = "", hash_suffix: str = "",
                 chunk_size: int = CHUNK_SIZE):
        self.devices_root = os.path.abspath(devices_root)
        self.hash_prefix = hash_prefix
        self.hash_suffix = hash_suffix
        self.chunk_size = chunk_size

    # -- paths --
    @staticmethod
    def _device_name(device: str) -> str:
        if not isinstance(device, str) or not device or "/" in device or device in (".", ".."):
            raise BadRequest(f"invalid device name {device!r}", field="device")
        return device

    def _device_dir(self, device: str) -> str:
        path = os.path.join(self.devices_root, self._device_name(device))
        # Never create a device directory: writing into an unmounted mount
        # point would fill the root file system (Swift's mount_check, 507).
        if not os.path.isdir(path):
            raise ServiceUnavailable(f"device {device} is not available", field="device")
        return path

    def object_dir(self, device: str, partition: int, account: str, container: str,
                   obj: str, *, check_device: bool = True) -> str:
        """check_device=False skips the device's stat: for readers, which
        check it only when they find nothing (see open)."""
        if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
            raise BadRequest(f"invalid partition {partition!r}", field="partition")
        if container is None or obj is None:
            raise BadRequest("account, container and object are required", field="object")
        digest = hash_path(account, container, obj, prefix=self.hash_prefix,
                           suffix=self.hash_suffix).hex()
        root = (self._device_dir(device) if check_device
                else os.path.join(self.devices_root, self._device_name(device)))
        return os.path.join(root, "objects", str(partition), digest[-3:], digest)

    # -- lifecycle --
    def writer(self, device: str, partition: int, account: str, container: str,
               obj: str, *, hashing: bool = True) -> "Writer":
        """hashing=False: the caller computes the md5 once for several
        replicas and passes it to commit() as metadata["etag"].

        No stat of the device per upload: the temp file is created in
        <device>/tmp, and only when that fails is the device checked (a
        missing one is ServiceUnavailable) and its tmp made."""
        datadir = self.object_dir(device, partition, account, container, obj,
                                  check_device=False)
        tmpdir = os.path.join(self.devices_root, self._device_name(device), "tmp")
        try:
            fd, tmp = _create_tmp(tmpdir)
        except FileNotFoundError:
            self._device_dir(device)
            fsutil.makedirs_durable(tmpdir)
            fd, tmp = _create_tmp(tmpdir)
        return Writer(self, datadir, object_path(account, container, obj), fd, tmp,
                      hashing=hashing)

    def peek(self, device: str, partition: int, account: str, container: str,
             obj: str) -> "Peek | None":
        """The object's newest file here from one directory listing, without
        opening it: what a reader of several replicas compares before it
        opens only the newest. None when this device has no file of it."""
        datadir = self.object_dir(device, partition, account, container, obj,
                                  check_device=False)
        files = _on_disk(datadir)
        if not files:
            self._device_dir(device)      # a missing device is unavailable, not empty
            return None
        return Peek(*files[0], datadir)

    def open(self, device: str, partition: int, account: str, container: str,
             obj: str, *, peeked: "Peek | None" = None) -> "Reader":
        """The newest version, or NotFound (never existed, or deleted).
        `peeked` (from peek) saves the directory listing."""
        datadir = self.object_dir(device, partition, account, container, obj,
                                  check_device=False)
        files = [peeked[:3]] if peeked is not None else None
        for _attempt in range(3):
            if files is None:
                files = _on_disk(datadir)
                if not files:
                    self._device_dir(device)      # a missing device is unavailable, not empty
            if not files or files[0][2].endswith(".ts"):
                raise NotFound(f"object {object_path(account, container, obj)} not found",
                               field="object")
            path = os.path.join(datadir, files[0][2])
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                files = None
                continue    # a newer PUT's cleanup removed it: list again
            try:
                meta, size = _read_trailer(fd, path)
            except CorruptFile:
                os.close(fd)
                try:
                    self._quarantine_file(path)
                except FileNotFoundError:
                    pass    # replaced meanwhile; the next open sees the new file
                raise Quarantined(f"object {object_path(account, container, obj)} was "
                                  "corrupt and has been quarantined", field="object") from None
            except BaseException:
                os.close(fd)
                raise
            return Reader(self, fd, path, meta, size)
        raise NotFound("object keeps changing under the reader; retry", field="object")

    def newest(self, device: str, partition: int, account: str, container: str,
               obj: str) -> tuple[str | None, bool]:
        """(timestamp of the newest file, whether it is a tombstone); (None,
        False) when there is no file. What replication compares."""
        found = _on_disk(self.object_dir(device, partition, account, container, obj))
        if not found:
            return None, False
        stem, ext = os.path.splitext(found[0][2])
        return stem, ext == ".ts"

    def head(self, device: str, partition: int, account: str, container: str,
             obj: str) -> dict:
        with self.open(device, partition, account, container, obj) as reader:
            return reader.metadata

    def delete(self, device: str, partition: int, account: str, container: str,
               obj: str, timestamp: float | str) -> bool:
        """Write a tombstone at `timestamp`; returns whether an object existed.

        The tombstone is kept (not just an unlink) so that a replica still
        holding an older PUT, or an older PUT still in flight, loses to it."""
        return run_steps(self.delete_steps(device, partition, account, container, obj,
                                           timestamp))

    def delete_steps(self, device: str, partition: int, account: str, container: str,
                     obj: str, timestamp: float | str, *, together: bool = False):
        """delete() as a generator of steps, for several replicas' tombstones
        written together in one thread (see Writer._install_steps)."""
        ts = normalize_timestamp(timestamp)
        w = self.writer(device, partition, account, container, obj)
        try:
            replaced = yield from w._install_steps(
                {"name": w.name, "timestamp": ts, "deleted": True}, ts, ".ts",
                together=together)
        except BaseException:
            w.abort()
            raise
        return replaced is not None and replaced.endswith(".data")

    # -- housekeeping --
    def _quarantine_file(self, path: str) -> str:
        """Move one file to <device>/quarantined/objects/<hash>/; only the bad
        file moves, so a newer good version written meanwhile stays live."""
        objects_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        hash_name = os.path.basename(os.path.dirname(path))
        qdir = os.path.join(os.path.dirname(objects_dir), "quarantined", "objects", hash_name)
        fsutil.makedirs_durable(qdir)
        dest = os.path.join(qdir, os.path.basename(path))
        if os.path.exists(dest):
            dest += "." + uuid.uuid4().hex
        os.rename(path, dest)
        fsutil.fsync_dir(qdir)
        return dest

    def quarantine(self, device: str, partition: int, account: str, container: str,
                   obj: str) -> str | None:
        """Move the current file of an object aside; returns where it went."""
        datadir = self.object_dir(device, partition, account, container, obj)
        files = _on_disk(datadir)
        if not files:
            return None
        return self._quarantine_file(os.path.join(datadir, files[0][2]))

    def audit(self, path: str) -> bool:
        """Re-check one object file: footer, metadata checksum, that its name
        hashes to its directory, and (for .data) the data against the etag."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"{path} no longer exists", field="path") from None
        try:
            meta, size = _read_trailer(fd, path)
            name = meta.get("name", "")
            account, _, rest = name.lstrip("/").partition("/")
            container, _, obj = rest.partition("/")
            expected = hash_path(account, container, obj, prefix=self.hash_prefix,
                                 suffix=self.hash_suffix).hex()
            if os.path.basename(os.path.dirname(path)) != expected:
                return False
            if path.endswith(".ts"):
                return size == 0
            md5 = hashlib.md5(usedforsecurity=False)
            for chunk in _iter_pread(fd, 0, size, self.chunk_size):
                md5.update(chunk)
            return md5.hexdigest() == meta.get("etag") and size == meta.get("size")
        except (CorruptFile, BadRequest):
            return False
        finally:
            os.close(fd)

    def iter_data_files(self, device: str) -> Iterator[tuple[int, str]]:
        """(partition, path) of every .data file on a device, for the auditor."""
        objects = os.path.join(self._device_dir(device), "objects")
        for part in sorted(os.listdir(objects)) if os.path.isdir(objects) else []:
            if not part.isdigit():
                continue
            for root, _dirs, files in os.walk(os.path.join(objects, part)):
                for name in sorted(files):
                    if name.endswith(".data"):
                        yield int(part), os.path.join(root, name)

    def reap_tmp(self, device: str, *, older_than: float = 86400.0) -> int:
        """Remove temp files a crashed writer left behind; returns how many."""
        tmpdir = os.path.join(self._device_dir(device), "tmp")
        cutoff, removed = time.time() - older_than, 0
        for entry in os.scandir(tmpdir) if os.path.isdir(tmpdir) else []:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        return removed


def _writeback_starter():
    """sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE): start writing
    dirty pages to disk without waiting (Linux; None elsewhere)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _writeback_starter()
SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_EVERY = 8 * 1024 * 1024
WRITE_AHEAD = 256 * 1024     # data held before it is written to the temp file


def _mkdirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True) for a path whose parents mostly
    exist (an object's directory): one mkdir when they do, and no stat of
    each parent first."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        _mkdirs(os.path.dirname(path))
        try:
            os.mkdir(path)
        except FileExistsError:
            pass


_tmp_names = itertools.count()


def _create_tmp(tmpdir: str) -> tuple[int, str]:
    """A new, empty temp file: <pid>-<n>.tmp, O_EXCL so a name a dead process
    with the same pid left behind is skipped (cheaper than mkstemp's random
    names, and the pid says who wrote it)."""
    pid = os.getpid()
    for _attempt in range(100):
        path = os.path.join(tmpdir, f"{pid:x}-{next(_tmp_names):x}.tmp")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", tmpdir)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _renamer():
    """rename(src, dst) that fails with FileExistsError instead of replacing
    dst: renameat2(RENAME_NOREPLACE) (Linux 3.15+, ext4/xfs/btrfs/tmpfs),
    else link + unlink, which is as exclusive."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        fn.restype = ctypes.c_int

    def fallback(src: str, dst: str) -> None:
        os.link(src, dst)
        os.unlink(src)

    def rename_noreplace(src: str, dst: str) -> None:
        nonlocal fn
        if fn is not None:
            if fn(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, NOREPLACE
                return
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS):
                raise OSError(err, os.strerror(err), src, None, dst)
            fn = None        # this file system does not do it: link + unlink from now on
        fallback(src, dst)
    return rename_noreplace


_rename_noreplace = _renamer()


class Writer:
    """Streams one upload to <device>/tmp; nothing is visible until commit.
    Use as a context manager: leaving the block without commit aborts.

    Small uploads cost few system calls: the data is held until WRITE_AHEAD
    bytes (or the commit), so a 4 KiB object is one write() with its
    metadata; commit is fdatasync, mkdir of its directory, one exclusive
    rename, fsync of the directory and one listing of it (to drop the
    versions it supersedes). Each call also releases and retakes the
    interpreter lock, which many threads then fight over.

    A large upload starts the disk writing every WRITEBACK_EVERY bytes (no
    waiting), so the commit's fdatasync finds little left to flush and the
    disk works while the network delivers the rest (Swift's bytes_per_sync
    does the same with fdatasync)."""

    def __init__(self, mgr: DiskFileManager, datadir: str, name: str, fd: int, tmp: str, *,
                 hashing: bool = True):
        self._mgr, self.datadir, self.name = mgr, datadir, name
        self._fd, self._tmp = fd, tmp
        self._md5 = hashlib.md5(usedforsecurity=False) if hashing else None
        self._size = 0
        self._held: list = []    # data not yet written to the file (size - written bytes)
        self._written = 0       # bytes in the file
        self._synced = 0        # bytes handed to the disk's writeback so far
        self._done = False

    def write(self, chunk: bytes) -> int:
        if self._done:
            raise BadRequest("writer is already closed", field="body")
        if self._md5 is not None:
            self._md5.update(chunk)
        self._size += len(chunk)
        self._held.append(chunk)
        if self._size - self._written >= WRITE_AHEAD:
            self._flush()
        if self._written - self._synced >= WRITEBACK_EVERY and _sync_file_range is not None:
            # advisory only: the commit's fdatasync is what makes it durable
            _sync_file_range(self._fd, self._synced, self._written - self._synced,
                             SYNC_FILE_RANGE_WRITE)
            self._synced = self._written
        return len(chunk)

    def _flush(self) -> None:
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        _write_all(self._fd, data)
        self._written += len(data)

    def commit(self, metadata: dict, *, timestamp: float | str | None = None) -> dict:
        """Make the upload the object's current version; returns the stored
        metadata. A supplied etag or size must match what was written (a
        client's Content-MD5 / Content-Length). Raises OlderTimestamp, after
        discarding the upload, when a newer or equal version exists."""
        return run_steps(self.commit_steps(metadata, timestamp=timestamp))

    def commit_steps(self, metadata: dict, *, timestamp: float | str | None = None,
                     together: bool = False):
        """commit() as a generator of steps (see _install_steps),
        for several replicas committed together in one thread; its return
        value (StopIteration.value) is commit()'s."""
        try:
            if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
                raise BadRequest("metadata must be a dict with string keys", field="metadata")
            claimed = metadata.get("etag")
            if self._md5 is None:
                if not claimed:
                    raise BadRequest("a writer without hashing needs the etag",
                                     field="etag")
                etag = str(claimed).strip('"').lower()
            else:
                etag = self._md5.hexdigest()
            if claimed is not None and str(claimed).strip('"').lower() != etag:
                raise BadRequest(f"etag {claimed} does not match the data ({etag})", field="etag")
            if metadata.get("size") is not None and metadata["size"] != self._size:
                raise BadRequest(f"size {metadata['size']} does not match the data "
                                 f"({self._size} bytes)", field="size")
            ts = normalize_timestamp(timestamp if timestamp is not None
                                     else metadata.get("timestamp", time.time()))
            meta = dict(metadata, name=self.name, etag=etag, size=self._size, timestamp=ts)
            yield from self._install_steps(meta, ts, ".data", together=together)
            return meta
        except BaseException:       # GeneratorExit too: an abandoned commit aborts
            self.abort()
            raise

    def _install(self, meta: dict, ts: str, ext: str) -> str | None:
        """Make the temp file the version `ts`; returns the name of the file it
        supersedes (None: the directory held nothing older)."""
        return run_steps(self._install_steps(meta, ts, ext))

    def _install_steps(self, meta: dict, ts: str, ext: str, *, together: bool = False):
        """_install as steps: write (and mkdir), then yield for the fdatasync
        of the file (a Flush); rename, then yield for the fsync of its
        directory; then remove what it superseded. Several replicas' writers
        advanced step by step in one thread (`together`, which also starts each
        file's writeback in the first step) share the journal's commits: the
        first fdatasync commits the transaction holding every replica's new
        blocks and the later ones find theirs done; the same for the
        directories' fsyncs. No thread per replica is needed to batch them."""
        raw = _encode_metadata(meta)
        self._held.append(raw)
        self._held.append(_footer(raw, self._size))
        self._flush()
        if together and _sync_file_range is not None:
            _sync_file_range(self._fd, self._synced, self._written - self._synced,
                             SYNC_FILE_RANGE_WRITE)
        # The object's directory is made now, not just before the rename: a
        # mkdir makes an inode, which on ext4 without a journal costs a scan
        # of the recently deleted ones (docs/objectstore.md, "Which file
        # system"), and in the rename round that held up the whole batch
        # (the round took 0.5-0.7 ms for a batch of four there, 0.15-0.18 ms
        # without it); here it overlaps the flushes of the batch before.
        # A PUT that fails later leaves the directory empty, as Swift's does;
        # readers and the replicator skip it.
        # No fsync of each new parent (partition, suffix): ext4 and XFS journal
        # metadata in order, so the fsync of the hash directory at the end
        # commits these mkdirs too. Swift relies on the same; it saves a
        # third fsync on every PUT of a new name (and its kernel CPU).
        _mkdirs(self.datadir)
        # fdatasync: the data and what is needed to read it back (size,
        # blocks); a new file's timestamps are not worth a second flush
        yield from ask(Flush(self._fd, data_only=True))
        os.close(self._fd)
        self._fd = -1
        mine = ts + ext
        try:
            # never replace: the same name is the same version (or a tie with
            # a concurrent writer), and the first one stays
            _rename_noreplace(self._tmp, os.path.join(self.datadir, mine))
        except FileExistsError:
            self.abort()
            raise OlderTimestamp(f"version {mine} exists already", timestamp=ts,
                                 existing=ts) from None
        self._done = True
        # Whether a newer version exists is checked after the rename: every
        # reader takes the newest file, so an older one renamed in is never
        # served, and is removed again here.
        files = _on_disk(self.datadir)
        ticks = _ticks(ts)
        for t, _rank, name in files[:2]:
            if name != mine and t >= ticks:     # a tie is no newer either (Swift: 409)
                _unlink_quietly(os.path.join(self.datadir, mine))
                raise OlderTimestamp(f"a newer or equal version exists: {name}",
                                     timestamp=ts, existing=name.rsplit(".", 1)[0])
        dir_fd = os.open(self.datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield from ask(Flush(dir_fd, data_only=False))
        finally:
            os.close(dir_fd)
        # Keep only the newest file: older data is superseded, not history.
        for _ticks_, _rank, name in files[1:]:
            _unlink_quietly(os.path.join(self.datadir, name))
        return files[1][2] if len(files) > 1 else None   # files[0] is mine

    def abort(self) -> None:
        """Discard the upload: a failed PUT leaves nothing behind."""
        if self._done:
            return
        self._done = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _unlink_quietly(self._tmp)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class Flush(NamedTuple):
    """A flush a step generator asks for instead of making it: it yields a
    tuple of them (an empty tuple: just a step boundary) and receives a list
    as long, each None or the OSError that flush raised. So whoever runs the
    steps decides how: one after the other in its thread (run_steps: the
    first flush commits the journal for the rest), or all at once through
    io_uring (stackbox.objectstore.uring). The fd stays the generator's."""
    fd: int
    data_only: bool         # fdatasync, else fsync


def flush_all(flushes) -> list:
    """Flushes made here, one after the other: each None or its OSError."""
    out: list = []
    for f in flushes:
        try:
            (os.fdatasync if f.data_only else os.fsync)(f.fd)
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


def ask(*flushes: Flush):
    """Within a step generator: `yield from ask(...)` yields the flushes and
    raises the first error among their answers. Driven by a bare next()
    (no answers), it flushes them itself: a flush is never skipped."""
    answers = yield flushes
    if answers is None:
        answers = flush_all(flushes)
    for a in answers:
        if a is not None:
            raise a


def run_steps(steps):
    """Run a step generator to its end, its flushes in this thread; its
    return value."""
    answers = None
    while True:
        try:
            asked = steps.send(answers)
        except StopIteration as done:
            return done.value
        answers = flush_all(asked or ())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass     # a concurrent cleanup got there first


class Reader:
    """An open object. The fd is held, so a concurrent PUT (which renames a new
    file into place) or delete does not disturb a read in progress."""

    def __init__(self, mgr: DiskFileManager, fd: int, path: str, metadata: dict, size: int):
        self._mgr, self._fd, self.path = mgr, fd, path
        self.metadata = metadata
        self.size = size
        self.etag: str = metadata.get("etag", "")
        self.timestamp: str = metadata["timestamp"]

    def read_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) in chunks of at most chunk_size (end exclusive,
        Python-style; the HTTP layer converts inclusive Range headers).

        A full read of an object up to VERIFY_READS_UP_TO bytes also re-hashes
        the data; on a mismatch the file is quarantined and Quarantined is
        raised after the last chunk (the service reads such objects whole
        before answering, so it moves on to another replica). Bigger objects
        are streamed unhashed: md5 runs at ~700 MiB/s on one core, a third of
        what disk and loopback deliver, and a mismatch found after the last
        chunk could only abort a response already sent. Their bytes are
        checked by the auditor, and by clients against the ETag header
        (swiftclient and the AWS SDKs do), as in Swift."""
        end = self.size if end is None else end
        self._check_range(start, end)
        # Validated above, eagerly; the generator below runs only when iterated.
        return self._chunks(start, end)

    def file_span(self, start: int, end: int) -> tuple[int, int, int] | None:
        """(fd, offset, count) of bytes [start, end) for a server that sends
        them from the file itself (sendfile); None when read_range would
        re-hash them (a full read of a small object)."""
        self._check_range(start, end)
        return None if self._rehashed(start, end) else (self._fd, start, end - start)

    def _check_range(self, start, end) -> None:
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= self.size):
            raise BadRequest(f"range {start}-{end} is outside 0-{self.size}", field="range")

    def _rehashed(self, start: int, end: int) -> bool:
        return (start, end) == (0, self.size) and self.size <= VERIFY_READS_UP_TO

    def _chunks(self, start: int, end: int) -> Iterator[bytes]:
        md5 = hashlib.md5(usedforsecurity=False) if self._rehashed(start, end) else None
        for chunk in _iter_pread(self._fd, start, end, self._mgr.chunk_size):
            if md5:
                md5.update(chunk)
            yield chunk
        if md5 and md5.hexdigest() != self.etag:
            self._quarantine()

    def __iter__(self) -> Iterator[bytes]:
        return self.read_range()

    def verify(self) -> bool:
        """Re-hash the whole object against its etag (bounded memory)."""
        md5 = hashlib.md5(usedforsecurity=False)
        for chunk in _iter_pread(self._fd, 0, self.size, self._mgr.chunk_size):
            md5.update(chunk)
        return md5.hexdigest() == self.etag

    def _quarantine(self) -> None:
        try:
            self._mgr._quarantine_file(self.path)
        except FileNotFoundError:
            pass    # already replaced or quarantined
        raise Quarantined(f"{self.metadata.get('name')} failed its etag check and has "
                          "been quarantined", field="object")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
