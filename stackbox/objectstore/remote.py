"""The proxy's side of the object-server API (objectserver.py): the devices of
one other host behind the same methods as a local DiskFileManager (writer,
open, newest, delete), so storage.ObjectBackend places, writes and reads
replicas without knowing where a device is.

A host that cannot be reached, or answers 507, is an OSError here: to the
backend that is a failed device (a handoff takes the write, another replica
serves the read), exactly like a local disk error.
"""

from __future__ import annotations

import http.client
import json
from typing import Iterator
from urllib.parse import quote

from stackbox.common.errors import BadRequest, NotFound
from stackbox.objectstore.errors import OlderTimestamp, Quarantined
from stackbox.objectstore.objectserver import FRAME

CHUNK = 1024 * 1024


class RemoteError(OSError):
    """The object server failed the request (unreachable, 507, 5xx)."""


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"device host {address!r} is neither 'local' nor HOST:PORT of an "
                         f"object server (`stackbox object-server --bind HOST:PORT`)",
                         field="host")
    return host.strip("[]"), int(port)


class RemoteDevices:
    def __init__(self, address: str, token: str, *, timeout: float = 30.0):
        self.address = address
        self.host, self.port = parse_address(address)
        self.token = token
        self.timeout = timeout

    def _path(self, device: str, partition: int, account: str, container: str,
              obj: str) -> str:
        return "/" + "/".join(quote(str(p), safe="") for p in
                              (device, partition, account, container, obj))

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _request(self, method: str, path: str, headers: dict | None = None):
        conn = self._connect()
        try:
            conn.request(method, path, headers={"X-Backend-Token": self.token,
                                                **(headers or {})})
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return conn, resp

    # -- the DiskFileManager methods ObjectBackend and the replicator use --
    def writer(self, device, partition, account, container, obj, *,
               hashing: bool = True) -> "RemoteWriter":
        return RemoteWriter(self, self._path(device, partition, account, container, obj),
                            f"/{account}/{container}/{obj}")

    def open(self, device, partition, account, container, obj) -> "RemoteReader":
        path = self._path(device, partition, account, container, obj)
        conn, resp = self._request("GET", path, {"X-Backend-Range": "0-0"})
        try:
            body = resp.read()
        finally:
            conn.close()
        _raise_for(resp.status, body, self.address)
        (n,) = FRAME.unpack_from(body)
        return RemoteReader(self, path, json.loads(body[FRAME.size:FRAME.size + n]))

    def newest(self, device, partition, account, container, obj) -> tuple[str | None, bool]:
        conn, resp = self._request("HEAD", self._path(device, partition, account, container,
                                                      obj))
        conn.close()
        if resp.status not in (200, 404):
            _raise_for(resp.status, b"", self.address)
        ts = resp.getheader("X-Backend-Timestamp")
        return ts, bool(ts) and resp.status == 404

    def delete(self, device, partition, account, container, obj, timestamp) -> bool:
        conn, resp = self._request("DELETE", self._path(device, partition, account, container,
                                                        obj),
                                   {"X-Backend-Timestamp": str(timestamp)})
        try:
            body = resp.read()
        finally:
            conn.close()
        if resp.status in (204, 404):
            return resp.status == 204
        _raise_for(resp.status, body, self.address)
        return False


def _raise_for(status: int, body: bytes, address: str) -> None:
    if status < 300:
        return
    try:
        doc = json.loads(body)
        message = doc.get("message") or doc.get("error")
    except ValueError:
        doc, message = {}, body[:200].decode("utf-8", "replace")
    if status == 409 and "timestamp" in doc:
        raise OlderTimestamp(message, timestamp=doc["timestamp"], existing=doc["existing"])
    if status == 404:
        raise NotFound(message, field="object")
    if status == 400:
        raise BadRequest(message, field=doc.get("field") or "object")
    raise RemoteError(f"object server {address} answered {status}: {message}")


class RemoteWriter:
    """One replica's upload: a chunked PUT whose body is framed (data frames,
    the end frame, the metadata document), sent as the data arrives."""

    def __init__(self, devices: RemoteDevices, path: str, name: str):
        self.name = name
        self._address = devices.address
        self._conn = devices._connect()
        self._done = False
        try:
            self._conn.putrequest("PUT", path, skip_accept_encoding=True)
            self._conn.putheader("X-Backend-Token", devices.token)
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.endheaders()
        except BaseException:
            self._conn.close()
            raise

    def _send(self, *parts: bytes) -> None:
        size = sum(len(p) for p in parts)
        self._conn.send(b"%x\r\n" % size)
        for part in parts:
            self._conn.send(part)
        self._conn.send(b"\r\n")

    def write(self, chunk: bytes) -> int:
        if self._done:
            raise BadRequest("writer is already closed", field="body")
        for i in range(0, len(chunk), CHUNK):
            piece = chunk[i:i + CHUNK]
            self._send(FRAME.pack(len(piece)), piece)
        return len(chunk)

    def commit(self, metadata: dict, *, timestamp=None) -> dict:
        if self._done:
            raise BadRequest("writer is already closed", field="body")
        self._done = True
        try:
            doc = json.dumps({"metadata": metadata, "timestamp": str(timestamp)},
                             sort_keys=True, separators=(",", ":")).encode()
            self._send(FRAME.pack(0), doc)
            self._conn.send(b"0\r\n\r\n")
            resp = self._conn.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError) as exc:
            raise RemoteError(f"object server {self._address}: {exc}") from None
        finally:
            self._conn.close()
        _raise_for(resp.status, body, self._address)
        return json.loads(body)

    def abort(self) -> None:
        """Close without the end frame: the server discards the upload."""
        if not self._done:
            self._done = True
            self._conn.close()

    def __enter__(self) -> "RemoteWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class RemoteReader:
    """An object on another host: metadata now, bytes when read."""

    def __init__(self, devices: RemoteDevices, path: str, metadata: dict):
        self._devices, self._path = devices, path
        self.metadata = metadata
        self.size = int(metadata.get("size", 0))
        self.etag: str = metadata.get("etag", "")
        self.timestamp: str = metadata["timestamp"]

    def read_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else end
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= self.size):
            raise BadRequest(f"range {start}-{end} is outside 0-{self.size}", field="range")
        return self._chunks(start, end)

    def _chunks(self, start: int, end: int) -> Iterator[bytes]:
        try:
            conn, resp = self._devices._request("GET", self._path,
                                                {"X-Backend-Range": f"{start}-{end}"})
        except (http.client.HTTPException, OSError) as exc:
            raise RemoteError(f"object server {self._devices.address}: {exc}") from None
        try:
            if resp.status != 200:
                _raise_for(resp.status, resp.read(), self._devices.address)
            (n,) = FRAME.unpack(resp.read(FRAME.size))
            resp.read(n)
            left = end - start
            try:
                while left > 0:
                    chunk = resp.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk
                resp.read()        # the chunked terminator: absent if quarantined
            except (http.client.HTTPException, OSError):
                left = -1
            if left:
                raise Quarantined(f"{self.metadata.get('name')}: the replica on "
                                  f"{self._devices.address} failed while being read",
                                  field="object")
        finally:
            conn.close()

    def __iter__(self) -> Iterator[bytes]:
        return self.read_range()

    def close(self) -> None:
        pass        # nothing is held between requests

    def __enter__(self) -> "RemoteReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
