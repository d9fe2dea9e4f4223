"""What a compute host offers, for placement and os-hypervisors."""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
from pathlib import Path

from stackbox.common import hostops


def qemu_version_number(qemu_binary: str) -> int:
    """QEMU 7.2.22 -> 7002022, the way nova reports hypervisor_version."""
    try:
        out = hostops.run([qemu_binary, "--version"], timeout=15, check=False).stdout
    except (OSError, hostops.CommandTimeout):
        return 0
    return parse_version(out.decode(errors="replace"))


def parse_version(text: str) -> int:
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return 0
    major, minor, micro = (int(x or 0) for x in match.groups())
    return major * 1_000_000 + minor * 1_000 + micro


def _meminfo_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "model name", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def host_resources(instances_dir: Path, qemu_version: int) -> dict:
    cpus = os.cpu_count() or 1
    cpu = _cpuinfo()
    return {
        "vcpus": cpus,
        "memory_mb": _meminfo_mb(),
        "disk_gb": shutil.disk_usage(instances_dir).total // 1024 ** 3,
        "hypervisor_type": "QEMU",
        "hypervisor_version": qemu_version,
        "cpu_info": {
            "arch": platform.machine(),
            "model": cpu.get("model name", ""),
            "vendor": cpu.get("vendor_id", ""),
            "topology": {"sockets": 1, "cores": cpus, "threads": 1},
            "features": sorted(cpu.get("flags", "").split()),
        },
    }


def uptime_text() -> str:
    """This host's uptime as `uptime(1)` prints it (Nova's hypervisor uptime
    field, which the CLI parses)."""
    with open("/proc/uptime") as f:
        seconds = int(float(f.read().split()[0]))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%H:%M:%S')} up {seconds // 86400} days, "
            f"{seconds % 86400 // 3600}:{seconds % 3600 // 60:02d},  0 users,  "
            f"load average: {load}")
