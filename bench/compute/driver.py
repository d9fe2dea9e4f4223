#!/usr/bin/env python3
"""QEMU driver benchmark: the tiny guest through QemuDriver vs. the same
guest started by a bare `qemu-system-x86_64` command (the peer: what the
driver adds on top of QEMU itself).

Per round, interleaved (the machine is shared, so medians are reported):

* driver: spawn (disks, config drive, QEMU start) -> `ready` marker on the
  console; then suspend, resume (power_on), snapshot of the 1 GiB root,
  hard power_off, destroy -- each timed;
* bare:   Popen(qemu ... -kernel -initrd, the same root disk and config
  drive, serial to a file) -> `ready`.

Usage: python bench/compute/driver.py [--rounds 3] [--accel tcg] [--json out.json]
Needs the tiny guest (`stackbox image build tiny`, or the test cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stackbox.compute.drivers.base import ImageFile, InstanceSpec  # noqa: E402
from stackbox.compute.drivers.qemu import QemuDriver  # noqa: E402
from stackbox.guest import configdrive  # noqa: E402
from stackbox.guest.tiny import build_tiny  # noqa: E402

READY = "STACKBOX-TINY: ready"


def wait_marker(path: Path, started: float, timeout: float = 180) -> float:
    while time.monotonic() - started < timeout:
        try:
            if READY in path.read_text(errors="replace"):
                return time.monotonic() - started
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no ready marker in {path} after {timeout} s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def driver_round(driver: QemuDriver, tiny, work: Path) -> dict:
    uid = str(uuid.uuid4())
    iso = configdrive.build_config_drive(
        driver.config_drive_path(uid),
        configdrive.openstack_layout({"uuid": uid, "name": "bench"}, None, None, None))
    spec = InstanceSpec(uuid=uid, name="bench", vcpus=1, memory_mb=128, root_gb=1,
                        kernel=ImageFile("k", tiny.kernel, "aki"),
                        ramdisk=ImageFile("r", tiny.initramfs, "ari"),
                        kernel_cmdline=tiny.cmdline, config_drive=iso)
    out = {}
    try:
        t = time.monotonic()
        driver.spawn(spec)
        out["spawn_call_s"] = time.monotonic() - t
        out["ready_s"] = wait_marker(driver.paths(uid).console_log, t)
        out["qemu_rss_mib"] = rss_mib(int(driver.paths(uid).pidfile.read_text()))
        for name, op in (("suspend_s", lambda: driver.suspend(uid)),
                         ("resume_s", lambda: driver.power_on(spec)),
                         ("snapshot_s", lambda: driver.snapshot(uid, work / f"{uid}.qcow2")),
                         ("power_off_hard_s", lambda: driver.power_off(uid, timeout=0)),
                         ("destroy_s", lambda: driver.destroy(uid))):
            t = time.monotonic()
            op()
            out[name] = time.monotonic() - t
    finally:
        driver.destroy(uid)
        (work / f"{uid}.qcow2").unlink(missing_ok=True)
    return out


def bare_round(tiny, work: Path, accel: str) -> dict:
    """The same guest hardware the driver gives (1 GiB virtio root, config
    drive on IDE), by hand: the difference is the driver's own work."""
    uid = str(uuid.uuid4())
    log = work / f"bare-{uid}.log"
    disk = work / f"bare-{uid}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"],
                   check=True, timeout=60)
    iso = configdrive.build_config_drive(
        work / f"bare-{uid}.iso",
        configdrive.openstack_layout({"uuid": uid, "name": "bench"}, None, None, None))
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", "128", "-nodefaults",
            "-no-user-config", "-display", "none", "-monitor", "none",
            "-serial", f"file:{log}", "-kernel", str(tiny.kernel),
            "-initrd", str(tiny.initramfs), "-append", tiny.cmdline,
            "-drive", f"file={disk},if=virtio,format=qcow2",
            "-drive", f"file={iso},media=cdrom,if=ide,readonly=on"]
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ready = wait_marker(log, t)
        return {"ready_s": ready, "qemu_rss_mib": rss_mib(proc.pid)}
    finally:
        proc.kill()
        proc.wait(10)
        for f in (log, disk, iso):
            f.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    ap.add_argument("--cache", default=os.environ.get("STACKBOX_TEST_CACHE",
                                                      "/var/cache/stackbox-test"))
    ap.add_argument("--json")
    args = ap.parse_args()
    tiny = build_tiny(Path(args.cache), progress=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-"))
    driver = QemuDriver(work / "instances", accel=args.accel)
    rows: dict[str, list[dict]] = {"driver": [], "bare": []}
    try:
        for i in range(args.rounds):
            rows["driver"].append(driver_round(driver, tiny, work))
            rows["bare"].append(bare_round(tiny, work, args.accel))
            print(f"round {i + 1}: driver ready {rows['driver'][-1]['ready_s']:.1f} s, "
                  f"bare ready {rows['bare'][-1]['ready_s']:.1f} s", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(work)], timeout=60)
    load = os.getloadavg()[0]
    print(f"\nQEMU driver vs bare QEMU, tiny guest, {args.accel}, {args.rounds} interleaved "
          f"rounds, medians (load average {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'figure':<22}{'driver':>10}{'bare qemu':>12}")
    for key in ("ready_s", "qemu_rss_mib", "spawn_call_s", "suspend_s", "resume_s",
                "snapshot_s", "power_off_hard_s", "destroy_s"):
        d = statistics.median(r[key] for r in rows["driver"])
        b = [r[key] for r in rows["bare"] if key in r]
        print(f"{key:<22}{d:>10.2f}{statistics.median(b) if b else float('nan'):>12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
