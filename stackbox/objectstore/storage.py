"""The proxy <-> object-server boundary: replicated object I/O over the ring.

`ObjectBackend` places replicas on the ring's devices. A device whose ring
entry says host "local" is a directory of this process (DiskFileManager); any
other host is "HOST:PORT" of an object server (objectserver.py), reached over
its internal HTTP API (PUT/GET/HEAD/DELETE on /<device>/<partition>/<a>/<c>/<o>
with X-Backend-* headers) through remote.RemoteDevices, which has the same
methods. The methods take and return only names, metadata dicts, timestamps and
byte chunks. Nothing here knows about accounts' listings, ACLs or the database.

Placement: the ring gives each name a partition and its primary devices. A
PUT streams to every primary (a handoff stands in for a primary whose device
is missing) and succeeds when a quorum of replicas is durably on disk. Local
replicas' commits (and a delete's tombstones) are generators of steps that
`together` advances a round at a time (write all, fdatasync all, rename all,
fsync all directories; the steps ask for their flushes, diskfile.Flush), so
a 3-replica PUT waits for about one replica's flushes, not three; the
runners of small writes (uring.py, steprunner.py) do the same across the
small PUTs and DELETEs of many requests. Remote replicas'
requests, and big chunks to several replicas, go in parallel through a small
pool. A GET opens the newest replica that has a good copy: a missing or
corrupt one (quarantined on the spot) is skipped.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, NoReturn

from stackbox.common.errors import BadRequest, NotFound, ServiceUnavailable, StackboxError
from stackbox.objectstore.diskfile import DiskFileManager, Peek, Reader, Writer, run_steps
from stackbox.objectstore.errors import InsufficientStorage, OlderTimestamp
from stackbox.objectstore.loopreads import must_not_block
from stackbox.objectstore.objectserver import backend_token
from stackbox.objectstore.remote import RemoteDevices, parse_address
from stackbox.objectstore.ring import Device, Ring


PARALLEL_WRITE = 256 * 1024    # smaller chunks are copied to each replica in turn


def quorum(replicas: int) -> int:
    """Swift's quorum_size for replicated policies: a strict majority."""
    return replicas // 2 + 1


@dataclass(frozen=True)
class Node:
    device: Device
    manager: DiskFileManager | RemoteDevices
    name: str          # directory name under the manager's root

    @property
    def remote(self) -> bool:
        return isinstance(self.manager, RemoteDevices)


class ObjectBackend:
    """Replicated object files on the ring's devices (the backend API)."""

    def __init__(self, ring: Ring, devices_root: str, *, chunk_size: int = 64 * 1024):
        self.ring = ring
        self.devices_root = os.path.abspath(devices_root)
        self.chunk_size = chunk_size
        self._managers: dict[str, DiskFileManager] = {}
        self._remotes: dict[str, RemoteDevices] = {}
        self._nodes: dict[Device, Node] = {}
        for dev in ring.devices.values():
            if dev.host != "local":
                parse_address(dev.host)     # a bad host fails at start-up, not on a PUT
        # two of three replicas per request run here: enough for 16 at once
        self._pool = ThreadPoolExecutor(max_workers=max(8, 16 * (ring.replicas - 1)),
                                        thread_name_prefix="sbx-objio")
        self._lock = threading.Lock()

    @property
    def all_local(self) -> bool:
        """Whether every device is a directory of this host: then a small
        write is only short file-system calls (no request to wait for)."""
        return all(d.host == "local" for d in self.ring.devices.values())

    @property
    def replicas(self) -> int:
        return self.ring.replicas

    def _node(self, dev: Device) -> Node:
        node = self._nodes.get(dev)      # the ring is fixed for the backend's life
        if node is None:
            node = self._nodes[dev] = self._new_node(dev)
        return node

    def _new_node(self, dev: Device) -> Node:
        if dev.host != "local":
            with self._lock:
                remote = self._remotes.get(dev.host)
                if remote is None:
                    remote = self._remotes[dev.host] = RemoteDevices(
                        dev.host, backend_token(self.ring))
            return Node(dev, remote, dev.path)
        # A relative device path is under the devices root; an absolute one is
        # an operator's mount point.
        path = os.path.join(self.devices_root, dev.path)
        root, name = os.path.split(os.path.normpath(path))
        with self._lock:
            mgr = self._managers.get(root)
            if mgr is None:
                mgr = self._managers[root] = DiskFileManager(
                    root, hash_prefix=self.ring.hash_prefix, hash_suffix=self.ring.hash_suffix,
                    chunk_size=self.chunk_size)
        return Node(dev, mgr, name)

    def fan_out(self, fn, items: list) -> list:
        """[fn(x) for x in items], the first in this thread and the rest in
        the pool at the same time. fn must not raise: return the error."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        futures = [self._pool.submit(fn, x) for x in items[1:]]
        first = fn(items[0])
        return [first] + [f.result() for f in futures]

    def nodes(self, account: str, container: str, obj: str) -> tuple[int, list[Node], Iterator[Node]]:
        part = self.ring.partition(account, container, obj)
        primaries = [self._node(d) for d in self.ring.primary_devices(part)]
        handoffs = (self._node(d) for d in self.ring.handoff_devices(part))
        return part, primaries, handoffs

    # -- writes --
    def writer(self, account: str, container: str, obj: str) -> "ReplicatedWriter":
        part, primaries, handoffs = self.nodes(account, container, obj)
        writers: list[Writer] = []
        for node in primaries:
            w = self._open_writer(node, part, account, container, obj)
            while w is None:
                spare = next(handoffs, None)
                if spare is None:
                    break
                w = self._open_writer(spare, part, account, container, obj)
            if w is not None:
                writers.append(w)
        need = quorum(len(primaries))
        if len(writers) < need:
            for w in writers:
                w.abort()
            raise InsufficientStorage(f"only {len(writers)} of {len(primaries)} devices are "
                                      f"available for {account}/{container}/{obj}; "
                                      f"{need} are needed", field="device")
        return ReplicatedWriter(self, writers, need)

    @staticmethod
    def _open_writer(node: Node, part, account, container, obj) -> Writer | None:
        try:
            return node.manager.writer(node.name, part, account, container, obj,
                                       hashing=False)
        except (ServiceUnavailable, OSError):
            return None

    def delete(self, account: str, container: str, obj: str, timestamp: str) -> bool:
        """Tombstones on every replica; whether any replica had the object."""
        return run_steps(self.delete_steps(account, container, obj, timestamp))

    def delete_steps(self, account: str, container: str, obj: str, timestamp: str):
        """delete() as a generator of steps (see together): local replicas'
        tombstones step by step; remote ones all in the first step, a
        request each, in parallel."""
        part, primaries, _ = self.nodes(account, container, obj)

        def outcome(r):
            if isinstance(r, OlderTimestamp):
                return False            # a newer version is there: nothing to delete
            return None if isinstance(r, Exception) else r

        def one(node: Node):
            try:
                return node.manager.delete(node.name, part, account, container, obj, timestamp)
            except (OlderTimestamp, ServiceUnavailable, OSError) as exc:
                return outcome(exc)
        if not any(node.remote for node in primaries):
            results = [outcome(r) for r in (yield from together(
                [node.manager.delete_steps(node.name, part, account, container, obj,
                                           timestamp, together=True) for node in primaries],
                (OlderTimestamp, ServiceUnavailable, OSError)))]
        else:
            results = self.fan_out(one, primaries)
        done = [r for r in results if r is not None]
        if len(done) < quorum(len(primaries)):
            raise InsufficientStorage("too few devices available to record the delete",
                                      field="device")
        return any(done)

    # -- reads --
    def open(self, account: str, container: str, obj: str) -> Reader:
        """The newest good replica among the primaries (then handoffs), so a
        replica that missed an overwrite or a delete never serves stale data.
        Local devices are compared by a directory listing each (peek) and only
        the newest file is opened; remote ones by opening them."""
        part, primaries, handoffs = self.nodes(account, container, obj)
        nodes = list(primaries) + list(handoffs)[: self.replicas]
        if any(node.remote for node in nodes):
            return self._open_each(account, container, obj, part, primaries, nodes)
        failures = 0
        peeks: list[tuple[Peek, Node]] = []
        for node in nodes:
            try:
                seen = node.manager.peek(node.name, part, account, container, obj)
            except (ServiceUnavailable, OSError, StackboxError):
                failures += 1
                continue
            if seen is not None:
                peeks.append((seen, node))
        peeks.sort(key=lambda p: p[0][:2], reverse=True)
        for seen, node in peeks:
            if seen.tombstone:     # deleted: older replicas must not bring it back
                raise NotFound(f"object {container}/{obj} not found", field="object")
            try:
                return node.manager.open(node.name, part, account, container, obj,
                                         peeked=seen)
            except NotFound:
                continue        # deleted or replaced meanwhile: the next replica
            except (ServiceUnavailable, OSError, StackboxError):
                failures += 1   # unreadable (quarantined): the next replica
        return self._not_found(container, obj, failures, primaries)

    def _open_each(self, account, container, obj, part, primaries, nodes) -> Reader:
        """open() with remote devices: each replica's metadata is read (an
        HTTP request) and the newest wins."""
        must_not_block()        # HTTP requests, not page-cache reads
        best: Reader | None = None
        failures = 0
        for node in nodes:
            try:
                r = node.manager.open(node.name, part, account, container, obj)
            except NotFound:
                continue
            except (ServiceUnavailable, OSError, StackboxError):
                failures += 1
                continue
            if best is None or r.timestamp > best.timestamp:
                if best is not None:
                    best.close()
                best = r
            else:
                r.close()
        return best or self._not_found(container, obj, failures, primaries)

    @staticmethod
    def _not_found(container, obj, failures, primaries) -> NoReturn:
        if failures and failures >= len(primaries):
            raise ServiceUnavailable("no device holding this object is available",
                                     field="device")
        raise NotFound(f"object {container}/{obj} not found", field="object")

    def head(self, account: str, container: str, obj: str) -> dict:
        with self.open(account, container, obj) as r:
            return dict(r.metadata)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def together(steps: list, errors: tuple):
    """Advance step generators (Writer.commit_steps, DiskFileManager.
    delete_steps) one step each in turn until all end: write all, then ask
    for all their files' fdatasyncs; rename all, then ask for all their
    directories' fsyncs (Writer._install_steps). A round's flushes are yielded
    as one tuple (diskfile.Flush) and each generator gets its own answers:
    flushed one after the other in one thread, the first commits the journal
    for every one of them, as threads flushing at once would get, without a
    thread each. Returns each one's return value, or the exception in
    `errors` it raised (it has cleaned up after itself); any other
    exception, or closing this generator, closes the rest, which then abort."""
    results: list = [None] * len(steps)
    live = dict(enumerate(steps))
    answers: dict = {}
    try:
        while live:
            asked: dict = {}
            for i, step in list(live.items()):
                try:
                    asked[i] = tuple(step.send(answers.get(i)) or ())
                except StopIteration as done:
                    results[i] = done.value
                    del live[i]
                except errors as exc:
                    results[i] = exc
                    del live[i]
            if live:
                got = yield tuple(f for i in live for f in asked[i])
                answers, at = {}, 0
                for i in live:
                    # driven by next(), no answers: each step's ask() flushes itself
                    answers[i] = None if got is None else got[at:at + len(asked[i])]
                    at += len(asked[i])
    finally:
        for step in live.values():
            step.close()
    return results


class ReplicatedWriter:
    """One upload going to several replicas. write() sends each chunk to every
    replica (page-cache writes, cheap); commit() makes them durable together
    (local replicas step by step in this thread, remote ones in parallel)
    and needs a quorum. A writer that fails mid-way is dropped; the
    upload fails only when fewer than a quorum remain."""

    def __init__(self, backend: ObjectBackend, writers: list[Writer], need: int):
        self._backend = backend
        self._writers = writers
        self._need = need
        self.size = 0
        # one md5 for all replicas (the disk writers do not hash)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._failure = ""

    def write(self, chunk: bytes) -> None:
        def one(w: Writer):
            try:
                w.write(chunk)
                return True
            except OSError as exc:
                self._failure = exc.strerror or str(exc)
                w.abort()
                return False
        if len(chunk) >= PARALLEL_WRITE:
            # big chunks: copy into the page cache of each replica in the
            # pool while this thread hashes (write() and md5 release the
            # GIL); with one replica too, as the copy can cost more than md5
            futures = [self._backend._pool.submit(one, w) for w in self._writers]
            self._md5.update(chunk)
            ok = [f.result() for f in futures]
        else:
            ok = [one(w) for w in self._writers]
            self._md5.update(chunk)
        alive = [w for w, good in zip(self._writers, ok) if good]
        self._writers = alive
        self.size += len(chunk)
        if len(alive) < self._need:
            self.abort()
            raise InsufficientStorage(f"{len(alive)} of the {self._need} replicas needed "
                                      f"could be written: {self._failure}", field="device")

    @property
    def local(self) -> bool:
        """Whether every replica is a local disk (no request to wait for)."""
        return all(isinstance(w, Writer) for w in self._writers)

    def commit(self, metadata: dict, timestamp: str) -> dict:
        """Raises BadRequest(field="etag") when metadata carries an etag that
        the data does not have (a client's ETag / Content-MD5)."""
        return run_steps(self.commit_steps(metadata, timestamp))

    def commit_steps(self, metadata: dict, timestamp: str):
        """commit() as a generator of steps (see together): local replicas
        step by step; remote ones all in the first step, in parallel."""
        etag = self._md5.hexdigest()
        claimed = metadata.get("etag")
        if claimed is not None and str(claimed).strip('"').lower() != etag:
            self.abort()
            raise BadRequest(f"etag {claimed} does not match the data ({etag})", field="etag")
        metadata = dict(metadata, etag=etag)

        if self.local:
            results = yield from together([w.commit_steps(metadata, timestamp=timestamp,
                                                           together=True)
                                            for w in self._writers],
                                           (OlderTimestamp, OSError))
        else:
            def one(w):
                try:
                    return w.commit(metadata, timestamp=timestamp)
                except (OlderTimestamp, OSError) as exc:
                    return exc
            # Remote replicas: each commit is a request, in parallel so a PUT
            # waits for the slowest replica instead of the sum.
            results = self._backend.fan_out(one, self._writers)
        good = [r for r in results if isinstance(r, dict)]
        if good and len(good) >= self._need:
            return good[0]
        errors = [r for r in results if not isinstance(r, dict)]
        for r in errors:
            if isinstance(r, OlderTimestamp):
                raise r
        for r in results:
            if isinstance(r, StackboxError):
                raise r
        raise InsufficientStorage(f"only {len(good)} replicas were written, {self._need} "
                                  f"needed: {errors[:1]}", field="device")

    def abort(self) -> None:
        for w in self._writers:
            w.abort()
