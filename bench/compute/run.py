#!/usr/bin/env python3
"""Compute benchmark (not a test). Starts its own stackbox in a temporary data
dir and measures, with real QEMU guests (TCG where KVM does not work):

1. control-plane overhead: POST /servers sent -> QEMU process started, over N
   sequential boots (p50/p99);
2. boot -> ACTIVE and boot -> the tiny guest's "metadata" console marker;
3. C concurrent boots on one host: all ACTIVE?, time, stackbox peak RSS, RSS per VM;
4. GET /servers/detail and `openstack server list` with 1,000 servers, on a
   second stackbox whose compute driver is `noop` (records only: labelled so).

    .venv/bin/python bench/compute/run.py [--boots 20] [--concurrent 20] [--records 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

VENV = Path(sys.executable).parent
CACHE = os.environ.get("STACKBOX_TEST_CACHE", "/var/cache/stackbox-test")
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def proc_start(pid: int) -> float:
    """A process's start, in seconds since boot (resolution 1/CLK_TCK)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / TICKS


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def qemu_pid(uuid: str) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{uuid}"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0]) if out else None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Stackbox:
    def __init__(self, *, driver: str):
        self.root = Path(tempfile.mkdtemp(prefix="sbx-bench-compute-"))
        self.ports = {n: free_port() for n in ("identity", "image", "compute")}
        self.config = self.root / "stackbox.toml"
        self.config.write_text(
            f"[identity]\nport = {self.ports['identity']}\n"
            f"[image]\nport = {self.ports['image']}\n"
            f"[compute]\nport = {self.ports['compute']}\ndriver = \"{driver}\"\n"
            f"guest_cache_dir = \"{CACHE}\"\n")
        self.data = self.root / "data"

    def cli(self, *args, check=True):
        return subprocess.run([str(VENV / "stackbox"), *args, "--config", str(self.config),
                               "--data-dir", str(self.data)], check=check,
                              capture_output=True, text=True)

    def start(self):
        self.cli("up", "--detach")
        import yaml
        clouds = yaml.safe_load((self.data / "clouds.yaml").read_text())["clouds"]
        auth = clouds["stackbox"]["auth"]
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": auth["password"]}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        r = requests.post(f"http://127.0.0.1:{self.ports['identity']}/v3/auth/tokens",
                          json=body, timeout=30)
        self.project = r.json()["token"]["project"]["id"]
        self.session = requests.Session()
        self.session.headers.update({"X-Auth-Token": r.headers["X-Subject-Token"],
                                     "OpenStack-API-Version": "compute 2.90"})
        self.nova = f"http://127.0.0.1:{self.ports['compute']}/v2.1"
        images = requests.get(f"http://127.0.0.1:{self.ports['image']}/v2/images",
                              headers={"X-Auth-Token": r.headers["X-Subject-Token"]},
                              params={"name": "tiny"}, timeout=30).json()["images"]
        self.image = images[0]["id"]
        self.pid = int((self.data / "stackbox.pid").read_text())
        # room for the benchmark's servers
        self.session.put(f"{self.nova}/os-quota-sets/{self.project}", json={"quota_set": {
            "instances": -1, "cores": -1, "ram": -1}}, timeout=30).raise_for_status()

    def create(self, name: str, count: int = 1) -> list[str]:
        r = self.session.post(f"{self.nova}/servers", json={"server": {
            "name": name, "imageRef": self.image, "flavorRef": "c1", "networks": "none",
            "config_drive": True, "min_count": count, "max_count": count,
            "return_reservation_id": count > 1}}, timeout=60)
        r.raise_for_status()
        if count == 1:
            return [r.json()["server"]["id"]]
        rid = r.json()["reservation_id"]
        servers = self.session.get(f"{self.nova}/servers", params={"name": f"^{name}-"},
                                   timeout=60).json()["servers"]
        assert len(servers) == count, (rid, len(servers))
        return [s["id"] for s in servers]

    def status(self, sid: str) -> str:
        return self.session.get(f"{self.nova}/servers/{sid}", timeout=30).json()["server"][
            "status"]

    def console(self, sid: str) -> str:
        r = self.session.post(f"{self.nova}/servers/{sid}/action",
                              json={"os-getConsoleOutput": {}}, timeout=30)
        return r.json().get("output", "") if r.ok else ""

    def delete_all(self):
        for s in self.session.get(f"{self.nova}/servers", params={"all_tenants": 1},
                                  timeout=120).json()["servers"]:
            self.session.delete(f"{self.nova}/servers/{s['id']}", timeout=30)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not self.session.get(f"{self.nova}/servers", timeout=60).json()["servers"]:
                return
            time.sleep(0.5)

    def stop(self):
        try:
            self.delete_all()
        finally:
            self.cli("down", "--purge", check=False)
            shutil.rmtree(self.root, ignore_errors=True)


def bench_boots(sb: Stackbox, n: int) -> dict:
    overhead, active, marker = [], [], []
    for i in range(n):
        sent = boottime()
        t0 = time.monotonic()
        sid = sb.create(f"seq{i}")[0]
        pid = None
        while pid is None and time.monotonic() - t0 < 60:
            pid = qemu_pid(sid)
            if pid is None:
                time.sleep(0.005)
        if pid is not None:
            overhead.append(proc_start(pid) - sent)
        while sb.status(sid) != "ACTIVE" and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        active.append(time.monotonic() - t0)
        while "STACKBOX-TINY: metadata" not in sb.console(sid) and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        marker.append(time.monotonic() - t0)
        sb.session.delete(f"{sb.nova}/servers/{sid}", timeout=30)
        while qemu_pid(sid) is not None:
            time.sleep(0.1)
    return {"overhead_p50_s": statistics.median(overhead), "overhead_p99_s": pct(overhead, 99),
            "active_p50_s": statistics.median(active), "active_p99_s": pct(active, 99),
            "metadata_p50_s": statistics.median(marker), "metadata_p99_s": pct(marker, 99),
            "boots": n}


def bench_concurrent(sb: Stackbox, n: int) -> dict:
    t0 = time.monotonic()
    ids = sb.create("conc", n)
    peak = rss_kib(sb.pid)
    done: dict[str, str] = {}
    while len(done) < n and time.monotonic() - t0 < 600:
        for sid in ids:
            if sid not in done:
                st = sb.status(sid)
                if st in ("ACTIVE", "ERROR"):
                    done[sid] = st
        peak = max(peak, rss_kib(sb.pid))
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    vm_rss = [rss_kib(p) for p in (qemu_pid(s) for s in ids) if p]
    result = {"servers": n, "active": sum(1 for v in done.values() if v == "ACTIVE"),
              "all_active_s": elapsed, "stackbox_peak_rss_mib": max(peak, rss_kib(sb.pid, "VmHWM")) / 1024,
              "vm_rss_mib_mean": statistics.mean(vm_rss) / 1024 if vm_rss else None}
    sb.delete_all()
    return result


def bench_list(sb: Stackbox, n: int) -> dict:
    made = 0
    while made < n:
        batch = min(100, n - made)
        sb.create(f"rec{made}", batch)
        made += batch
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        r = sb.session.get(f"{sb.nova}/servers/detail", timeout=60)
        times.append(time.perf_counter() - t0)
        assert len(r.json()["servers"]) == n
    simple = []
    for _ in range(30):
        t0 = time.perf_counter()
        sb.session.get(f"{sb.nova}/servers", timeout=60)
        simple.append(time.perf_counter() - t0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["OS_CLIENT_CONFIG_FILE"] = str(sb.data / "clouds.yaml")
    cli = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([str(VENV / "openstack"), "--os-cloud", "stackbox", "server", "list",
                        "-f", "value", "-c", "ID"], env=env, check=True, capture_output=True)
        cli.append(time.perf_counter() - t0)
    return {"records": n, "detail_p50_ms": statistics.median(times) * 1000,
            "detail_p99_ms": pct(times, 99) * 1000,
            "list_p50_ms": statistics.median(simple) * 1000,
            "cli_server_list_p50_s": statistics.median(cli)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boots", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("--records", type=int, default=1000)
    args = p.parse_args()
    results = {}
    sb = Stackbox(driver="qemu")
    try:
        log("starting stackbox (qemu driver)")
        sb.start()
        accel = json.loads(sb.session.get(f"{sb.nova}/os-hypervisors/detail", headers={
            "OpenStack-API-Version": "compute 2.87"}, timeout=30).text)
        results["host"] = {"load_before": os.getloadavg()[0],
                           "hypervisors": len(accel["hypervisors"])}
        log(f"{args.boots} sequential boots")
        results["sequential"] = bench_boots(sb, args.boots)
        log(f"{args.concurrent} concurrent boots")
        results["concurrent"] = bench_concurrent(sb, args.concurrent)
    finally:
        sb.stop()
    sb = Stackbox(driver="noop")
    try:
        log(f"starting stackbox (noop driver: records only) and creating {args.records} servers")
        sb.start()
        results["list_noop_driver"] = bench_list(sb, args.records)
    finally:
        sb.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
