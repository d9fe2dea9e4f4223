#!/usr/bin/env python3
"""Object storage benchmark: stackbox's Swift API beside real OpenStack Swift.

    .venv/bin/python bench/objectstore/run.py [--rounds 3] [--n 2000] [--warmup 500] [-c 16]
        [--large-n 3] [--large-mib 64] [--big-gib 5] [--replicas 1 3] [--no-peer]
        [--fs xfs|host]

Starts one stackbox per replica count (temporary data dirs, free loopback
ports; default 1 and 3 replicas) and, unless --no-peer, the Swift 2.30 peer
from ../shared/peers/swift (start.sh, tempauth; policy r1 = 1 replica, r3 = 3
replicas) under its own base dir and ports. Like is compared with like:
stackbox-r1 with swift-r1, stackbox-r3 with swift-r3. All are driven by the
same client: one keep-alive http.client connection per thread. stackbox's
devices are on an XFS image like the peer's (--fs; --fs host puts them on
the host file system as before 2026-12-05, while Swift stayed on XFS). Rounds
interleave the systems (the machine is shared), each phase starting on a quiet
machine (common.settle: sync, then CPU under 15% busy and disk writes under 2 MB/s
for 1 s, at most 30 s);
the table shows medians, and
server CPU per request (from /proc), which moves much less with other load.

Phases: 4 KiB PUT/GET/DELETE at concurrency c (ops/s, p50/p99 ms, server CPU
ms/op); 64 MiB PUT/GET one stream (MB/s, the GET compared byte for byte with
what was sent); the disk's own
speed in the same run (dd 1 GiB write + fdatasync, O_DIRECT read, as the
peer's baseline.sh, at the start and the end, and again in each round
just before its large objects, which are also compared with that round's
figures); and the RSS of the 1-replica stackbox sampled while one
--big-gib object streams in and out (it must stay flat). Loopback only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (FS_CHOICES, FS_HELP, Peer, Stackbox, cpu_seconds,  # noqa: E402
                    dd_speed, disk_speed, in_bench_dirs, settle, load_average, pct,
                    ratios, read_into)


class Target:
    """One system under test: a storage URL path, a token, a host:port."""

    def __init__(self, name, port, account_path, token, *, pgids, headers=None, pid=None):
        self.name, self.host, self.port = name, "127.0.0.1", port
        self.account_path, self.token = account_path, token
        self.container_headers = headers or {}
        self.pgids = pgids      # the server's process groups, for its CPU per request
        self.pid = pid

    def conn(self, timeout=120):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def req(self, conn, method, path, body=None, headers=None):
        h = {"X-Auth-Token": self.token}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r, r.read()


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
    pgids = t.pgids()
    for name, op in (("PUT", put), ("GET", get), ("DELETE", delete)):
        cpu0 = cpu_seconds(pgids)
        wall, lats, errs = run_threads(n, conc, op)
        out[name] = {"ops": n / wall, "p50": 1000 * pct(lats, 50), "p99": 1000 * pct(lats, 99),
                     "errors": errs, "cpu_ms": 1000 * (cpu_seconds(pgids) - cpu0) / n}
    c.close()
    t.req(t.conn(), "DELETE", cont)      # the first connection idled past keep-alive
    return out


def large(t: Target, count, mib) -> dict:
    cont = f"{t.account_path}/bench-large-{int(time.time() * 1000)}"
    c = t.conn(300)
    r, _ = t.req(c, "PUT", cont, headers=t.container_headers)
    assert r.status in (201, 202), r.status
    body = bytearray(os.urandom(mib << 20))
    into = bytearray(mib << 20)
    view = memoryview(into)
    puts, gets = [], []
    pgids, cpu = t.pgids(), {"PUT": 0.0, "GET": 0.0}
    for i in range(count):
        body[:8] = i.to_bytes(8, "big")
        data = bytes(body)
        md5 = hashlib.md5(data).hexdigest()
        cpu0 = cpu_seconds(pgids)
        t0 = time.perf_counter()
        r, _ = t.req(c, "PUT", f"{cont}/big{i}", data, {"ETag": md5})
        puts.append(time.perf_counter() - t0)
        cpu1 = cpu_seconds(pgids)
        cpu["PUT"] += cpu1 - cpu0
        assert r.status == 201, r.status
        t0 = time.perf_counter()
        c.request("GET", f"{cont}/big{i}", headers={"X-Auth-Token": t.token})
        resp = c.getresponse()
        got = read_into(resp, view)
        assert resp.read() == b""
        gets.append(time.perf_counter() - t0)
        cpu["GET"] += cpu_seconds(pgids) - cpu1
        assert resp.status == 200 and got == len(data) and into == data
        del data
        t.req(c, "DELETE", f"{cont}/big{i}")
    t.req(c, "DELETE", cont)
    mb = (mib << 20) / 1e6
    return {"PUT": mb / statistics.median(puts), "GET": mb / statistics.median(gets),
            # server CPU per MiB moved: robust where MB/s is not on a busy machine
            "PUT_cpu": 1000 * cpu["PUT"] / (count * mib),
            "GET_cpu": 1000 * cpu["GET"] / (count * mib)}


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
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--large-n", type=int, default=3)
    ap.add_argument("--large-mib", type=int, default=64)
    ap.add_argument("--big-gib", type=float, default=5.0)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--fs", choices=FS_CHOICES, default="xfs", help=FS_HELP)
    a = ap.parse_args(argv)

    return in_bench_dirs("sbx-bench-os-", a.fs, lambda root, data_root, fs_label:
                         bench(a, root, data_root, fs_label))


def bench(a, root: Path, data_root: Path, fs_label: str) -> int:
    boxes = [Stackbox(data_root / f"stackbox-r{r}", r) for r in a.replicas]
    peer = None if a.no_peer else Peer(root / "peer")
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load_average()}",
          flush=True)
    print(f"stackbox's devices: {fs_label}", flush=True)
    try:
        disk = disk_speed(root, creates_in=data_root)
        print(f"disk (dd 1 GiB on the host file system): write+fdatasync "
              f"{disk['write_fdatasync_MBps']:.0f} MB/s, "
              f"O_DIRECT read {disk['read_direct_MBps']:.0f} MB/s; durable 4 KiB creates at "
              f"c=16 (temp, fdatasync, rename, fsync dir) where stackbox's devices are "
              f"{disk['durable_creates']:.0f}/s", flush=True)
        targets = []
        for box in boxes:
            box.start()
            targets.append(Target(box.name, box.port, box.storage_path, box.token,
                                  pgids=box.pgids, pid=box.pid))
        if peer:
            peer.start()
            targets += [Target(f"swift-{p}", peer.port, peer.storage_path, peer.token,
                               pgids=peer.pgids, headers={"X-Storage-Policy": p})
                        for p in ("r1", "r3")]
        results = {t.name: {"small": [], "large": []} for t in targets}
        round_disks: list[tuple[float, float]] = []
        # An untimed warm-up of every target first: the first round used to
        # catch the servers just started (Swift's daemons' first passes, lazy
        # imports, empty caches and partition directories) and, as stackbox
        # runs first in it, to charge that to stackbox.
        print(f"warm-up ({a.warmup} of each operation per target, not counted)", flush=True)
        for t in targets:
            small(t, a.warmup, a.c, a.size)
        for rnd in range(a.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            print(f"round {rnd + 1}: load average {load_average()}", flush=True)
            for t in order:
                quiet = settle()
                s = small(t, a.n, a.c, a.size)
                results[t.name]["small"].append(s)
                print(f"round {rnd + 1} {t.name:<11} small " + "  ".join(
                    f"{k} {v['ops']:.0f}/s p50 {v['p50']:.1f} p99 {v['p99']:.1f} "
                    f"cpu {v['cpu_ms']:.2f} err {v['errors']}" for k, v in s.items()) +
                    f"  [{quiet}]", flush=True)
            # the disk again next to the large objects it is compared with
            # (its speed moved by up to 1.8x between runs, and within one)
            round_disks.append(dd_speed(root, ROUND_DD_MIB))
            print(f"round {rnd + 1} disk (dd {ROUND_DD_MIB} MiB on the host file system): "
                  f"write+fdatasync {round_disks[-1][0]:.0f} MB/s, O_DIRECT read "
                  f"{round_disks[-1][1]:.0f} MB/s", flush=True)
            for t in order:
                quiet = settle()
                lg = large(t, a.large_n, a.large_mib)
                results[t.name]["large"].append(lg)
                print(f"round {rnd + 1} {t.name:<11} {a.large_mib} MiB PUT {lg['PUT']:.0f} MB/s"
                      f" (cpu {lg['PUT_cpu']:.1f} ms/MiB) GET {lg['GET']:.0f} MB/s"
                      f" (cpu {lg['GET_cpu']:.1f} ms/MiB)  [{quiet}]", flush=True)
        disk_end = disk_speed(root, creates_in=data_root)
        print(f"disk again (dd 1 GiB on the host file system): write+fdatasync "
              f"{disk_end['write_fdatasync_MBps']:.0f} "
              f"MB/s, O_DIRECT read {disk_end['read_direct_MBps']:.0f} MB/s; durable creates "
              f"{disk_end['durable_creates']:.0f}/s")
        report(results, a, [disk, disk_end], round_disks)
        if a.big_gib > 0:
            b = big_stream(targets[0], a.big_gib)
            print(f"\n{targets[0].name} streaming one {b['gib']:g} GiB object: RSS before "
                  f"{b['rss_before_mib']:.0f} MiB, max during PUT {b['rss_max_put_mib']:.0f} MiB,"
                  f" max overall {b['rss_max_mib']:.0f} MiB; PUT {b['put_MBps']:.0f} MB/s, "
                  f"GET {b['get_MBps']:.0f} MB/s")
        print(f"end {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load_average()}")
    finally:
        for box in boxes:
            box.stop()
        if peer:
            peer.stop()
    return 0


# the disk measured in each round, beside its large objects (256 MiB fit in a
# cache: 1.4-1.5 GB/s against ~0.5 for 1 GiB)
ROUND_DD_MIB = 1024


def report(results: dict, a, disks: list[dict], round_disks: list[tuple[float, float]]
           ) -> None:
    print(f"\nmedians over {a.rounds} rounds; {a.size} B objects, n={a.n}, c={a.c} "
          f"(cpu: server CPU ms per request)")
    print(f"{'system':<11} {'PUT/s':>6} {'p50':>6} {'p99':>6} {'cpu':>5} {'GET/s':>6} {'p50':>6} "
          f"{'p99':>6} {'cpu':>5} {'DEL/s':>6} {'p50':>6} {'p99':>6} {'cpu':>5} "
          f"{a.large_mib:>3}MiB PUT {'GET MB/s':>8}")
    med = {}
    for name, r in results.items():
        row = {(op, k): statistics.median(s[op][k] for s in r["small"])
               for op in ("PUT", "GET", "DELETE") for k in ("ops", "p50", "p99", "cpu_ms")}
        for k in ("PUT", "GET", "PUT_cpu", "GET_cpu"):
            row["L" + k] = statistics.median(x[k] for x in r["large"])
        med[name] = row
        print(f"{name:<11} " + " ".join(
            f"{row[op, 'ops']:>6.0f} {row[op, 'p50']:>6.1f} {row[op, 'p99']:>6.1f} "
            f"{row[op, 'cpu_ms']:>5.2f}" for op in ("PUT", "GET", "DELETE")) +
            f" {row['LPUT']:>10.0f} {row['LGET']:>8.0f}")
    print(f"server CPU per MiB of {a.large_mib} MiB objects: " + ", ".join(
        f"{name} PUT {row['LPUT_cpu']:.1f} / GET {row['LGET_cpu']:.1f} ms"
        for name, row in med.items()))
    for mine, theirs, line in ratios(med, a.replicas):
        print(line + f"; {a.large_mib} MiB PUT {med[mine]['LPUT'] / med[theirs]['LPUT']:.2f}x "
              f"GET {med[mine]['LGET'] / med[theirs]['LGET']:.2f}x")
    dc = statistics.median(d["durable_creates"] for d in disks)
    for name, row in med.items():
        print(f"{name} small PUT {row['PUT', 'ops'] / dc:.2f}x, DELETE "
              f"{row['DELETE', 'ops'] / dc:.2f}x the disk's durable creates ({dc:.0f}/s)")
    w = statistics.median(d["write_fdatasync_MBps"] for d in disks)
    rd = statistics.median(d["read_direct_MBps"] for d in disks)
    for name, row in med.items():
        if name.startswith("stackbox"):
            print(f"{name} vs the disk (dd write+fdatasync {w:.0f} MB/s, O_DIRECT read "
                  f"{rd:.0f} MB/s): {a.large_mib} MiB PUT {row['LPUT'] / w:.2f}x, "
                  f"GET {row['LGET'] / rd:.2f}x" +
                  (" (3 replicas write 3x the bytes to this one disk)"
                   if name != "stackbox-r1" else ""))
    for name, r in results.items():
        if name.startswith("stackbox") and round_disks:
            put = [lg["PUT"] / d[0] for lg, d in zip(r["large"], round_disks)]
            get = [lg["GET"] / d[1] for lg, d in zip(r["large"], round_disks)]
            print(f"{name} vs the disk measured in the same round: {a.large_mib} MiB PUT "
                  f"{statistics.median(put):.2f}x ({min(put):.2f}-{max(put):.2f}), GET "
                  f"{statistics.median(get):.2f}x ({min(get):.2f}-{max(get):.2f})")


if __name__ == "__main__":
    sys.exit(main())
