#!/usr/bin/env python3
"""Metadata boot storm: stackbox's metadata server vs. nginx, same run, same box.

Topology (all inside namespaces this script creates and deletes):

    sbx-bc-XXXX (instances)             sbx-bs-XXXX (a network's DHCP namespace)
    eth0: 10.201.1.0 ... +N  --veth--   br0 10.201.0.1/16
          route 169.254.169.254         lo 169.254.169.254   :80 stackbox (socket made here
            via 10.201.0.1                                        by the plumbing)
                                                             :81 nginx, same payload

Every simulated instance is one TCP connection from its own source address
running cloud-init 22.4's request sequence (content.cloud_init_paths) with
keep-alive. Two load models:

- burst (the issue's headline): all instances connect at once and send each
  request as soon as the previous answer arrived; by Little's law the wait
  is ~N / (requests/s) for any server, nginx included;
- paced: instances start at --boot-rate per second and pause --think-ms
  between an answer and the next request (cloud-init spends ~1 s on its
  sequence), i.e. a storm a server can keep up with.

The servers: stackbox's metadata server as production runs it (`stackbox-db`:
sources.Lookup over the network and compute services on a SQLite database
holding N servers and ports, made here by bench/metadata/database.py), the
same server with an in-memory lookup on the loop (`stackbox-mem`, no
database), optionally (`--targets`) the batches in worker threads as on
PostgreSQL (`stackbox-db-thread`) and the database lookup one instance at a
time in threads as before batches (`--before`: `stackbox-db-serial`), and nginx with 2 workers and 1
worker serving instance 0's documents from files. nginx cannot tell
instances apart, so it does strictly less work per request than stackbox,
which finds and builds each instance's documents on first use. A fresh
stackbox server per run, so every storm meets a cold cache.

The load generator is storm.c (compiled here; one epoll loop). Its own
ceiling is measured first: many repeats of the sequence against nginx over
1,000 connections, with its CPU time, so the figures show it is not what
limits the server. Each run records the load average and the kernel's TCP
drop counters (listen queue overflows, SYN retransmissions).

    python bench/metadata/run.py                      # 1,000 and 10,000 instances
    python bench/metadata/run.py --counts 1000 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from bench.metadata import database  # noqa: E402
from stackbox.metadata import content  # noqa: E402

SUBNET = "10.201.0.0/16"
GW = "10.201.0.1"
FIRST = "10.201.1.0"
MD_IP = "169.254.169.254"
NGINX_PORT = 81
NGINX_CACHE = Path("/var/cache/stackbox-test/nginx")


def ip(*args: str, input: str | None = None) -> None:
    subprocess.run(["ip", *args], check=True, timeout=120, capture_output=True,
                   input=input, text=True)


def sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings],
                   check=True, timeout=30, capture_output=True)


def find_nginx() -> str:
    """nginx from PATH, else Debian's package unpacked into a cache (not
    installed: installing it would start a system nginx on port 80)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found:
        return found
    binary = NGINX_CACHE / "root/usr/sbin/nginx"
    if not binary.exists():
        NGINX_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "nginx"], cwd=NGINX_CACHE, check=True,
                       timeout=300, capture_output=True)
        deb = sorted(NGINX_CACHE.glob("nginx_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(NGINX_CACHE / "root")], check=True,
                       timeout=120)
    return str(binary)


def compile_storm(work: Path) -> str:
    out = work / "storm"
    subprocess.run(["cc", "-O2", "-o", str(out), str(HERE / "storm.c")], check=True,
                   timeout=120)
    return str(out)


def write_payload(work: Path, db_url: str) -> tuple[Path, Path]:
    """Instance 0's documents (read through the production lookup) as nginx
    files (a directory's listing in `<dir>/_index`, served by try_files) and
    the request sequence, with @MAC@ where each instance puts its MAC."""
    from stackbox.metadata.sources import Lookup
    compute, network = database.services(db_url, work)
    instance = Lookup(compute, network)(database.network_id(network.db), FIRST)
    network.db.dispose()
    docs = content.build(instance)
    root = work / "docroot"
    for path, body in docs.paths.items():
        is_dir = any(p.startswith(path + "/") for p in docs.paths) or path == ""
        target = root / path / "_index" if is_dir else root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    paths = work / "paths.txt"
    paths.write_text("\n".join(p.replace(database.mac(0), "@MAC@")
                               for p in content.cloud_init_paths(docs)) + "\n")
    return root, paths


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {work}/nginx{port}.pid;
error_log {work}/nginx{port}-error.log warn;
events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 65;
    server_tokens off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen {ip}:{port} reuseport backlog=65535;
        root {root};
        # every instance asks for its own MAC's directory; serve instance 0's
        rewrite "^/latest/meta-data/network/interfaces/macs/[0-9a-f:]{{17}}(.*)$"
                /latest/meta-data/network/interfaces/macs/{mac}$1;
        location / {{ try_files $uri/_index $uri =404; }}
    }}
}}
"""


class Topology:
    def __init__(self, count: int):
        suffix = secrets.token_hex(3)
        self.srv, self.cli = f"sbx-bs-{suffix}", f"sbx-bc-{suffix}"
        self.count = count

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        for ns in (self.srv, self.cli):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            sysctl(ns, "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535")
        ip("-n", self.srv, "link", "add", "br0", "type", "bridge")
        ip("-n", self.srv, "addr", "add", f"{GW}/16", "dev", "br0")
        ip("-n", self.srv, "link", "set", "br0", "up")
        ip("-n", self.srv, "link", "add", "vbr0", "type", "veth", "peer", "name", "eth0",
           "netns", self.cli)
        ip("-n", self.srv, "link", "set", "vbr0", "master", "br0", "up")
        first = int(ipaddress.ip_address(FIRST))
        batch = "".join(f"addr add {ipaddress.ip_address(first + i)}/16 dev eth0\n"
                        for i in range(self.count))
        ip("-n", self.cli, "-batch", "-", input=batch)
        ip("-n", self.cli, "link", "set", "eth0", "up")
        ip("-n", self.cli, "route", "add", f"{MD_IP}/32", "via", GW)
        ip("-n", self.srv, "addr", "add", f"{MD_IP}/32", "dev", "lo")   # for nginx
        # The kernel's neighbour table is shared by all namespaces and capped
        # by the host's gc_thresh3 (1,024 here): 10,000 instances' ARP entries
        # would overflow it. Permanent entries do not count against the cap,
        # and we leave the host's sysctls alone.
        mac = json.loads(subprocess.run(["ip", "-n", self.cli, "-j", "link", "show", "eth0"],
                                        capture_output=True, text=True, check=True,
                                        timeout=30).stdout)[0]["address"]
        ip("-n", self.srv, "-batch", "-", input="".join(
            f"neigh replace {ipaddress.ip_address(first + i)} lladdr {mac} dev br0 nud permanent\n"
            for i in range(self.count)))

    def __exit__(self, *exc) -> None:
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "del", ns], timeout=60, capture_output=True)


def proc_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024,
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks}


class Stackbox:
    def __init__(self, topo: Topology, count: int, work: Path, db_url: str, lookup: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve.py"), "--namespace", topo.srv,
             "--first-ip", FIRST, "--count", str(count), "--cidr", SUBNET,
             "--lookup", lookup, "--database", db_url, "--data-dir", str(work)],
            stdout=subprocess.PIPE, stderr=open(work / "serve.log", "ab"), text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"metadata server did not start: see {work}/serve.log")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nginx:
    def __init__(self, topo: Topology, root: Path, work: Path, *, port: int, workers: int):
        (work / "nginx-tmp").mkdir(exist_ok=True)
        self.port = port
        conf = work / f"nginx{port}.conf"
        conf.write_text(NGINX_CONF.format(work=work, ip=MD_IP, port=port, root=root,
                                          workers=workers, mac=database.mac(0)))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.srv, find_nginx(), "-c", str(conf), "-p", str(work),
             "-g", "daemon off;"], stderr=open(work / "nginx.log", "ab"))
        time.sleep(1.0)
        if self.proc.poll() is not None:
            err = work / f"nginx{port}-error.log"
            log = err.read_text() if err.exists() else ""
            raise RuntimeError(f"nginx did not start: {log}{(work / 'nginx.log').read_text()}")

    def tree_figures(self) -> dict:
        pids = [self.proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()]
        figs = [proc_figures(p) for p in pids]
        return {k: sum(f[k] for f in figs) for k in figs[0]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@dataclass(frozen=True)
class Mode:
    """How the simulated instances behave (see the module docstring)."""
    name: str
    think_ms: float = 0.0
    boot_rate: float = 0.0          # instances started per second; 0 = all at once

    def ramp_s(self, count: int) -> float:
        return count / self.boot_rate if self.boot_rate else 0.0


BURST = Mode("burst")


def storm(storm_bin: str, topo: Topology, port: int, count: int, paths: Path, *,
          mode: Mode = BURST, repeat: int = 1, timeout: float = 300) -> dict:
    proc = subprocess.run(
        ["ip", "netns", "exec", topo.cli, "prlimit", "--nofile=20000:20000", storm_bin,
         MD_IP, str(port), FIRST, str(count), str(paths), str(timeout), str(repeat),
         str(mode.think_ms), str(mode.ramp_s(count))],
        capture_output=True, text=True, timeout=timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"storm failed: {proc.stderr}")
    return json.loads(proc.stdout)


NSTAT = {"TcpExtListenOverflows": "listen_overflows", "TcpExtListenDrops": "listen_drops",
         "TcpExtTCPSynRetrans": "syn_retrans", "TcpRetransSegs": "retrans_segs"}


def tcp_counters(topo: Topology) -> dict:
    """The TCP drop counters of both namespaces, and the host's per-CPU
    input backlog drops (`netdev_max_backlog`, host-wide)."""
    out = dict.fromkeys(NSTAT.values(), 0)
    for ns in (topo.srv, topo.cli):
        text = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True,
                              text=True, timeout=30).stdout
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in NSTAT:
                out[NSTAT[parts[0]]] += int(parts[1])
    out["backlog_drops"] = sum(int(line.split()[1], 16) for line in
                               Path("/proc/net/softnet_stat").read_text().splitlines())
    return out


def measured(topo: Topology, run) -> dict:
    """run() -> result, with the counters' deltas and the load average."""
    load = os.getloadavg()[0]
    before = tcp_counters(topo)
    r = run()
    after = tcp_counters(topo)
    r.update({k: after[k] - before[k] for k in after}, load1=load)
    return r


def failures(r: dict) -> int:
    return r["errors"] + r["non_200"] + r["connect_errors"] + r["unfinished"]


STACKBOX = {"stackbox-db": "db", "stackbox-db-thread": "db-thread",
            "stackbox-db-serial": "db-serial", "stackbox-mem": "inline"}


def run_target(target: str, storm_bin: str, topo: Topology, nginxes: dict, count: int,
               paths: Path, work: Path, db_url: str, mode: Mode) -> dict:
    if target in nginxes:
        nginx = nginxes[target]
        ip("-n", topo.srv, "addr", "replace", f"{MD_IP}/32", "dev", "lo")
        before = nginx.tree_figures()
        r = measured(topo, lambda: storm(storm_bin, topo, nginx.port, count, paths, mode=mode))
        after = nginx.tree_figures()
        r.update(target=target, rss_mib=after["rss_mib"],
                 server_cpu_s=after["cpu_s"] - before["cpu_s"])
        return r
    # A fresh server per run: a boot storm meets a cold cache.
    sbx = Stackbox(topo, count, work, db_url, STACKBOX[target])
    try:
        before = proc_figures(sbx.proc.pid)
        r = measured(topo, lambda: storm(storm_bin, topo, 80, count, paths, mode=mode))
        after = proc_figures(sbx.proc.pid)
    finally:
        sbx.stop()
    r.update(target=target, rss_mib=after["rss_mib"], peak_rss_mib=after["peak_rss_mib"],
             idle_rss_mib=before["rss_mib"], server_cpu_s=after["cpu_s"] - before["cpu_s"])
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved repetitions; medians are reported")
    ap.add_argument("--modes", default="burst,paced", help="burst, paced or both")
    ap.add_argument("--think-ms", type=float, default=25.0,
                    help="paced: pause between an answer and the next request")
    ap.add_argument("--boot-rate", type=float, default=200.0,
                    help="paced: instances started per second")
    ap.add_argument("--targets", default="nginx,nginx-1worker,stackbox-db,stackbox-mem")
    ap.add_argument("--before", action="store_true",
                    help="also run stackbox-db-serial (one lookup per instance)")
    ap.add_argument("--json", help="write all raw results here")
    args = ap.parse_args()
    targets = args.targets.split(",") + (["stackbox-db-serial"] if args.before else [])
    modes = [{"burst": BURST, "paced": Mode("paced", args.think_ms, args.boot_rate)}[m]
             for m in args.modes.split(",")]
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sbx-mdbench-"))
    os.chmod(work, 0o755)
    results: dict = {"ceiling": None, "runs": [], "modes": {
        m.name: {"think_ms": m.think_ms, "boot_rate": m.boot_rate} for m in modes}}
    try:
        storm_bin = compile_storm(work)
        db_url = f"sqlite:///{work}/stackbox.sqlite"
        started = time.perf_counter()
        database.create(db_url, cidr=SUBNET, first_ip=FIRST, count=max(counts), data_dir=work)
        print(f"database: {max(counts)} servers and ports in "
              f"{time.perf_counter() - started:.1f} s")
        root, paths = write_payload(work, db_url)
        nseq = len(paths.read_text().split())
        print(f"sequence: {nseq} requests per instance (cloud-init 22.4, keep-alive)")
        with Topology(max(counts)) as topo:
            # nginx as Debian ships it (one worker per core) and with one
            # worker: the stackbox server is one event loop, i.e. one core.
            nginxes = {"nginx": Nginx(topo, root, work, port=NGINX_PORT, workers=os.cpu_count() or 1),
                       "nginx-1worker": Nginx(topo, root, work, port=NGINX_PORT + 1, workers=1)}
            try:
                # warm-up: resolves every neighbour once, like a network in use
                storm(storm_bin, topo, NGINX_PORT, max(counts), paths)
                conns = min(1000, max(counts))
                ceiling = storm(storm_bin, topo, NGINX_PORT, conns, paths, repeat=5)
                results["ceiling"] = ceiling
                print(f"load generator ceiling (nginx, {conns:,} conns x 5 sequences): "
                      f"{ceiling['rps']:.0f} req/s using {ceiling['client_cpu_s']:.2f} CPU-s "
                      f"in {ceiling['seconds']:.2f} s")
                for rnd in range(args.rounds):
                    for mode in modes:
                        for count in counts:
                            for target in targets:
                                r = run_target(target, storm_bin, topo, nginxes, count, paths,
                                               work, db_url, mode)
                                r.update(round=rnd, mode=mode.name)
                                results["runs"].append(r)
                                print_run(r)
                                if args.json:      # a cut-short run keeps what it measured
                                    Path(args.json).write_text(json.dumps(
                                        results, indent=2, sort_keys=True))
            finally:
                for nginx in nginxes.values():
                    nginx.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(results, counts, targets, modes)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


def print_run(r: dict) -> None:
    print(f"  round {r['round']} {r['mode']:5} {r['target']:18} {r['instances']:6}: "
          f"{r['rps']:7.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
          f"first p99 {r['first_p99_ms']:8.2f} ms  errors {failures(r)}  "
          f"CPU {r['server_cpu_s']:.2f} s ({per_cpu_s(r):.0f} req/CPU-s)  "
          f"RSS {r['rss_mib']:.0f} MiB  load {r['load1']:.1f}  "
          f"SYN retrans {r['syn_retrans']}  listen overflows {r['listen_overflows']}  "
          f"backlog drops {r['backlog_drops']}", flush=True)


def per_cpu_s(r: dict) -> float:
    return r["requests"] / max(r["server_cpu_s"], 1e-9)


def print_summary(results: dict, counts: list[int], targets: list[str], modes: list) -> None:
    print("\nmedians         instances    req/s   p50 ms   p99 ms  first p99 ms  errors"
          "  RSS MiB  req/CPU-s  load")
    for mode in modes:
        for count in counts:
            med = {}
            for target in targets:
                runs = [r for r in results["runs"] if r["target"] == target
                        and r["instances"] == count and r["mode"] == mode.name]
                if not runs:
                    continue
                m = {k: statistics.median(r[k] for r in runs)
                     for k in ("rps", "p50_ms", "p99_ms", "rss_mib", "first_p99_ms", "load1")}
                m["per_cpu_s"] = statistics.median(per_cpu_s(r) for r in runs)
                m["errors"] = sum(failures(r) for r in runs)
                med[target] = m
                print(f"  {mode.name:5} {target:18} {count:6} {m['rps']:8.0f} "
                      f"{m['p50_ms']:8.1f} {m['p99_ms']:8.1f} {m['first_p99_ms']:12.1f} "
                      f"{m['errors']:7} {m['rss_mib']:8.0f} {m['per_cpu_s']:10.0f} "
                      f"{m['load1']:5.1f}")
            for target in [t for t in targets if t.startswith("stackbox")]:
                for peer in ("nginx", "nginx-1worker"):
                    if target in med and peer in med:
                        print(f"  {mode.name} {target} / {peer} req/s at {count}: "
                              f"{med[target]['rps'] / med[peer]['rps']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
