#!/usr/bin/env python3
"""Console proxy benchmark: stackbox's proxy vs. websockify (the engine of
Nova's nova-novncproxy and nova-serialproxy), same client, same console
stand-in, same machine, interleaved rounds, medians.

The "console" is a unix-socket server in this process that, per connection,
streams N bytes to the client (download), swallows N bytes (upload) or echoes
(round trip). Each proxy forwards a websocket on loopback to it.

Figures per target:
  download MiB/s    console -> websocket client, --mib MiB in one connection
  upload MiB/s      websocket client -> console, 64 KiB binary frames
  echo p50/p99 us   64-byte message round trip on an open connection
  connect ms        websocket open (token check, console connect) to first echo
  PSS MiB           proxy process tree, idle and with --idle-conns open consoles

    .venv/bin/python bench/console/run.py [--rounds 3] [--mib 64] [--json out.json]

websockify comes from Debian (`apt-get install websockify`); without it only
stackbox's figures are printed. Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BLOCK = b"\xa5" * (256 * 1024)


# --- the console stand-in -------------------------------------------------------------

class Console:
    """Unix-socket server: first byte picks the mode (D: send n bytes, U: read
    n bytes then answer K, E: echo until EOF)."""

    def __init__(self, path: Path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(512)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _serve(self, conn):
        try:
            mode = self._recv_exact(conn, 1)
            if mode == b"D":
                n = struct.unpack(">Q", self._recv_exact(conn, 8))[0]
                while n > 0:
                    part = BLOCK[:min(n, len(BLOCK))]
                    conn.sendall(part)
                    n -= len(part)
            elif mode == b"U":
                n = struct.unpack(">Q", self._recv_exact(conn, 8))[0]
                while n > 0:
                    got = conn.recv(min(n, 1 << 20))
                    if not got:
                        raise EOFError
                    n -= len(got)
                conn.sendall(b"K")
            elif mode == b"E":
                while data := conn.recv(65536):
                    conn.sendall(data)
            while conn.recv(65536):   # wait for the client to go
                pass
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()


# --- the proxies ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("proxy did not listen")


class Target:
    name = ""

    def __init__(self, console: Path, tokens: int):
        self.port = free_port()
        self.proc = self.start(console, tokens)

    def url(self) -> str:
        raise NotImplementedError

    def pss_mib(self) -> float:
        """Proportional set size of the proxy and all its descendants
        (websockify forks per client; PSS splits shared pages fairly)."""
        pids, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            pids.add(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Stackbox(Target):
    name = "stackbox"
    extra: list[str] = []

    def start(self, console, tokens):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve.py"), "--unix", str(console),
             "--port", str(self.port), "--tokens", str(tokens), *self.extra],
            stdout=subprocess.PIPE, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.tokens = json.loads(proc.stdout.readline())
        return proc

    def url(self):
        return f"ws://127.0.0.1:{self.port}/serial?token={self.tokens.pop()}"


class StackboxDeflate(Stackbox):
    """The same proxy with uvicorn's default permessage-deflate, which the
    client (like browsers) then negotiates."""
    name = "sbx+deflate"
    extra = ["--deflate"]


class Websockify(Target):
    name = "websockify"
    binary = shutil.which("websockify")

    def start(self, console, tokens):
        proc = subprocess.Popen(
            [self.binary, "--unix-target", str(console), f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, proc)
        return proc

    def url(self):
        return f"ws://127.0.0.1:{self.port}/"


# --- measurements ---------------------------------------------------------------------

async def download(target, nbytes) -> float:
    async with connect(target.url(), subprotocols=["binary"], max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(b"D" + struct.pack(">Q", nbytes))
        got = 0
        while got < nbytes:
            got += len(await ws.recv())
        return nbytes / (time.perf_counter() - started) / 2 ** 20


async def upload(target, nbytes) -> float:
    frame = b"\x5a" * 65536
    async with connect(target.url(), subprotocols=["binary"]) as ws:
        started = time.perf_counter()
        await ws.send(b"U" + struct.pack(">Q", nbytes))
        sent = 0
        while sent < nbytes:
            part = frame[:min(len(frame), nbytes - sent)]
            await ws.send(part)
            sent += len(part)
        assert await ws.recv() == b"K"
        return nbytes / (time.perf_counter() - started) / 2 ** 20


async def echo(target, n) -> list[float]:
    msg = os.urandom(64)
    async with connect(target.url(), subprotocols=["binary"]) as ws:
        await ws.send(b"E")
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await ws.send(msg)
            got = b""
            while len(got) < len(msg):
                got += await ws.recv()
            times.append((time.perf_counter() - started) * 1e6)
        return times


async def connect_ms(target, n) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with connect(target.url(), subprotocols=["binary"]) as ws:
            await ws.send(b"Ex")
            await ws.recv()
            times.append((time.perf_counter() - started) * 1e3)
    return times


async def idle_memory(target, conns) -> tuple[float, float]:
    before = target.pss_mib()
    sockets = []
    try:
        for _ in range(conns):
            ws = await connect(target.url(), subprotocols=["binary"])
            await ws.send(b"Ex")
            await ws.recv()
            sockets.append(ws)
        await asyncio.sleep(0.5)
        return before, target.pss_mib()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def one_round(kind, console, args) -> dict:
    target = kind(console, tokens=args.connects + args.idle_conns + 10)
    try:
        time.sleep(0.3)
        run = asyncio.run
        idle_before, idle_after = run(idle_memory(target, args.idle_conns))
        lat = run(echo(target, args.echoes))
        return {
            "download_mib_s": run(download(target, args.mib * 2 ** 20)),
            "upload_mib_s": run(upload(target, args.mib * 2 ** 20)),
            "echo_p50_us": pct(lat, 50), "echo_p99_us": pct(lat, 99),
            "connect_ms": statistics.median(run(connect_ms(target, args.connects))),
            "pss_idle_mib": idle_before, "pss_conns_mib": idle_after,
        }
    finally:
        target.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--echoes", type=int, default=500)
    ap.add_argument("--connects", type=int, default=50)
    ap.add_argument("--idle-conns", type=int, default=100)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--with-deflate", action="store_true",
                    help="also measure the proxy with permessage-deflate negotiated")
    args = ap.parse_args()

    kinds = [Stackbox, *([StackboxDeflate] if args.with_deflate else [])]
    if Websockify.binary:
        kinds.append(Websockify)
    else:
        print("websockify not installed (apt-get install websockify): stackbox only")
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-console-"))
    console = Console(work / "console.sock")
    results: dict[str, list[dict]] = {k.name: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for kind in kinds:       # interleaved: the machine is shared
                results[kind.name].append(one_round(kind, console.path, args))
                print(f"round {r + 1} {kind.name}: {results[kind.name][-1]}", flush=True)
    finally:
        console.close()
        shutil.rmtree(work, ignore_errors=True)

    keys = list(next(iter(results.values()))[0])
    medians = {name: {k: statistics.median(x[k] for x in runs) for k in keys}
               for name, runs in results.items()}
    print(f"\nmedians of {args.rounds} rounds ({args.mib} MiB transfers, "
          f"{args.echoes} echoes, {args.connects} connects, {args.idle_conns} idle consoles)")
    print(f"{'':18}" + "".join(f"{name:>14}" for name in medians))
    for k in keys:
        print(f"{k:18}" + "".join(f"{m[k]:14.1f}" for m in medians.values()))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rounds": results, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
