#!/usr/bin/env python3
"""Object storage benchmark: stackbox's Swift API beside real OpenStack Swift.

    .venv/bin/python bench/objectstore/run.py [--rounds 3] [--n 2000] [-c 16]
        [--large-n 3] [--large-mib 64] [--big-gib 5] [--no-peer]

Starts its own stackbox (temporary data dir, free loopback ports, 3 replicas)
and, unless --no-peer, the Swift 2.30 peer from ../shared/peers/swift (start.sh,
tempauth; policy r1 = 1 replica, r3 = 3 replicas) under its own base dir and
ports. Both are driven by the same client: one keep-alive http.client
connection per thread. Rounds interleave the systems (the machine is shared);
the table shows medians over rounds.

Phases: 4 KiB PUT/GET/DELETE at concurrency c (ops/s, p50/p99 ms); 64 MiB
PUT/GET one stream (MB/s, GET md5-checked); and stackbox's RSS sampled while
one --big-gib object streams in and out (it must stay flat). Loopback only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PEER_DIR = ROOT.parent.parent / "shared" / "peers" / "swift"
if not PEER_DIR.exists():
    PEER_DIR = Path("/work/shared/peers/swift")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(vals, q):
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, max(0, int(round(q / 100 * len(vals))) - 1))]


class Target:
    """One system under test: a storage URL path, a token, a host:port."""

    def __init__(self, name, host, port, account_path, token, headers=None, pid=None):
        self.name, self.host, self.port = name, host, port
        self.account_path, self.token = account_path, token
        self.container_headers = headers or {}
        self.pid = pid

    def conn(self, timeout=120):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def req(self, conn, method, path, body=None, headers=None):
        h = {"X-Auth-Token": self.token}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r, r.read()


# --- stackbox ---------------------------------------------------------------

class Stackbox:
    def __init__(self, root: Path, replicas: int):
        self.root = root
        self.data = root / "data"
        self.ports = {"identity": free_port(), "image": free_port(),
                      "object_store": free_port()}
        self.config = root / "stackbox.toml"
        self.config.write_text(
            f"[identity]\nport = {self.ports['identity']}\n"
            f"[image]\nport = {self.ports['image']}\n"
            f"[object_store]\nport = {self.ports['object_store']}\nreplicas = {replicas}\n"
            f"devices = {max(3, replicas)}\n")

    def _cli(self, *args):
        return subprocess.run([str(VENV_BIN / "stackbox"), *args, "--config", str(self.config),
                               "--data-dir", str(self.data)], capture_output=True, text=True,
                              timeout=120, check=True)

    def start(self) -> Target:
        self._cli("up", "--detach")
        import yaml
        clouds = yaml.safe_load((self.data / "clouds.yaml").read_text())["clouds"]
        password = clouds["stackbox"]["auth"]["password"]
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['identity']}/v3/auth/tokens",
            data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            token = r.headers["X-Subject-Token"]
            catalog = json.loads(r.read())["token"]["catalog"]
        url = next(e["url"] for s in catalog if s["type"] == "object-store"
                   for e in s["endpoints"] if e["interface"] == "public")
        pid = int((self.data / "stackbox.pid").read_text())
        return Target("stackbox", "127.0.0.1", self.ports["object_store"],
                      urllib.parse.urlsplit(url).path, token, pid=pid)

    def stop(self):
        try:
            self._cli("down")
        except subprocess.CalledProcessError:
            pass


# --- the Swift peer ------------------------------------------------------------

class Peer:
    def __init__(self, base: Path):
        self.base = base
        self.env = dict(os.environ, PEER_SWIFT_BASE=str(base),
                        SWIFT_PROXY_PORT=str(free_port()), SWIFT_OBJ_PORT=str(free_port()),
                        SWIFT_CONT_PORT=str(free_port()), SWIFT_ACC_PORT=str(free_port()),
                        SWIFT_MC_PORT=str(free_port()))
        self.port = int(self.env["SWIFT_PROXY_PORT"])

    def start(self) -> list[Target]:
        subprocess.run([str(PEER_DIR / "start.sh")], env=self.env, check=True, timeout=300,
                       capture_output=True)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", "/auth/v1.0", headers={"X-Auth-User": "test:tester",
                                                 "X-Auth-Key": "testing"})
        r = c.getresponse()
        r.read()
        token = r.getheader("X-Auth-Token")
        path = urllib.parse.urlsplit(r.getheader("X-Storage-Url")).path
        return [Target(f"swift-{p}", "127.0.0.1", self.port, path, token,
                       headers={"X-Storage-Policy": p}) for p in ("r1", "r3")]

    def stop(self):
        subprocess.run([str(PEER_DIR / "stop.sh"), "--purge"], env=self.env, timeout=120,
                       capture_output=True)


# --- phases ---------------------------------------------------------------------

def run_threads(n, conc, op):
    counter = itertools.count()
    lats = [[] for _ in range(conc)]
    errs = [0] * conc
    barrier = threading.Barrier(conc + 1)

    def worker(k):
        st = {}
        barrier.wait()
        while True:
            i = next(counter)
            if i >= n:
                return
            t = time.perf_counter()
            try:
                ok = op(st, i)
            except Exception as e:       # count, reconnect, go on
                ok = False
                if errs[k] < 2:
                    print(f"  error #{i}: {e!r}", file=sys.stderr)
                st.pop("conn", None)
            lats[k].append(time.perf_counter() - t)
            errs[k] += 0 if ok else 1

    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conc)]
    for t in ths:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    return wall, sorted(itertools.chain.from_iterable(lats)), sum(errs)


def small(t: Target, n, conc, size) -> dict:
    cont = f"{t.account_path}/bench-small-{int(time.time() * 1000)}"
    c = t.conn()
    r, _ = t.req(c, "PUT", cont, headers=t.container_headers)
    assert r.status in (201, 202), r.status
    payload = [os.urandom(size) for _ in range(n)]

    def conn(st):
        if "conn" not in st:
            st["conn"] = t.conn(60)
        return st["conn"]

    def put(st, i):
        r, _ = t.req(conn(st), "PUT", f"{cont}/o{i:06d}", payload[i],
                     {"Content-Type": "application/octet-stream"})
        return r.status == 201

    def get(st, i):
        r, data = t.req(conn(st), "GET", f"{cont}/o{i:06d}")
        return r.status == 200 and data == payload[i]

    def delete(st, i):
        r, _ = t.req(conn(st), "DELETE", f"{cont}/o{i:06d}")
        return r.status == 204

    out = {}
    for name, op in (("PUT", put), ("GET", get), ("DELETE", delete)):
        wall, lats, errs = run_threads(n, conc, op)
        out[name] = {"ops": n / wall, "p50": 1000 * pct(lats, 50), "p99": 1000 * pct(lats, 99),
                     "errors": errs}
    c.close()
    t.req(t.conn(), "DELETE", cont)      # the first connection idled past keep-alive
    return out


def large(t: Target, count, mib) -> dict:
    cont = f"{t.account_path}/bench-large-{int(time.time() * 1000)}"
    c = t.conn(300)
    r, _ = t.req(c, "PUT", cont, headers=t.container_headers)
    assert r.status in (201, 202), r.status
    body = bytearray(os.urandom(mib << 20))
    puts, gets = [], []
    for i in range(count):
        body[:8] = i.to_bytes(8, "big")
        data = bytes(body)
        md5 = hashlib.md5(data).hexdigest()
        t0 = time.perf_counter()
        r, _ = t.req(c, "PUT", f"{cont}/big{i}", data, {"ETag": md5})
        puts.append(time.perf_counter() - t0)
        assert r.status == 201, r.status
        del data
        t0 = time.perf_counter()
        c.request("GET", f"{cont}/big{i}", headers={"X-Auth-Token": t.token})
        resp = c.getresponse()
        h = hashlib.md5()
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
        gets.append(time.perf_counter() - t0)
        assert resp.status == 200 and h.hexdigest() == md5
        t.req(c, "DELETE", f"{cont}/big{i}")
    t.req(c, "DELETE", cont)
    mb = (mib << 20) / 1e6
    return {"PUT": mb / statistics.median(puts), "GET": mb / statistics.median(gets)}


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def big_stream(t: Target, gib: float) -> dict:
    """Stream one object of `gib` GiB in (chunked) and out, sampling RSS."""
    cont = f"{t.account_path}/bench-rss-{int(time.time() * 1000)}"
    c = t.conn(600)
    t.req(c, "PUT", cont)
    total = int(gib * (1 << 30))
    chunk = os.urandom(1 << 20)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(rss_kib(t.pid))
            time.sleep(0.2)
    base = rss_kib(t.pid)
    th = threading.Thread(target=sample, daemon=True)
    th.start()

    def gen():
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            sent += n
            yield chunk[:n]
    t0 = time.perf_counter()
    c.request("PUT", f"{cont}/huge", body=gen(),
              headers={"X-Auth-Token": t.token, "Transfer-Encoding": "chunked"},
              encode_chunked=True)
    r = c.getresponse()
    r.read()
    put_s = time.perf_counter() - t0
    put_max = max(samples or [0])
    assert r.status == 201, r.status
    t0 = time.perf_counter()
    c.request("GET", f"{cont}/huge", headers={"X-Auth-Token": t.token})
    r = c.getresponse()
    got = 0
    while True:
        data = r.read(1 << 20)
        if not data:
            break
        got += len(data)
    get_s = time.perf_counter() - t0
    stop.set()
    th.join()
    t.req(c, "DELETE", f"{cont}/huge")
    t.req(c, "DELETE", cont)
    assert got == total
    return {"gib": gib, "rss_before_mib": base / 1024, "rss_max_put_mib": put_max / 1024,
            "rss_max_mib": max(samples) / 1024, "put_MBps": total / 1e6 / put_s,
            "get_MBps": total / 1e6 / get_s}


# --- main ------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--large-n", type=int, default=3)
    ap.add_argument("--large-mib", type=int, default=64)
    ap.add_argument("--big-gib", type=float, default=5.0)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="sbx-bench-os-"))
    (root / "stackbox").mkdir()
    sbx = Stackbox(root / "stackbox", a.replicas)
    peer = None if a.no_peer else Peer(root / "peer")
    targets = []
    try:
        targets.append(sbx.start())
        if peer:
            targets += peer.start()
        results = {t.name: {"small": [], "large": []} for t in targets}
        for rnd in range(a.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                s = small(t, a.n, a.c, a.size)
                results[t.name]["small"].append(s)
                print(f"round {rnd + 1} {t.name:<9} small " + "  ".join(
                    f"{k} {v['ops']:.0f}/s p50 {v['p50']:.1f} p99 {v['p99']:.1f} "
                    f"err {v['errors']}" for k, v in s.items()), flush=True)
            for t in order:
                lg = large(t, a.large_n, a.large_mib)
                results[t.name]["large"].append(lg)
                print(f"round {rnd + 1} {t.name:<9} {a.large_mib} MiB PUT {lg['PUT']:.0f} MB/s"
                      f" GET {lg['GET']:.0f} MB/s", flush=True)
        print(f"\nmedians over {a.rounds} rounds; {a.size} B objects, n={a.n}, c={a.c}; "
              f"stackbox replicas={a.replicas}")
        print(f"{'system':<10} {'PUT/s':>7} {'p50':>6} {'p99':>6} {'GET/s':>7} {'p50':>6} "
              f"{'p99':>6} {'DEL/s':>7} {'p50':>6} {'p99':>6} {'64MiB PUT':>10} {'GET MB/s':>9}")
        med = {}
        for name, r in results.items():
            row = {}
            for op in ("PUT", "GET", "DELETE"):
                for k in ("ops", "p50", "p99"):
                    row[op, k] = statistics.median(s[op][k] for s in r["small"])
            row["LPUT"] = statistics.median(x["PUT"] for x in r["large"])
            row["LGET"] = statistics.median(x["GET"] for x in r["large"])
            med[name] = row
            print(f"{name:<10} " + " ".join(
                f"{row[op, 'ops']:>7.0f} {row[op, 'p50']:>6.1f} {row[op, 'p99']:>6.1f}"
                for op in ("PUT", "GET", "DELETE")) +
                f" {row['LPUT']:>10.0f} {row['LGET']:>9.0f}")
        for peer_name in ("swift-r1", "swift-r3"):
            if peer_name in med:
                ratios = " ".join(f"{op} {med['stackbox'][op, 'ops'] / med[peer_name][op, 'ops']:.1f}x"
                                  for op in ("PUT", "GET", "DELETE"))
                print(f"stackbox vs {peer_name}: {ratios}")
        if a.big_gib > 0:
            b = big_stream(targets[0], a.big_gib)
            print(f"\nstackbox streaming one {b['gib']:g} GiB object: RSS before "
                  f"{b['rss_before_mib']:.0f} MiB, max during PUT {b['rss_max_put_mib']:.0f} MiB,"
                  f" max overall {b['rss_max_mib']:.0f} MiB; PUT {b['put_MBps']:.0f} MB/s, "
                  f"GET {b['get_MBps']:.0f} MB/s")
    finally:
        sbx.stop()
        if peer:
            peer.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
