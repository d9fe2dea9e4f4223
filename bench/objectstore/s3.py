#!/usr/bin/env python3
"""S3 API benchmark: stackbox's S3 beside real OpenStack Swift's s3api.

    .venv/bin/python bench/objectstore/s3.py [--rounds 3] [--n 2000] [--warmup 500] [-c 16]
        [--size 4096] [--replicas 1 3] [--large-n 2] [--large-mib 64] [--no-peer]
        [--client http|signed-http|boto3] [--fs xfs|host]

Starts one stackbox per replica count (temporary data dirs, free loopback
ports) with EC2 credentials made through the identity API, and, unless
--no-peer, the Swift 2.30 peer from ../shared/peers/swift (start.sh; s3api
with tempauth's test:tester/testing). S3 cannot choose a storage policy, so
the peer's 3-replica buckets are made as Swift containers in policy r3 first;
its default policy (r1) has 1 replica. stackbox's devices are on an XFS
image like the peer's (--fs, as in run.py). Like is compared with like:
stackbox-r1 with swift-r1, stackbox-r3 with swift-r3. All are driven by the
same client, 16 threads in one process: by default (--client http) a
keep-alive http.client connection per thread sending SigV4-signed requests
(payload sha256 included), because boto3 itself costs 1-2 ms of CPU per
request and would measure the client. The default signs with LeanSigV4,
which signs as botocore does (a unit test compares them) at a fifth of the
CPU: with botocore's signer (--client signed-http) the client spent 0.31-0.34
ms per PUT against 0.19 ms, the Swift-API benchmark's client's figure, and
on two cores that CPU is the servers' (stackbox's S3 PUTs/s were 9-12% lower
in alternating rounds). With --client boto3, one boto3 client per thread,
path-style, the CRC32 checksum turned off as in the peer's own bench client.
Each phase starts on a quiet machine (common.settle: sync, then CPU under
15% busy and disk writes under 2 MB/s for 1 s, at most 30 s).
Rounds interleave the systems (the machine
is shared) and the table shows medians, with server CPU per request from
/proc. Large objects are compared byte for byte with what was sent.
Loopback only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (FS_CHOICES, FS_HELP, Peer, Stackbox, cpu_seconds,  # noqa: E402
                    in_bench_dirs, load_average, pct, ratios, read_into, settle)

from stackbox.objectstore.s3 import sigv4  # noqa: E402

CLIENT = "http"      # or "signed-http", "boto3" (--client)


class Target:
    def __init__(self, name, url, access, secret, region, *, pgids, make_bucket=None):
        self.name, self.url, self.access, self.secret, self.region = (
            name, url, access, secret, region)
        self.pgids = pgids    # the server's process groups, for its CPU per request
        # how a bucket is made: CreateBucket, or (the peer's r3) a Swift PUT
        self.make_bucket = make_bucket or (lambda client, bucket:
                                           client.create_bucket(Bucket=bucket))

    def client(self):
        if CLIENT in ("http", "signed-http"):
            return SignedHttp(self.url, self.access, self.secret, self.region,
                              botocore_signer=CLIENT == "signed-http")
        import boto3
        from botocore.config import Config
        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                     max_pool_connections=2, connect_timeout=10, read_timeout=60,
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required")
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access,
            aws_secret_access_key=self.secret, region_name=self.region, config=cfg)


class _Body:
    def __init__(self, data: bytes):
        self._data = data

    def read(self) -> bytes:
        return self._data


class LeanSigV4:
    """SigV4 in the Authorization header for the benchmark's requests (path
    style, no query, the payload's sha256 signed), built from stackbox's own
    SigV4 pieces (signing key kept per day, string to sign): ~7 us of CPU
    against ~75 us for botocore's S3SigV4Auth with its AWSRequest, which on
    this 2-core machine is taken from the servers under test.
    tests/unit/test_bench_sigv4.py checks that it signs as botocore does."""

    SIGNED = "host;x-amz-content-sha256;x-amz-date"

    def __init__(self, access, secret, region, host):
        self.access, self.secret, self.region, self.host = access, secret, region, host

    def headers(self, method: str, path: str, body: bytes, amz_date: str | None = None
                ) -> dict[str, str]:
        if not _SAFE_PATH.fullmatch(path):
            raise ValueError(f"path {path!r} would need URI encoding, which this signer "
                             f"does not do")
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        payload = hashlib.sha256(body).hexdigest()
        canonical = (f"{method}\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{payload}\n"
                     f"x-amz-date:{amz_date}\n\n{self.SIGNED}\n{payload}")
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        signature = hmac.new(sigv4.signing_key(self.secret, amz_date[:8], self.region),
                             sigv4.string_to_sign(amz_date, scope, canonical).encode(),
                             hashlib.sha256).hexdigest()
        return {"Host": self.host, "X-Amz-Date": amz_date, "X-Amz-Content-SHA256": payload,
                "Authorization": f"{sigv4.ALGORITHM} Credential={self.access}/{scope}, "
                                 f"SignedHeaders={self.SIGNED}, Signature={signature}"}


_SAFE_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


class SignedHttp:
    """The same S3 requests as the boto3 client, without boto3's request
    machinery: one keep-alive http.client connection per thread. boto3
    spends 1-2 ms of CPU per request building, signing and parsing, so 16
    boto3 threads in one process top out near what the servers do and
    measure the client; both systems get the same requests either way. Each
    request is signed by LeanSigV4 (--client http), or by botocore's own
    signer (--client signed-http: S3SigV4Auth on an AWSRequest, which adds
    ~0.15 ms of client CPU per request). The methods are the subset of
    boto3's S3 client this benchmark calls."""

    def __init__(self, url, access, secret, region, *, botocore_signer=False):
        from urllib.parse import urlsplit
        u = urlsplit(url)
        self.base, self.host, self.port = url, u.hostname, u.port
        self.lean = None if botocore_signer else LeanSigV4(access, secret, region, u.netloc)
        if botocore_signer:
            from botocore.auth import S3SigV4Auth
            from botocore.credentials import Credentials
            self.signer = S3SigV4Auth(Credentials(access, secret), "s3", region)
        self.conn = None

    def _headers(self, method, path, body) -> dict:
        if self.lean is not None:
            return self.lean.headers(method, path, body)
        from botocore.awsrequest import AWSRequest
        req = AWSRequest(method, self.base + path, data=body)
        self.signer.add_auth(req)
        return dict(req.headers)

    def request(self, method, path, body=b""):
        import http.client
        headers = self._headers(method, path, body)
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            self.conn.request(method, path, body=body or None, headers=headers)
            resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        return resp

    def _call(self, method, path, body=b"", ok=(200,)):
        resp = self.request(method, path, body)
        data = resp.read()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return {"ResponseMetadata": {"HTTPStatusCode": resp.status}, "Body": _Body(data)}

    def create_bucket(self, Bucket):
        return self._call("PUT", f"/{Bucket}")

    def head_bucket(self, Bucket):
        return self._call("HEAD", f"/{Bucket}")

    def delete_bucket(self, Bucket):
        return self._call("DELETE", f"/{Bucket}", ok=(204,))

    def put_object(self, Bucket, Key, Body):
        return self._call("PUT", f"/{Bucket}/{Key}", Body)

    def get_object(self, Bucket, Key):
        return self._call("GET", f"/{Bucket}/{Key}")

    def delete_object(self, Bucket, Key):
        return self._call("DELETE", f"/{Bucket}/{Key}", ok=(204,))


def run_threads(clients, n, op):
    counter = itertools.count()
    conc = len(clients)
    lats = [[] for _ in range(conc)]
    errs = [0] * conc
    barrier = threading.Barrier(conc + 1)

    def worker(k):
        barrier.wait()
        while True:
            i = next(counter)
            if i >= n:
                return
            t = time.perf_counter()
            try:
                ok = op(clients[k], i)
            except Exception as e:      # count and go on
                ok = False
                if errs[k] < 2:
                    print(f"  error #{i}: {e!r}", file=sys.stderr)
            lats[k].append(time.perf_counter() - t)
            errs[k] += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conc)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sorted(itertools.chain.from_iterable(lats)), sum(errs)


def small(t: Target, n, conc, size) -> dict:
    clients = [t.client() for _ in range(conc)]
    bucket = f"s3bench-{int(time.time() * 1000)}"
    t.make_bucket(clients[0], bucket)
    for c in clients:                 # warm each connection pool outside the timing
        c.head_bucket(Bucket=bucket)
    payload = [os.urandom(size) for _ in range(n)]

    def put(c, i):
        r = c.put_object(Bucket=bucket, Key=f"o{i:06d}", Body=payload[i])
        return r["ResponseMetadata"]["HTTPStatusCode"] == 200

    def get(c, i):
        return c.get_object(Bucket=bucket, Key=f"o{i:06d}")["Body"].read() == payload[i]

    def delete(c, i):
        r = c.delete_object(Bucket=bucket, Key=f"o{i:06d}")
        return r["ResponseMetadata"]["HTTPStatusCode"] == 204

    out = {}
    pgids = t.pgids()
    for name, op in (("PUT", put), ("GET", get), ("DELETE", delete)):
        cpu0, client0 = cpu_seconds(pgids), time.process_time()
        wall, lats, errs = run_threads(clients, n, op)
        out[name] = {"ops": n / wall, "p50": 1000 * pct(lats, 50), "p99": 1000 * pct(lats, 99),
                     "errors": errs, "cpu_ms": 1000 * (cpu_seconds(pgids) - cpu0) / n,
                     "client_ms": 1000 * (time.process_time() - client0) / n}
    clients[0].delete_bucket(Bucket=bucket)
    return out


def large(t: Target, count: int, mib: int) -> dict:
    """`count` objects of `mib` MiB, one stream: single PutObject, then GetObject
    read through and compared byte for byte; MB/s at the median."""
    c = t.client()
    bucket = f"s3bench-large-{int(time.time() * 1000)}"
    t.make_bucket(c, bucket)
    body = bytearray(os.urandom(mib << 20))
    into = bytearray(mib << 20)
    view = memoryview(into)
    puts, gets = [], []
    for i in range(count):
        body[:8] = i.to_bytes(8, "big")
        data = bytes(body)
        t0 = time.perf_counter()
        c.put_object(Bucket=bucket, Key=f"big{i}", Body=data)
        puts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if isinstance(c, SignedHttp):
            resp = c.request("GET", f"/{bucket}/big{i}")
            got = read_into(resp, view)
            assert resp.status == 200 and resp.read() == b""
        else:
            stream = c.get_object(Bucket=bucket, Key=f"big{i}")["Body"]
            got = 0
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                into[got:got + len(chunk)] = chunk
                got += len(chunk)
        gets.append(time.perf_counter() - t0)
        # byte for byte (an md5 here would cap the client at ~700 MiB/s)
        assert got == len(data) and into == data
        c.delete_object(Bucket=bucket, Key=f"big{i}")
    c.delete_bucket(Bucket=bucket)
    mb = (mib << 20) / 1e6
    return {"PUT": mb / statistics.median(puts), "GET": mb / statistics.median(gets)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--large-n", type=int, default=2, help="0 skips the large objects")
    ap.add_argument("--large-mib", type=int, default=64)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--client", choices=("http", "signed-http", "boto3"), default="http",
                    help="http: http.client + LeanSigV4 (default); signed-http: http.client "
                         "+ botocore's SigV4 signer; boto3: a boto3 client per thread")
    ap.add_argument("--fs", choices=FS_CHOICES, default="xfs", help=FS_HELP)
    a = ap.parse_args(argv)
    global CLIENT
    CLIENT = a.client

    return in_bench_dirs("sbx-bench-s3-", a.fs, lambda root, data_root, fs_label:
                         bench(a, root, data_root, fs_label))


def bench(a, root: Path, data_root: Path, fs_label: str) -> int:
    boxes = [Stackbox(data_root / f"stackbox-r{r}", r) for r in a.replicas]
    peer = None if a.no_peer else Peer(root / "peer")
    targets: list[Target] = []
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load_average()}",
          flush=True)
    print(f"stackbox's devices: {fs_label}", flush=True)
    try:
        for box in boxes:
            box.start()
            access, secret = box.ec2_credentials()
            targets.append(Target(box.name, f"http://127.0.0.1:{box.port}", access, secret,
                                  "RegionOne", pgids=box.pgids))
        if peer:
            peer.start()
            url = f"http://127.0.0.1:{peer.port}"
            targets.append(Target("swift-r1", url, "test:tester", "testing", "us-east-1",
                                  pgids=peer.pgids))
            if 3 in a.replicas:
                targets.append(Target("swift-r3", url, "test:tester", "testing", "us-east-1",
                                      pgids=peer.pgids, make_bucket=lambda _c, bucket:
                                      peer.create_container(bucket, "r3")))
        results: dict[str, list] = {t.name: [] for t in targets}
        larges: dict[str, list] = {t.name: [] for t in targets}
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
                results[t.name].append(s)
                print(f"round {rnd + 1} {t.name:<11} " + "  ".join(
                    f"{k} {v['ops']:.0f}/s p50 {v['p50']:.1f} p99 {v['p99']:.1f} "
                    f"cpu {v['cpu_ms']:.2f} ms client {v['client_ms']:.2f} ms err {v['errors']}"
                    for k, v in s.items()) + f"  [{quiet}]", flush=True)
            for t in (order if a.large_n else ()):
                quiet = settle()
                lg = large(t, a.large_n, a.large_mib)
                larges[t.name].append(lg)
                print(f"round {rnd + 1} {t.name:<11} {a.large_mib} MiB PUT {lg['PUT']:.0f} MB/s "
                      f"GET {lg['GET']:.0f} MB/s  [{quiet}]", flush=True)
        report(results, larges, a)
        print(f"end {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {load_average()}")
    finally:
        for box in boxes:
            box.stop()
        if peer:
            peer.stop()
    return 0


def report(results: dict, larges: dict, a) -> None:
    print(f"\nS3 via {a.client}, medians over {a.rounds} rounds; {a.size} B objects, n={a.n}, "
          f"c={a.c}")
    print("(cpu: server CPU ms per request; the machine is shared, so ops/s move with "
          "other load and cpu ms/op much less)")
    print(f"{'system':<12} {'PUT/s':>7} {'p50':>6} {'p99':>6} {'cpu':>5} {'GET/s':>7} "
          f"{'p50':>6} {'p99':>6} {'cpu':>5} {'DEL/s':>7} {'p50':>6} {'p99':>6} {'cpu':>5}")
    med = {}
    for name, runs in results.items():
        row = {(op, k): statistics.median(r[op][k] for r in runs)
               for op in ("PUT", "GET", "DELETE") for k in ("ops", "p50", "p99", "cpu_ms")}
        med[name] = row
        print(f"{name:<12} " + " ".join(
            f"{row[op, 'ops']:>7.0f} {row[op, 'p50']:>6.1f} {row[op, 'p99']:>6.1f} "
            f"{row[op, 'cpu_ms']:>5.2f}" for op in ("PUT", "GET", "DELETE")))
    for name, runs in larges.items():
        if runs:
            print(f"{name:<12} {a.large_mib} MiB one stream: PUT "
                  f"{statistics.median(r['PUT'] for r in runs):.0f} MB/s, GET "
                  f"{statistics.median(r['GET'] for r in runs):.0f} MB/s")
    for _mine, _theirs, line in ratios(med, a.replicas):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
