"""The console proxy under uvicorn on loopback, driven with the `websockets`
client: against a real QEMU (VNC on a unix socket, serial on a unix-socket
chardev) and against a plain unix-socket peer for the close/refuse rules."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stackbox.compute.consoleproxy import build_console_app, console_url, find_novnc
from stackbox.compute.consoletokens import ConsoleTokens, MemoryTokenBackend, hash_token
from stackbox.compute.drivers.base import ConsoleEndpoint
from tests.consoles import Frames, rfb_handshake
from tests.e2e.guests import BOOT_TIMEOUT, MARK, QEMU, Guest, die_with_parent

UUID = "0d1e7c3a-5b7e-4a4e-8f0e-3c1d2b9a6f10"


class Proxy:
    """The proxy app on a free loopback port, in a thread with its own loop."""

    def __init__(self, novnc_dir: Path | None, resolve=None):
        self.tokens = ConsoleTokens(MemoryTokenBackend(), ttl=600)
        self.app = build_console_app(resolve or self.tokens.resolver(), novnc_dir=novnc_dir)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                ws_per_message_deflate=False)  # as stackbox/server.py
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def issue(self, kind: str, endpoint: ConsoleEndpoint) -> str:
        return self.tokens.issue(UUID, kind, lambda uuid, k: endpoint)

    def ws_url(self, kind: str, token: str) -> str:
        """The websocket noVNC / a serial client would open for this token."""
        if kind == "vnc":
            return f"ws://127.0.0.1:{self.port}/?token={token}"
        return console_url(self.base, "serial", token)


@pytest.fixture
def proxy():
    p = Proxy(find_novnc())
    p.start()
    yield p
    p.stop()


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --- a real QEMU ------------------------------------------------------------------

@pytest.fixture
def qemu_guest(tiny_image, workdir, request):
    """The tiny guest with VNC and its first serial port on unix sockets, as
    the QEMU driver exposes them. The serial chardev also logs to a file so
    boot markers can be awaited without a client attached."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    name = f"sbx-con-{uuid.uuid4().hex[:6]}"
    vnc, serial, log = workdir / "vnc.sock", workdir / "serial.sock", workdir / "serial.log"
    argv = [QEMU, "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config",
            "-name", name, "-display", "none", "-monitor", "none", "-vga", "std",
            "-vnc", f"unix:{vnc}",
            "-chardev", f"socket,id=ser0,path={serial},server=on,wait=off,logfile={log}",
            "-serial", "chardev:ser0", "-nic", "none",
            "-kernel", str(tiny_image.kernel), "-initrd", str(tiny_image.initramfs),
            "-append", tiny_image.cmdline]
    guest = Guest(argv, log)
    request.addfinalizer(guest.kill)
    guest.name, guest.vnc, guest.serial = name, vnc, serial
    deadline = time.monotonic() + 20
    while not (vnc.exists() and serial.exists()):
        assert guest.proc.poll() is None, guest.proc.stdout.read().decode(errors="replace")
        assert time.monotonic() < deadline, "QEMU made no console sockets"
        time.sleep(0.1)
    return guest


@pytest.mark.e2e
def test_vnc_of_a_real_qemu_through_the_proxy(proxy, qemu_guest):
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=qemu_guest.vnc))
    width, height, name = run(rfb_handshake(proxy.ws_url("vnc", token)))
    assert name == f"QEMU ({qemu_guest.name})"  # our QEMU, not some other VNC server
    assert width >= 320 and height >= 200

    # the same URL a second time: refused before the upgrade, with the reason
    with pytest.raises(InvalidStatus) as refused:
        run(rfb_handshake(proxy.ws_url("vnc", token)))
    assert refused.value.response.status_code == 403
    assert b"already used" in refused.value.response.body

    # noVNC (no subprotocol offered) gets the same console with a fresh token
    async def banner(url):
        async with connect(url) as ws:
            assert ws.subprotocol is None
            return await Frames(ws).read(12)
    fresh = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=qemu_guest.vnc))
    assert run(banner(proxy.ws_url("vnc", fresh))) == b"RFB 003.008\n"


@pytest.mark.e2e
def test_serial_console_of_a_real_qemu(proxy, qemu_guest):
    qemu_guest.wait_for(f"{MARK} ready", BOOT_TIMEOUT)
    token = proxy.issue("serial", ConsoleEndpoint(kind="serial", unix_path=qemu_guest.serial))

    async def session():
        async with connect(proxy.ws_url("serial", token)) as ws:
            out = Frames(ws)
            await ws.send("\r")                  # text frame: getty prints its prompt
            await out.until(b"login:", 30)
            await ws.send(b"root\r")             # binary frame: login asks for a password
            return await out.until(b"Password", 30)
    seen = run(session())
    assert b"tiny login:" in seen, seen


CHROMIUM = shutil.which("chromium")


class Browser:
    """Headless Chromium showing one page, read through the DevTools protocol
    (virtual-time tricks like --dump-dom give up before a slow TCG guest answers)."""

    def __init__(self, url: str, profile: Path):
        self.profile = profile
        self.proc = subprocess.Popen(
            ["timeout", "--signal=KILL", "240", CHROMIUM, "--headless", "--no-sandbox",
             "--disable-gpu", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent)

    def page_ws(self) -> str:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while True:
            if active.exists() and len(active.read_text().splitlines()) >= 2:
                port = int(active.read_text().splitlines()[0])
                pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list",
                                                 timeout=10).json() if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            assert time.monotonic() < deadline, "Chromium's DevTools did not come up"
            time.sleep(0.2)

    async def wait_status(self, done, timeout: float) -> str:
        """Poll noVNC's status line until done(status) or timeout; return it."""
        async with connect(self.page_ws(), max_size=2 ** 24) as cdp:
            status, deadline = "", time.monotonic() + timeout
            for n in range(1, 10 ** 6):
                await cdp.send(json.dumps({"id": n, "method": "Runtime.evaluate", "params": {
                    "expression": "(document.getElementById('status')||{}).textContent",
                    "returnByValue": True}}))
                while True:
                    reply = json.loads(await cdp.recv())
                    if reply.get("id") == n:
                        break
                status = reply.get("result", {}).get("result", {}).get("value") or ""
                if done(status) or time.monotonic() > deadline:
                    return status
                await asyncio.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def novnc_status(url: str, profile: Path, done) -> str:
    browser = Browser(url, profile)
    try:
        return run(browser.wait_status(done, 90), timeout=180)
    finally:
        browser.close()


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_novnc_page_in_a_browser_connects_to_the_vm(proxy, qemu_guest, workdir):
    if proxy.app.novnc_dir is None:
        pytest.skip("noVNC not installed (make novnc)")
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=qemu_guest.vnc))
    url = console_url(proxy.base, "vnc", token)
    connected = novnc_status(url, workdir / "chromium-1", lambda s: s.startswith("Connected"))
    assert connected == f"Connected to QEMU ({qemu_guest.name})"
    # the same URL again: the browser is refused and noVNC says so
    again = novnc_status(url, workdir / "chromium-2", lambda s: s not in ("", "Loading", "Connecting"))
    assert again.startswith("Something went wrong"), again


# --- the proxy's rules, against a plain unix-socket peer ---------------------------

class Peer:
    """A unix-socket server standing in for a console: records what it
    receives, greets each connection, and can hang up."""

    def __init__(self, path: Path):
        self.path = path
        self.received = b""
        self.eof = threading.Event()
        self.conns: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.conns.append(conn)
        try:
            conn.sendall(b"hello from the console\n")
            while data := conn.recv(65536):
                self.received += data
        except OSError:
            pass  # the proxy hung up first (a test that is done with it)
        self.eof.set()

    def hang_up(self):
        for conn in self.conns:
            conn.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path / "console.sock")
    yield p
    p.close()


def test_bytes_flow_both_ways_and_client_close_reaches_the_console(proxy, peer):
    token = proxy.issue("serial", ConsoleEndpoint(kind="serial", unix_path=peer.path))

    async def session():
        async with connect(proxy.ws_url("serial", token)) as ws:
            assert await Frames(ws).until(b"hello from the console\n", 10)
            big = os.urandom(300_000)      # larger than one chunk: flow control
            await ws.send(big)
            await ws.send("echo hi\n")
            return big
    big = run(session())
    assert peer.eof.wait(10), "console side not closed after the client left"
    assert peer.received == big + b"echo hi\n"


def test_console_hang_up_closes_the_websocket_cleanly(proxy, peer):
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=peer.path))

    async def session():
        async with connect(proxy.ws_url("vnc", token)) as ws:
            await Frames(ws).until(b"hello", 10)
            peer.hang_up()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            return closed.value.rcvd
    rcvd = run(session())
    assert (rcvd.code, rcvd.reason) == (1000, "console closed")


def test_text_frames_are_refused_on_vnc(proxy, peer):
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=peer.path))

    async def session():
        async with connect(proxy.ws_url("vnc", token)) as ws:
            await ws.send("RFB 003.008\n")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            return closed.value.rcvd
    rcvd = run(session())
    assert rcvd.code == 1003 and "binary" in rcvd.reason


def refusal(url: str, **kwargs) -> tuple[int, str]:
    async def attempt():
        async with connect(url, **kwargs):
            pass
    with pytest.raises(InvalidStatus) as refused:
        run(attempt())
    response = refused.value.response
    return response.status_code, response.body.decode()


def test_bad_requests_are_refused_before_the_upgrade(proxy, peer, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    endpoint = ConsoleEndpoint(kind="vnc", unix_path=peer.path)
    token = proxy.issue("vnc", endpoint)
    ws = f"ws://127.0.0.1:{proxy.port}"

    assert refusal(f"{ws}/nope?token={token}")[0] == 404
    status, body = refusal(f"{ws}/?token={token}", origin="http://evil.example")
    assert status == 403 and "Origin" in body
    status, body = refusal(f"{ws}/?token={token}", subprotocols=["base64"])
    assert status == 400 and "binary" in body
    # none of those used the token up
    assert run(_banner(f"{ws}/?token={token}")) == b"hello"

    assert refusal(f"{ws}/?token=made-up")[0] == 403
    status, body = refusal(f"{ws}/")
    assert status == 403 and "no console token" in body
    status, body = refusal(f"{ws}/serial?token={proxy.issue('vnc', endpoint)}")
    assert status == 403 and "vnc console" in body

    gone = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=tmp_path / "gone.sock"))
    status, body = refusal(f"{ws}/?token={gone}")
    assert status == 502 and "not reachable" in body

    # uvicorn's own lines name each websocket path: tokens are redacted there,
    # and a refusal is not logged as an application error
    assert "token=<redacted>" in caplog.text
    assert token not in caplog.text and gone not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_expired_token_and_broken_token_store(proxy, peer, monkeypatch):
    endpoint = ConsoleEndpoint(kind="vnc", unix_path=peer.path)
    token = proxy.issue("vnc", endpoint)
    monkeypatch.setattr(proxy.tokens, "clock", lambda: time.time() + 601)
    status, body = refusal(proxy.ws_url("vnc", token))
    assert status == 403 and "expired" in body

    def store_down(token_hash, now):
        raise ConnectionError("database unreachable")
    monkeypatch.setattr(proxy.tokens.backend, "claim", store_down)
    status, body = refusal(proxy.ws_url("vnc", token))
    assert status == 503 and "try again" in body


def test_a_full_proxy_refuses_without_using_the_token(proxy, peer):
    proxy.app.max_connections = 1
    first = proxy.issue("serial", ConsoleEndpoint(kind="serial", unix_path=peer.path))
    second = proxy.issue("serial", ConsoleEndpoint(kind="serial", unix_path=peer.path))

    async def session():
        async with connect(proxy.ws_url("serial", first)) as ws:
            await Frames(ws).until(b"hello", 10)
            try:
                async with connect(proxy.ws_url("serial", second)):
                    pass
            except InvalidStatus as e:
                return e.response.status_code, e.response.body.decode()
    status, body = run(session())
    assert status == 503 and "too many open consoles" in body
    assert proxy.tokens.backend.get(hash_token(second)).used_at is None


def test_same_origin_and_cookie_token_are_accepted(proxy, peer):
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=peer.path))
    url = f"ws://127.0.0.1:{proxy.port}/websockify"
    assert run(_banner(url, origin=f"http://127.0.0.1:{proxy.port}",
                       additional_headers={"Cookie": f"token={token}"})) == b"hello"


async def _banner(url: str, **kwargs) -> bytes:
    async with connect(url, **kwargs) as ws:
        return await Frames(ws).read(5)


# --- the noVNC web client ----------------------------------------------------------

def test_novnc_pages_and_scripts_are_served(proxy):
    if proxy.app.novnc_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("noVNC not installed: `make novnc` must run before the tests")
        pytest.skip("noVNC not installed (make novnc)")
    token = proxy.issue("vnc", ConsoleEndpoint(kind="vnc", unix_path=Path("/nonexistent")))
    page = requests.get(console_url(proxy.base, "vnc", token), timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "readQueryVariable('path'" in page.text  # the page builds ws://host:port/<path>
    for script in ("core/rfb.js", "core/websock.js", "app/ui.js"):
        r = requests.get(f"{proxy.base}/{script}", timeout=10)
        assert r.status_code == 200, script
        assert "javascript" in r.headers["content-type"], r.headers["content-type"]
    assert requests.get(f"{proxy.base}/vnc.html", timeout=10).status_code == 200
    raw = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    raw.request("GET", "/../../../etc/passwd")   # sent as is, unlike requests
    assert raw.getresponse().status == 404
    raw.close()
    assert requests.get(f"{proxy.base}/missing.js", timeout=10).status_code == 404
    assert requests.post(f"{proxy.base}/vnc_lite.html", timeout=10).status_code == 405


def test_without_novnc_pages_say_how_to_install_it():
    p = Proxy(None)
    p.start()
    try:
        r = requests.get(f"{p.base}/vnc_lite.html", timeout=10)
        assert r.status_code == 503 and "make novnc" in r.text
    finally:
        p.stop()
