#!/usr/bin/env python3
"""Container listings at 1,000,000 objects: are they still fast, and still
right the moment a PUT returns?

    .venv/bin/python bench/objectstore/listing.py [--counts 10000,1000000] [--repeat 20]

Starts its own stackbox (temporary data dir, free loopback ports, 1 replica),
creates one container per count and fills its listing with that many rows
straight into the database (the rows a PUT writes; no object bytes, which a
listing never reads), names `dNN/oNNNNNNN` in 100 "directories". Then times
the listing requests clients make, over one keep-alive connection: the first
page (Swift's default limit, 10,000 names), small pages at the start, middle
(marker) and end (reverse), a prefix, a delimiter walk (100 subdirs), an
end_marker window, and the container HEAD. Finally it PUTs one object and
lists it in the same breath. Prints p50/p99 per request kind. Loopback only;
removes everything it made.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.objectstore.common import Stackbox, pct  # noqa: E402

DIRS = 100


def name(i: int) -> str:
    return f"d{i % DIRS:02d}/o{i:07d}"


def fill(db_path: Path, account: str, container: str, count: int) -> float:
    """Insert `count` listing rows and set the container's counters; seconds."""
    started = time.monotonic()
    db = sqlite3.connect(str(db_path), timeout=60)
    try:
        db.execute("PRAGMA synchronous=NORMAL")
        rows = ((account, container, name(i), 4096, "0" * 32, "application/octet-stream",
                 "1700000000.00000", None, False) for i in range(count))
        db.executemany("INSERT INTO objectstore_objects (account, container, name, size, etag, "
                       "content_type, timestamp, delete_at, slo) VALUES (?,?,?,?,?,?,?,?,?)",
                       rows)
        db.execute("UPDATE objectstore_containers SET object_count = ?, bytes_used = ? "
                   "WHERE account = ? AND name = ?", (count, count * 4096, account, container))
        db.commit()
    finally:
        db.close()
    return time.monotonic() - started


def cases(count: int) -> dict[str, str]:
    mid = name(count // 2)
    return {
        "first page (10,000 names, json)": "?format=json",
        "first 100": "?format=json&limit=100",
        "100 after a marker in the middle": f"?format=json&limit=100&marker={mid}",
        "last 100 (reverse)": "?format=json&limit=100&reverse=on",
        "prefix, 100": f"?format=json&limit=100&prefix=d{DIRS - 1}/",
        "delimiter: the 100 subdirs": "?format=json&delimiter=/",
        "end_marker window": f"?format=json&marker={name(10)}&end_marker={name(2010)}",
        "text listing, 100": "?limit=100",
    }


class Client:
    """One keep-alive connection to a started benchmark Stackbox."""

    def __init__(self, box: Stackbox):
        self.box = box
        self.account_path = box.storage_path

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.box.port, timeout=timeout)

    def req(self, conn, method, path, body=None):
        conn.request(method, path, body=body, headers={"X-Auth-Token": self.box.token})
        r = conn.getresponse()
        return r, r.read()


def measure(target, path: str, repeat: int) -> dict:
    conn = target.conn()
    results = {}
    try:
        for label, query in [*cases(COUNT[path]).items(), ("HEAD container", None)]:
            times, size = [], 0
            for _ in range(repeat):
                started = time.perf_counter()
                if query is None:
                    r, body = target.req(conn, "HEAD", path)
                else:
                    r, body = target.req(conn, "GET", path + query)
                times.append(time.perf_counter() - started)
                assert r.status in (200, 204), (label, r.status, body[:200])
                size = len(body)
            times.sort()
            results[label] = {"p50_ms": statistics.median(times) * 1000,
                              "p99_ms": pct(times, 99) * 1000, "bytes": size}
    finally:
        conn.close()
    return results


def read_your_write(target, path: str) -> bool:
    conn = target.conn()
    try:
        r, _ = target.req(conn, "PUT", f"{path}/d00/zz-new", body=b"fresh")
        assert r.status == 201, r.status
        r, body = target.req(conn, "GET", f"{path}?format=json&prefix=d00/zz-")
        return [o["name"] for o in json.loads(body)] == ["d00/zz-new"]
    finally:
        conn.close()


COUNT: dict[str, int] = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10000,1000000")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    root = Path(tempfile.mkdtemp(prefix="sbx-bl-"))
    box = Stackbox(root, 1)
    report = {}
    try:
        box.start()
        target = Client(box)
        account = target.account_path.rstrip("/").rsplit("/", 1)[1]
        for count in counts:
            container = f"big{count}"
            path = f"{target.account_path}/{container}"
            conn = target.conn()
            r, _ = target.req(conn, "PUT", path)
            conn.close()
            assert r.status in (201, 202), r.status
            seconds = fill(box.data / "stackbox.sqlite", account, container, count)
            print(f"{count:,} listing rows inserted in {seconds:.1f} s", flush=True)
            COUNT[path] = count
            results = measure(target, path, args.repeat)
            fresh = read_your_write(target, path)
            report[count] = {"results": results, "visible_right_after_put": fresh}
            print(f"\n{count:,} objects in one container (p50 / p99 ms over {args.repeat}):")
            for label, r in results.items():
                print(f"  {label:36} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}   "
                      f"{r['bytes']:>9,} B")
            print(f"  a PUT is in the listing the moment it returns: {fresh}", flush=True)
    finally:
        box.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
