"""ASGI's zero-copy send (common/http/zerocopy.py) on a real uvicorn server
with stackbox's settings, and FileSpanResponse with and without it."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest
import requests

from stackbox.common.http import zerocopy
from stackbox.common.http.serving import Server, new_event_loop, uvicorn_config
from stackbox.objectstore.streams import FileSpanResponse
from tests.conftest import free_port

DATA = os.urandom(5 * 1024 * 1024 + 3)


@pytest.fixture
def served(tmp_path):
    """A server whose app answers GET /<start>/<end> with those bytes of a
    file through FileSpanResponse; yields (base URL, the scopes it saw,
    the file descriptors it closed)."""
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    seen, closed = [], []

    async def app(scope, receive, send):
        seen.append(scope)
        _, start, end = scope["path"].split("/")
        start, end = int(start), int(end)
        fd = os.open(path, os.O_RDONLY)

        def chunks():
            yield from (DATA[i:min(i + 65536, end)] for i in range(start, end, 65536))
        response = FileSpanResponse((fd, start, end - start), chunks(),
                                    close=lambda: (os.close(fd), closed.append(fd)),
                                    status_code=200, headers={"Content-Length": str(end - start)})
        await response(scope, receive, send)

    port = free_port()
    config = uvicorn_config(app)
    config.host, config.port = "127.0.0.1", port
    server = Server(config, signals=())
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),),
                              daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", seen, closed
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()


def test_file_spans_are_sent_from_the_file(served):
    url, seen, closed = served
    for start, end in ((0, len(DATA)), (1, 2), (4096, 4 * 1024 * 1024 + 1), (7, 7)):
        with requests.get(f"{url}/{start}/{end}") as r:
            assert r.status_code == 200 and r.content == DATA[start:end]
    assert all(zerocopy.supported(s) for s in seen)
    _wait(lambda: len(closed) == 4)
    assert len(closed) == 4, "every file is closed after its response"


def _wait(done, seconds=10):
    deadline = time.time() + seconds
    while not done() and time.time() < deadline:
        time.sleep(0.05)


def test_a_client_that_hangs_up_mid_body_leaves_nothing_open(served):
    url, seen, closed = served
    port = int(url.rsplit(":", 1)[1])
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /0/{len(DATA)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536)
        s.close()
    _wait(lambda: len(closed) == 5)
    assert len(closed) == 5, "a file stayed open after its client left"
    with requests.get(f"{url}/0/{len(DATA)}") as r:       # and the server serves on
        assert r.content == DATA


def test_without_the_extension_the_bytes_are_streamed():
    """Under another server (no zero-copy send) the same response streams
    its chunks, then closes."""
    sent, closed = [], []
    response = FileSpanResponse((-1, 0, 6), iter([b"abc", b"def"]), close=lambda: closed.append(1),
                                status_code=206, headers={"Content-Length": "6"})

    async def send(message):
        sent.append(message)

    async def receive():
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http", "method": "GET", "headers": [],
                          "asgi": {"spec_version": "2.4"}}, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 206
    assert (b"content-length", b"6") in sent[0]["headers"]
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"abcdef" and closed == [1]
