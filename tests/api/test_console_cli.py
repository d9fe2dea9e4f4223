"""Remote consoles end to end: `openstack console url show --novnc/--serial`
against a started stackbox, then the URLs used as a browser (noVNC) and a
serial client would, down to a real QEMU guest."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.consoles import Frames, rfb_handshake

DEMO = "stackbox-demo"


def wait_console_log(cloud, name, text, *, timeout=90) -> str:
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        out = cloud.openstack("console", "log", "show", name, cloud=DEMO, as_json=False).stdout
        if text in out:
            return out
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the console of {name}:\n{out[-2000:]}")


def novnc_websocket(page_url: str) -> str:
    """What noVNC's vnc_lite.html opens: ws://<its own host:port>/<path>."""
    parts = urlsplit(page_url)
    path = parse_qs(parts.query)["path"][0]
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/{path}"


@pytest.fixture
def server(cloud, unique):
    name = unique("con")
    cloud.openstack("server", "create", "--image", "tiny", "--flavor", "c1.tiny", "--nic",
                    "none", "--wait", name, cloud=DEMO, as_json=False)
    yield name
    cloud.openstack("server", "delete", "--wait", name, cloud=DEMO, as_json=False, check=False)


def test_novnc_and_serial_console_urls_open_the_vm(cloud, server):
    wait_console_log(cloud, server, "STACKBOX-TINY: ready")

    shown = cloud.openstack("console", "url", "show", "--novnc", server, cloud=DEMO)
    url = shown["url"]
    assert urlsplit(url).path == "/vnc_lite.html"
    page = requests.get(url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    ws_url = novnc_websocket(url)
    width, height, name = asyncio.run(asyncio.wait_for(rfb_handshake(ws_url), 60))
    assert name == f"QEMU ({server})" and width > 0 and height > 0
    with pytest.raises(InvalidStatus) as again:
        asyncio.run(asyncio.wait_for(rfb_handshake(ws_url), 60))
    assert again.value.response.status_code == 403

    serial = cloud.openstack("console", "url", "show", "--serial", server, cloud=DEMO)["url"]
    assert serial.startswith("ws://") and "/serial?token=" in serial

    async def login_prompt():
        async with connect(serial) as ws:
            out = Frames(ws)
            await ws.send("\r")
            await out.until(b"login:", 30)
            await ws.send(b"root\r")
            return await out.until(b"Password", 30)
    assert b"login:" in asyncio.run(asyncio.wait_for(login_prompt(), 90))


def test_console_of_a_stopped_server_is_refused(cloud, server):
    cloud.openstack("server", "stop", server, cloud=DEMO, as_json=False)
    deadline = time.monotonic() + 120
    while cloud.openstack("server", "show", server, cloud=DEMO)["status"] != "SHUTOFF":
        assert time.monotonic() < deadline, "server did not stop"
        time.sleep(1)
    proc = cloud.openstack("console", "url", "show", "--novnc", server, cloud=DEMO,
                           check=False, as_json=False)
    assert proc.returncode != 0
    assert "409" in proc.stderr or "not running" in proc.stderr, proc.stderr
