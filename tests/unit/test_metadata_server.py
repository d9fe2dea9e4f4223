"""The metadata server over loopback: identity from the source address,
keep-alive, listings, IMDSv2, bad requests. 127.0.0.0/8 is all local, so
two client source addresses stand in for two instances."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

from stackbox.metadata.content import InstanceMetadata, Interface
from stackbox.metadata.server import MetadataServer, NetworkResolver

NET = "net-a"
A, B, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def _inst(uuid: str, ip: str, key: str) -> InstanceMetadata:
    return InstanceMetadata(
        uuid=uuid, name=f"vm-{ip}", hostname=f"vm-{ip}", project_id="p",
        public_keys=(("k", key),), user_data=f"ud-{uuid}".encode(),
        interfaces=(Interface(port_id=f"port-{uuid}", mac="fa:16:3e:00:00:01", network_id=NET,
                              ip=ip, cidr="127.0.0.0/8"),))


class Running:
    def __init__(self, server: MetadataServer, resolver):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.host, self.port = self.call(server.listen_tcp("lo", "127.0.0.1", 0, resolver))

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self):
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def conn(self, source: str) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10,
                                          source_address=(source, 0))


@pytest.fixture
def lookups():
    return []


@pytest.fixture
def running(lookups):
    instances = {(NET, A): _inst("uuid-a", A, "ssh-ed25519 AAAA a@x"),
                 (NET, B): _inst("uuid-b", B, "ssh-ed25519 BBBB b@x")}

    def lookup(network_id, ip):
        lookups.append((network_id, ip))
        return instances.get((network_id, ip))
    r = Running(MetadataServer(lookup, cache_seconds=30), NetworkResolver(NET))
    yield r
    r.stop()


def _get(conn, path, headers=None, method="GET"):
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def test_each_instance_gets_only_its_own_documents(running):
    for ip, uuid, key in ((A, "uuid-a", "AAAA"), (B, "uuid-b", "BBBB")):
        conn = running.conn(ip)
        status, body, resp = _get(conn, "/openstack/2018-08-27/meta_data.json")
        assert status == 200 and resp.getheader("Content-Type") == "application/json"
        md = json.loads(body)
        assert md["uuid"] == uuid and key in md["public_keys"]["k"]
        assert _get(conn, "/latest/user-data")[1] == f"ud-{uuid}".encode()
        assert _get(conn, "/latest/meta-data/local-ipv4")[1] == ip.encode()
        conn.close()


def test_headers_cannot_claim_another_identity(running):
    conn = running.conn(A)
    status, body, _ = _get(conn, "/openstack/latest/meta_data.json", headers={
        "X-Forwarded-For": B, "X-Instance-ID": "uuid-b", "X-Tenant-ID": "p"})
    assert status == 200 and json.loads(body)["uuid"] == "uuid-a"


def test_unknown_source_is_404_plain_text(running):
    conn = running.conn(STRANGER)
    status, body, resp = _get(conn, "/openstack")
    assert status == 404 and resp.getheader("Content-Type") == "text/plain"
    assert b"no instance" in body


def test_keep_alive_one_connection_one_lookup(running, lookups):
    conn = running.conn(A)
    sock_ids = set()
    for path in ("/openstack", "/openstack", "/openstack/2018-08-27/meta_data.json",
                 "/latest/meta-data/", "/latest/meta-data/public-keys/0/openssh-key"):
        status, _, resp = _get(conn, path)
        assert status == 200
        assert resp.getheader("Connection") is None
        sock_ids.add(id(conn.sock))
    assert len(sock_ids) == 1
    assert lookups == [(NET, A)]


def test_listing_and_missing_paths(running):
    conn = running.conn(A)
    assert _get(conn, "/openstack")[1].split(b"\n")[-1] == b"latest"
    assert _get(conn, "/latest/meta-data/public-keys/")[1] == b"0=k"
    assert _get(conn, "/latest/meta-data/nope")[0] == 404
    assert _get(conn, "/openstack/1999-01-01/meta_data.json")[0] == 404
    status, body, resp = _get(conn, "/openstack", method="HEAD")
    assert status == 200 and body == b"" and int(resp.getheader("Content-Length")) > 0


def test_post_is_405_with_allow(running):
    conn = running.conn(A)
    status, _, resp = _get(conn, "/openstack", method="POST")
    assert status == 405 and resp.getheader("Allow") == "GET, HEAD"


def test_imdsv2_token_flow(running):
    conn = running.conn(A)
    status, token, resp = _get(conn, "/latest/api/token", method="PUT",
                               headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200 and resp.getheader("X-aws-ec2-metadata-token-ttl-seconds") == "60"
    hdr = {"X-aws-ec2-metadata-token": token.decode()}
    assert _get(conn, "/latest/meta-data/instance-id", headers=hdr)[0] == 200
    assert _get(conn, "/latest/meta-data/instance-id",
                headers={"X-aws-ec2-metadata-token": "1.bad"})[0] == 401
    # B cannot use A's token
    other = running.conn(B)
    assert _get(other, "/latest/meta-data/instance-id", headers=hdr)[0] == 401
    # bad TTL names the header; a proxied PUT is refused
    status, body, _ = _get(conn, "/latest/api/token", method="PUT",
                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "0"})
    assert status == 400 and b"x-aws-ec2-metadata-token-ttl-seconds" in body
    assert _get(conn, "/latest/api/token", method="PUT", headers={
        "X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"})[0] == 403
    assert _get(conn, "/latest/api/token")[0] == 405


def test_require_token_mode():
    inst = _inst("uuid-a", A, "k")
    r = Running(MetadataServer(lambda n, ip: inst, require_token=True), NetworkResolver(NET))
    try:
        conn = r.conn(A)
        assert _get(conn, "/latest/meta-data/instance-id")[0] == 401
        token = _get(conn, "/latest/api/token", method="PUT",
                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"})[1]
        assert _get(conn, "/latest/meta-data/instance-id",
                    headers={"X-aws-ec2-metadata-token": token.decode()})[0] == 200
    finally:
        r.stop()


def _raw(running, data: bytes, source=A) -> bytes:
    s = socket.create_connection((running.host, running.port), timeout=10,
                                 source_address=(source, 0))
    s.sendall(data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def test_pipelined_requests_answered_in_order(running):
    out = _raw(running, b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: x\r\n\r\n"
                        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.index(A.encode()) < out.index(b"i-uuid")


@pytest.mark.parametrize("req,status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/2.0\r\n\r\n", b"505"),
    (b"GET / HTTP/1.1\r\nbroken header\r\n\r\n", b"400"),
    (b"PUT /latest/api/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
    (b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", b"413"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000, b"431"),
])
def test_bad_requests_get_a_status_and_close(running, req, status):
    out = _raw(running, req)
    assert out.startswith(b"HTTP/1.1 " + status), out[:100]
    assert b"Connection: close" in out


def test_http10_closes_unless_keep_alive(running):
    out = _raw(running, b"GET /openstack HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out


def test_expired_documents_are_refreshed_without_blocking(lookups):
    """After cache_seconds an open connection is answered from what it has
    while a lookup refreshes it; the next answers are the new documents, and
    an instance that is gone is 404 from then on."""
    versions = [_inst("uuid-old", A, "k"), _inst("uuid-new", A, "k"), None]

    def lookup(n, ip):
        lookups.append(ip)
        return versions[min(len(lookups), 3) - 1]
    r = Running(MetadataServer(lookup, cache_seconds=0.2), NetworkResolver(NET))

    def uuid_of(conn):
        status, body, _ = _get(conn, "/openstack/latest/meta_data.json")
        return json.loads(body)["uuid"] if status == 200 else status
    try:
        conn = r.conn(A)
        assert uuid_of(conn) == "uuid-old"
        assert uuid_of(conn) == "uuid-old" and lookups == [A]
        time.sleep(0.3)
        assert uuid_of(conn) == "uuid-old"            # stale answer, refresh started
        time.sleep(0.1)
        assert uuid_of(conn) == "uuid-new" and lookups == [A, A]
        time.sleep(0.3)
        uuid_of(conn)
        time.sleep(0.1)
        assert uuid_of(conn) == 404                   # the instance is gone
        assert uuid_of(r.conn(A)) == 404
    finally:
        r.stop()


def test_failing_lookup_is_500_not_a_hang():
    def lookup(n, ip):
        raise RuntimeError("database down")
    r = Running(MetadataServer(lookup), NetworkResolver(NET))
    try:
        status, _, _ = _get(r.conn(A), "/openstack")
        assert status == 500
    finally:
        r.stop()


def test_router_resolver_picks_network_by_subnet():
    res = NetworkResolver({"net-1": ["10.0.1.0/24"], "net-2": ["10.0.2.0/24", "10.0.3.0/24"]})
    assert res("10.0.1.9") == ("net-1",)
    assert res("10.0.3.9") == ("net-2",)
    assert res("10.0.9.9") == ()
    assert NetworkResolver("only")("192.0.2.1") == ("only",)
    assert NetworkResolver({"a": (), "b": ()})("192.0.2.1") == ("a", "b")


def test_networks_without_subnets_let_the_lookup_decide(lookups):
    """A router namespace plumbed by network id only: the instance lookup
    finds which of its networks has a port with the source address."""
    inst = _inst("uuid-b", B, "k")

    def lookup(network_id, ip):
        lookups.append((network_id, ip))
        return inst if (network_id, ip) == ("net-2", B) else None
    r = Running(MetadataServer(lookup), NetworkResolver({"net-1": (), "net-2": ()}))
    try:
        conn = r.conn(B)
        status, body, _ = _get(conn, "/openstack/latest/meta_data.json")
        assert status == 200 and json.loads(body)["uuid"] == "uuid-b"
        assert _get(conn, "/openstack")[0] == 200
        assert lookups == [("net-1", B), ("net-2", B)]
        token = _get(conn, "/latest/api/token", method="PUT",
                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"})[1]
        assert _get(conn, "/latest/meta-data/instance-id",
                    headers={"X-aws-ec2-metadata-token": token.decode()})[0] == 200
        assert _get(r.conn(A), "/openstack")[0] == 404
    finally:
        r.stop()


def test_remove_listener_stops_serving(running):
    conn = running.conn(A)
    assert _get(conn, "/openstack")[0] == 200
    running.call(running.server.remove_listener("lo"))
    with pytest.raises(OSError):
        socket.create_connection((running.host, running.port), timeout=2)


def test_require_token_leaves_the_openstack_tree_open():
    inst = _inst("uuid-a", A, "k")
    r = Running(MetadataServer(lambda n, ip: inst, require_token=True), NetworkResolver(NET))
    try:
        conn = r.conn(A)
        assert _get(conn, "/openstack/latest/meta_data.json")[0] == 200
        assert _get(conn, "/latest/meta-data/")[0] == 401
    finally:
        r.stop()


def test_a_client_that_never_reads_cannot_grow_the_server_buffer(running):
    """Pipeline far more answers than socket buffers hold, read nothing:
    the server stops reading instead of queueing megabytes, and catches up
    once the client reads."""
    one = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n\r\n"
    size = len(_raw(running, one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")))
    size -= len(b"Connection: close\r\n")
    n = 20000                       # ~20 MB of answers: more than kernel buffers hold
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: small window
    s.bind((A, 0))
    s.connect((running.host, running.port))
    sender = threading.Thread(target=s.sendall, args=(one * n,), daemon=True)
    sender.start()
    time.sleep(1.5)
    buffered = running.call(_write_buffer_sizes(running.server))
    assert max(buffered) < 1024 * 1024, buffered
    got = 0
    while got < n * size:
        chunk = s.recv(1 << 20)
        assert chunk
        got += len(chunk)
    assert got == n * size
    sender.join(10)
    s.close()


async def _write_buffer_sizes(server):
    return [c.transport.get_write_buffer_size() for c in server._conns] or [0]


@pytest.mark.parametrize("mode", ["inline", "coroutine"])
def test_lookup_on_the_loop(mode):
    instances = {(NET, A): _inst("uuid-a", A, "ka"), (NET, B): _inst("uuid-b", B, "kb")}
    if mode == "inline":
        server = MetadataServer(lambda n, ip: instances.get((n, ip)), lookup_in_thread=False)
    else:
        async def lookup(n, ip):
            return instances.get((n, ip))
        server = MetadataServer(lookup)
    r = Running(server, NetworkResolver(NET))
    try:
        for ip, uuid in ((A, "uuid-a"), (B, "uuid-b")):
            status, body, _ = _get(r.conn(ip), "/openstack/latest/meta_data.json")
            assert status == 200 and json.loads(body)["uuid"] == uuid
        assert _get(r.conn(STRANGER), "/openstack")[0] == 404
    finally:
        r.stop()


def test_refresh_of_an_unchanged_instance_reuses_the_documents(monkeypatch):
    from stackbox.metadata import content
    builds = []
    real = content.build
    monkeypatch.setattr(content, "build", lambda inst, **kw: builds.append(inst) or real(inst, **kw))
    inst = _inst("uuid-a", A, "k")
    r = Running(MetadataServer(lambda n, ip: inst, cache_seconds=0.1, lookup_in_thread=False),
                NetworkResolver(NET))
    try:
        conn = r.conn(A)
        first = _get(conn, "/openstack/latest/meta_data.json")[1]
        for _ in range(3):
            time.sleep(0.15)
            assert _get(conn, "/openstack/latest/meta_data.json")[1] == first
        assert r.server.stats["lookups"] >= 3 and len(builds) == 1
    finally:
        r.stop()


class _BatchSource:
    """A lookup with `many`: the first call waits at a gate so that the
    other first requests queue up behind it."""

    def __init__(self, *, fail: bool = False):
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()
        self.fail = fail

    def __call__(self, network_id, ip):
        raise AssertionError("queued lookups must go through many()")

    def many(self, network_id, ips):
        self.calls.append((network_id, list(ips)))
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("database down")
        return {ip: _inst(f"uuid-{ip}", ip, f"key-{ip}") for ip in ips if ip != STRANGER}


def _storm(source: _BatchSource, sources: list[str]) -> dict:
    r = Running(MetadataServer(source, lookup_workers=1), NetworkResolver(NET))
    results = {}

    def fetch(ip):
        results[ip] = _get(r.conn(ip), "/openstack/latest/meta_data.json")[:2]
    try:
        threads = [threading.Thread(target=fetch, args=(ip,)) for ip in sources]
        threads[0].start()
        deadline = time.monotonic() + 10
        while not source.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        for t in threads[1:]:
            t.start()
        while len(r.server._queue) < len(sources) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        source.gate.set()
        for t in threads:
            t.join(10)
    finally:
        r.stop()
    return results


def test_queued_lookups_go_to_the_source_in_batches():
    source = _BatchSource()
    guests = [f"127.0.1.{i}" for i in range(1, 21)]
    results = _storm(source, guests + [STRANGER])
    assert [len(ips) for _, ips in source.calls] == [1, 20]
    assert sorted(source.calls[1][1]) == sorted(guests[1:] + [STRANGER])
    for ip in guests:            # each source address gets its own instance
        status, body = results[ip]
        assert status == 200 and json.loads(body)["uuid"] == f"uuid-{ip}"
    assert results[STRANGER][0] == 404


def test_a_failing_batch_is_500_for_its_requests():
    results = _storm(_BatchSource(fail=True), [f"127.0.1.{i}" for i in range(1, 6)])
    assert {status for status, _ in results.values()} == {500}


def test_waiting_connections_are_accepted_together():
    """libuv (uvloop) accepts one connection per loop iteration: a storm's
    last connections then waited for thousands of iterations. The server
    accepts every waiting connection when the listener is readable."""
    from stackbox.metadata.server import new_event_loop

    async def scenario():
        server = MetadataServer(lambda n, ip: None)
        host, port = await server.listen_tcp("lo", "127.0.0.1", 0, NetworkResolver(NET))
        clients = [socket.create_connection((host, port)) for _ in range(50)]
        try:
            for _ in range(5):              # a few iterations, not fifty
                await asyncio.sleep(0)
            return len(server._conns)
        finally:
            for c in clients:
                c.close()
            await server.close()
    loop = new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) == 50
    finally:
        loop.close()


def test_batched_lookups_on_the_loop():
    class Source:
        calls: list = []

        def __call__(self, network_id, ip):
            raise AssertionError("queued lookups must go through many()")

        def many(self, network_id, ips):
            self.calls.append(list(ips))
            return {ip: _inst(f"uuid-{ip}", ip, "k") for ip in ips if ip != STRANGER}
    source = Source()
    r = Running(MetadataServer(source, lookup_in_thread=False), NetworkResolver(NET))
    try:
        for ip in (A, B):
            status, body, _ = _get(r.conn(ip), "/openstack/latest/meta_data.json")
            assert status == 200 and json.loads(body)["uuid"] == f"uuid-{ip}"
        assert _get(r.conn(STRANGER), "/openstack")[0] == 404
        assert source.calls == [[A], [B], [STRANGER]]
    finally:
        r.stop()


def test_waited_for_lookups_go_before_refreshes(monkeypatch):
    from stackbox.metadata import server as module
    monkeypatch.setattr(module, "LOOKUP_BATCH", 3)
    server = MetadataServer(lambda n, ip: None)
    server._refresh_queue.extend([(NET, "r1"), (NET, "r2")])
    server._queue.extend([(NET, "w1"), (NET, "w2")])
    assert server._next_batch() == [(NET, "w1"), (NET, "w2"), (NET, "r1")]
    assert server._next_batch() == [(NET, "r2")]


def test_first_lookups_arriving_together_share_a_batch_on_the_loop():
    calls = []

    class Source:
        def __call__(self, network_id, ip):
            raise AssertionError("queued lookups must go through many()")

        def many(self, network_id, ips):
            calls.append(sorted(ips))
            return {ip: _inst(f"uuid-{ip}", ip, "k") for ip in ips}
    r = Running(MetadataServer(Source(), lookup_in_thread=False), NetworkResolver(NET))
    try:
        socks = [socket.create_connection((r.host, r.port), source_address=(ip, 0))
                 for ip in (A, B)]
        for s in socks:
            s.sendall(b"GET /openstack HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.close()
        assert calls == [sorted([A, B])]
    finally:
        r.stop()
