#!/usr/bin/env python3
"""Identity benchmark: stackbox vs. a real Keystone, same run, same machine.

Measures, for each target, with wrk at a fixed concurrency:

* ``issue``    -- POST /v3/auth/tokens (password method, project-scoped, JSON body)
* ``validate`` -- GET  /v3/auth/tokens with X-Auth-Token (admin token) and
                  X-Subject-Token (another project-scoped token)

Runs are interleaved (stackbox issue, keystone issue, stackbox validate,
keystone validate, repeated ``--rounds`` times) and medians are reported,
because the machine is shared.  Also reports idle RSS of each system's
process tree right after start, before any load.

Examples::

    # Keystone peer only (sets it up / starts it if needed, stops it if it started it)
    python bench/identity/run.py --keystone

    # stackbox already running + keystone
    python bench/identity/run.py --stackbox-url http://127.0.0.1:5000/v3 \\
        --user admin --password PW --project admin --stackbox-pid 1234 --keystone

    # start stackbox in a temp data dir, benchmark it and keystone, stop both
    python bench/identity/run.py --start-stackbox --keystone --json results.json

Only 127.0.0.1 / localhost targets are accepted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PEER_SH = HERE / "keystone_peer.sh"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

ISSUE_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
"""

VALIDATE_LUA = """\
wrk.method = "GET"
wrk.headers["X-Auth-Token"] = {admin}
wrk.headers["X-Subject-Token"] = {subject}
wrk.headers["Accept"] = "application/json"
"""


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers

def lua_str(s: str) -> str:
    """Quote a Python string as a Lua string literal."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= o < 127:
            out.append(ch)
        else:
            out.extend(f"\\{b}" for b in ch.encode("utf-8"))
    out.append('"')
    return "".join(out)


def v3_base(url: str) -> str:
    """Normalise an auth URL (with or without /v3) to ``http://host:port[/prefix]/v3``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BenchError(f"bad URL: {url!r}")
    if parsed.hostname not in LOOPBACK_HOSTS and not parsed.hostname.startswith("127."):
        raise BenchError(f"refusing non-loopback target {url!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v3"):
        path += "/v3"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def auth_body(user: str, password: str, project: str, user_domain: str,
              project_domain: str) -> str:
    return json.dumps({
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "domain": {"name": user_domain},
                                      "password": password}},
            },
            "scope": {"project": {"name": project, "domain": {"name": project_domain}}},
        }
    }, separators=(",", ":"))


def http(method: str, url: str, body: str | None = None, headers: dict | None = None,
         timeout: float = 30.0):
    req = urllib.request.Request(url, method=method,
                                 data=body.encode() if body is not None else None)
    req.add_header("Accept", "application/json")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def issue_token(base: str, body: str) -> str:
    status, headers, payload = http("POST", base + "/auth/tokens", body)
    if status != 201:
        raise BenchError(f"token issue at {base} returned {status}: {payload[:300]!r}")
    tok = next((v for k, v in headers.items() if k.lower() == "x-subject-token"), None)
    if not tok:
        raise BenchError(f"token issue at {base}: no X-Subject-Token header")
    data = json.loads(payload)
    if "project" not in data.get("token", {}):
        raise BenchError(f"token issue at {base}: token is not project-scoped")
    return tok


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, _ = http("GET", url, timeout=2)
            if status < 500:
                return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- RSS

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 (ppid) follows the ")" closing the comm field
        rest = stat.rsplit(")", 1)[1].split()
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo, seen = [], [pid], set()
    while todo and len(out) < 10000:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        if os.path.isdir(f"/proc/{p}"):
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def tree_cpu_seconds(pid: int | None) -> float | None:
    """utime+stime (+ waited-for children) summed over pid and its descendants."""
    if not pid:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the comm field: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        total += sum(int(x) for x in fields[11:15])
    return total / tick


def _kb_field(path: str, field: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_memory(pid: int) -> dict:
    """Sum VmRSS (and Pss from smaps_rollup) over pid and its descendants, in MiB."""
    pids = process_tree(pid)
    rss = pss = 0
    pss_ok = True
    for p in pids:
        rss += _kb_field(f"/proc/{p}/status", "VmRSS") or 0
        v = _kb_field(f"/proc/{p}/smaps_rollup", "Pss")
        if v is None:
            pss_ok = False
        else:
            pss += v
    return {"pids": pids, "nproc": len(pids), "rss_mb": round(rss / 1024, 1),
            "pss_mb": round(pss / 1024, 1) if pss_ok else None}


# --------------------------------------------------------------------------- wrk

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    log("wrk not found: apt-get install -y wrk")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                    "-o", "DPkg::Lock::Timeout=600", "wrk"],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("wrk")
    if not path:
        raise BenchError("wrk still not found after apt-get install")
    return path


def _ms(value: str, unit: str) -> float:
    return float(value) * UNITS_MS[unit]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError("could not parse wrk output:\n" + out)
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1), m.group(2)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = [int(x) for x in m.groups()] if m else [0, 0, 0, 0]
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), sock))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    # connect/write/timeout are failed requests.  "read" errors are not counted:
    # with "Connection: close" servers wrk reports a read error per closed
    # connection even for successful responses (reported separately).
    res["errors"] = res["non2xx"] + sock[0] + sock[2] + sock[3]
    return res


def run_wrk(wrk: str, url: str, script: Path, duration: int, concurrency: int,
            threads: int, timeout_s: int) -> dict:
    argv = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{duration}s",
            f"--timeout={timeout_s}s", "--latency", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=duration + timeout_s + 60)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    res = parse_wrk(proc.stdout)
    res["raw"] = proc.stdout
    return res


# --------------------------------------------------------------------------- targets

class Target:
    def __init__(self, name: str, url: str, user: str, password: str, project: str,
                 user_domain: str, project_domain: str, pid: int | None):
        self.name = name
        self.base = v3_base(url)
        self.body = auth_body(user, password, project, user_domain, project_domain)
        self.pid = pid
        self.scripts: dict[str, Path] = {}
        self.memory_idle: dict | None = None
        self.memory_after: dict | None = None

    def prepare(self, workdir: Path) -> None:
        admin = issue_token(self.base, self.body)
        subject = issue_token(self.base, self.body)
        status, _, payload = http("GET", self.base + "/auth/tokens",
                                  headers={"X-Auth-Token": admin, "X-Subject-Token": subject})
        if status != 200:
            raise BenchError(f"{self.name}: validate returned {status}: {payload[:300]!r}")
        issue = workdir / f"{self.name}-issue.lua"
        issue.write_text(ISSUE_LUA.format(body=lua_str(self.body)))
        validate = workdir / f"{self.name}-validate.lua"
        validate.write_text(VALIDATE_LUA.format(admin=lua_str(admin), subject=lua_str(subject)))
        self.scripts = {"issue": issue, "validate": validate}

    def url_for(self, test: str) -> str:
        return self.base + "/auth/tokens"


# --------------------------------------------------------------------------- stackbox

class StackboxProcess:
    """`stackbox up --detach` in a temp data dir; `stackbox down` on close()."""

    def __init__(self, binary: str, settings: list[str] | None = None):
        self.binary = binary
        self.settings = settings or []
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-stackbox-"))
        self.started = False

    def start(self) -> dict:
        port = free_port()
        cfg = self.data_dir.parent / (self.data_dir.name + ".toml")
        extra = {}
        for item in self.settings:  # "identity.password_cache_seconds=0"
            key, _, value = item.partition("=")
            section, _, name = key.partition(".")
            extra.setdefault(section, []).append(f"{name} = {value}")
        text = '[api]\nbind_address = "127.0.0.1"\n\n[identity]\nport = %d\n' % port
        text += "".join(f"{line}\n" for line in extra.pop("identity", []))
        for section, lines in extra.items():
            text += f"\n[{section}]\n" + "".join(f"{line}\n" for line in lines)
        cfg.write_text(text)
        self.config = cfg
        log(f"starting stackbox: data-dir={self.data_dir} identity port={port}")
        self.started = True
        subprocess.run([self.binary, "up", "--detach", "--data-dir", str(self.data_dir),
                        "--config", str(cfg)], check=True, timeout=300,
                       stdout=sys.stderr)
        import yaml  # PyYAML
        clouds = yaml.safe_load((self.data_dir / "clouds.yaml").read_text())
        auth = clouds["clouds"]["stackbox"]["auth"]
        if not wait_http(v3_base(auth["auth_url"]), 60):
            raise BenchError(f"stackbox identity did not answer at {auth['auth_url']}")
        return auth

    def close(self) -> None:
        if not self.started:
            return
        log("stopping stackbox")
        try:
            subprocess.run([self.binary, "down", "--data-dir", str(self.data_dir)],
                           timeout=120, check=False, stdout=sys.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"stackbox down failed: {e}")
        self.started = False
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            self.config.unlink()
        except OSError:
            pass


def read_pidfile(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.isdir(f"/proc/{pid}") else None


# --------------------------------------------------------------------------- keystone

class KeystonePeer:
    def __init__(self, base: str, port: int, manage: bool):
        self.base = Path(base)
        self.port = port
        self.manage = manage
        self.started_by_us = False
        self.env = {**os.environ, "KEYSTONE_PEER_BASE": str(self.base),
                    "KEYSTONE_PEER_PORT": str(port)}

    def _sh(self, cmd: str, check: bool = True, timeout: int = 1800):
        out = subprocess.PIPE if cmd == "status" else sys.stderr
        return subprocess.run(["bash", str(PEER_SH), cmd], env=self.env, check=check,
                              timeout=timeout, stdout=out, stderr=out, text=True)

    def running(self) -> bool:
        return self._sh("status", check=False).returncode == 0

    def ensure(self) -> None:
        if self.running():
            log("keystone peer already running")
            return
        if not self.manage:
            raise BenchError("keystone peer is not running (use without --no-manage-keystone, "
                             f"or run {PEER_SH} setup && start)")
        if not (self.base / "db" / ".bootstrapped").exists():
            log("keystone peer not set up: running keystone_peer.sh setup (installs packages)")
            self._sh("setup")
        self.started_by_us = True
        self._sh("start", timeout=120)

    def stop(self) -> None:
        if self.started_by_us:
            log("stopping keystone peer")
            self._sh("stop", check=False, timeout=60)
            self.started_by_us = False

    def pid(self) -> int | None:
        return read_pidfile(self.base / "run" / "uwsgi.pid")

    def password(self) -> str:
        return (self.base / "admin-password").read_text().strip()


# --------------------------------------------------------------------------- report

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summarize(targets, runs):
    rows = []
    for t in targets:
        for test in ("issue", "validate"):
            rs = [r for r in runs if r["target"] == t.name and r["test"] == test]
            if not rs:
                continue
            rows.append({
                "target": t.name, "test": test, "rounds": len(rs),
                "rps": median([r["rps"] for r in rs]),
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p99_ms": median([r["p99_ms"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "cpu_ms_per_req": median([r["server_cpu_ms_per_req"] for r in rs]),
                "read_errors": sum(r["socket_errors"]["read"] for r in rs),
                "requests": sum(r["requests"] or 0 for r in rs),
                "rps_all": [round(r["rps"], 1) for r in rs],
            })
    return rows


def print_table(rows, targets, args, runs):
    print()
    print(f"identity benchmark: concurrency={args.concurrency} duration={args.duration}s "
          f"rounds={args.rounds} (medians; errors summed over rounds)")
    print(f"{'target':<10} {'test':<9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"
          f" {'cpu ms/req':>10}   per-round req/s")
    for r in rows:
        print(f"{r['target']:<10} {r['test']:<9} {fmt(r['rps'], '9.1f')} "
              f"{fmt(r['p50_ms'], '9.2f')} {fmt(r['p99_ms'], '9.2f')} {r['errors']:>7}"
              f" {fmt(r['cpu_ms_per_req'], '10.2f')}   {r['rps_all']}")
    loads = [r.get("loadavg1_before") for r in runs]
    if loads:
        print(f"(1-min load average before runs: min {min(loads):.2f}, max {max(loads):.2f}; "
              f"{os.cpu_count()} CPUs. cpu ms/req = CPU time of the server process tree / requests,"
              f" robust to a shared machine)")
    print()
    print(f"{'target':<10} {'idle RSS MiB':>12} {'idle PSS MiB':>12} {'procs':>5} "
          f"{'RSS after MiB':>13}")
    for t in targets:
        m, a = t.memory_idle, t.memory_after
        print(f"{t.name:<10} {fmt(m and m['rss_mb'], '12.1f')} "
              f"{fmt(m and m['pss_mb'], '12.1f')} {fmt(m and m['nproc'], '5d')} "
              f"{fmt(a and a['rss_mb'], '13.1f')}")
    print()


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("stackbox")
    g.add_argument("--stackbox-url", help="stackbox identity URL (with or without /v3)")
    g.add_argument("--user", default="admin")
    g.add_argument("--password")
    g.add_argument("--project", default="admin")
    g.add_argument("--user-domain", default="Default")
    g.add_argument("--project-domain", default="Default")
    g.add_argument("--stackbox-pid", type=int, help="pid whose process tree is measured for RSS")
    g.add_argument("--data-dir", help="stackbox data dir (for stackbox.pid)")
    g.add_argument("--start-stackbox", action="store_true",
                   help="start stackbox (stackbox up --detach) in a temp dir, stop it at the end")
    g.add_argument("--stackbox-setting", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="extra setting for --start-stackbox, e.g. "
                        "identity.password_cache_seconds=0 (repeatable)")
    g.add_argument("--stackbox-bin", default=str(REPO / ".venv" / "bin" / "stackbox"))
    g = p.add_argument_group("keystone")
    g.add_argument("--keystone", action="store_true", help="also benchmark the Keystone peer")
    g.add_argument("--keystone-base", default=os.environ.get("KEYSTONE_PEER_BASE",
                                                             "/tmp/peer-keystone"))
    g.add_argument("--keystone-port", type=int,
                   default=int(os.environ.get("KEYSTONE_PEER_PORT", "15000")))
    g.add_argument("--no-manage-keystone", action="store_true",
                   help="do not setup/start/stop the peer; it must already be running")
    g.add_argument("--keep-keystone", action="store_true",
                   help="leave the peer running if this script started it")
    g = p.add_argument_group("load")
    g.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    g.add_argument("--concurrency", type=int, default=16)
    g.add_argument("--threads", type=int, default=2, help="wrk threads")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load per target")
    g.add_argument("--timeout", type=int, default=30, help="wrk per-request timeout (s)")
    g.add_argument("--tests", default="issue,validate")
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--raw", action="store_true", help="print raw wrk output of each run")
    args = p.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.duration <= 600
            and 1 <= args.concurrency <= 1024 and 1 <= args.threads <= 64):
        p.error("rounds 1..50, duration 1..600, concurrency 1..1024, threads 1..64")
    args.threads = min(args.threads, args.concurrency)
    args.tests = [t for t in args.tests.split(",") if t]
    if not set(args.tests) <= {"issue", "validate"}:
        p.error("--tests: issue,validate")
    if args.stackbox_url and args.start_stackbox:
        p.error("--stackbox-url and --start-stackbox are exclusive")
    if args.stackbox_url and not args.password:
        p.error("--stackbox-url needs --password")
    if not (args.stackbox_url or args.start_stackbox or args.keystone):
        p.error("nothing to benchmark: give --stackbox-url, --start-stackbox and/or --keystone")
    return args


def _term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _term)
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    sb_proc: StackboxProcess | None = None
    peer: KeystonePeer | None = None
    targets: list[Target] = []
    try:
        # ---- stackbox
        if args.start_stackbox or args.stackbox_url:
            if args.start_stackbox:
                sb_proc = StackboxProcess(args.stackbox_bin, args.stackbox_setting)
                auth = sb_proc.start()
                url, user, pw = auth["auth_url"], auth["username"], auth["password"]
                project = auth.get("project_name", "admin")
                udom = auth.get("user_domain_name", "Default")
                pdom = auth.get("project_domain_name", "Default")
                data_dir = sb_proc.data_dir
            else:
                url, user, pw, project = args.stackbox_url, args.user, args.password, args.project
                udom, pdom = args.user_domain, args.project_domain
                data_dir = Path(args.data_dir) if args.data_dir else None
            pid = args.stackbox_pid
            if pid is None and data_dir is not None:
                pid = read_pidfile(Path(data_dir) / "stackbox.pid")
            if pid is None:
                log("stackbox: no pid (--stackbox-pid / --data-dir): RSS not measured")
            sb = Target("stackbox", url, user, pw, project, udom, pdom, pid)
            if sb.pid:
                sb.memory_idle = tree_memory(sb.pid)
            targets.append(sb)
        # ---- keystone
        if args.keystone:
            peer = KeystonePeer(args.keystone_base, args.keystone_port,
                                manage=not args.no_manage_keystone)
            t0 = time.monotonic()
            peer.ensure()
            log(f"keystone peer ready after {time.monotonic() - t0:.1f}s")
            ks = Target("keystone", f"http://127.0.0.1:{args.keystone_port}/v3", "admin",
                        peer.password(), "admin", "Default", "Default", peer.pid())
            if ks.pid:
                ks.memory_idle = tree_memory(ks.pid)
            targets.append(ks)

        for t in targets:
            log(f"{t.name}: {t.base} pid={t.pid} idle={t.memory_idle and t.memory_idle['rss_mb']} MiB")
            t.prepare(workdir)
            if args.warmup > 0:
                for test in args.tests:
                    run_wrk(wrk, t.url_for(test), t.scripts[test], args.warmup,
                            min(4, args.concurrency), 1, args.timeout)

        runs = []
        for rnd in range(1, args.rounds + 1):
            for test in args.tests:
                for t in targets:
                    load = os.getloadavg()[0]
                    cpu0 = tree_cpu_seconds(t.pid)
                    r = run_wrk(wrk, t.url_for(test), t.scripts[test], args.duration,
                                args.concurrency, args.threads, args.timeout)
                    cpu1 = tree_cpu_seconds(t.pid)
                    r.update(target=t.name, test=test, round=rnd, loadavg1_before=load)
                    r["server_cpu_ms_per_req"] = (
                        round((cpu1 - cpu0) * 1000 / r["requests"], 3)
                        if cpu0 is not None and cpu1 is not None and r["requests"] else None)
                    log(f"round {rnd} {t.name:<8} {test:<8} {r['rps']:8.1f} req/s "
                        f"p50 {fmt(r['p50_ms'], '.2f')} ms p99 {fmt(r['p99_ms'], '.2f')} ms "
                        f"errors {r['errors']} (read {r['socket_errors']['read']}) "
                        f"cpu/req {fmt(r['server_cpu_ms_per_req'], '.2f')} ms "
                        f"load {load:.2f}")
                    if args.raw:
                        print(r["raw"], file=sys.stderr)
                    runs.append(r)
        for t in targets:
            if t.pid:
                t.memory_after = tree_memory(t.pid)

        rows = summarize(targets, runs)
        print_table(rows, targets, args, runs)
        if args.json:
            doc = {
                "params": {k: getattr(args, k) for k in
                           ("duration", "concurrency", "threads", "rounds", "warmup",
                            "timeout", "tests")},
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "nproc": os.cpu_count(),
                "results": rows,
                "memory": {t.name: {"idle": t.memory_idle, "after": t.memory_after}
                           for t in targets},
                "runs": [{k: v for k, v in r.items() if k != "raw"} for r in runs],
            }
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
            log(f"wrote {args.json}")
        return 0
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    finally:
        if peer is not None and not args.keep_keystone:
            peer.stop()
        if sb_proc is not None:
            sb_proc.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
