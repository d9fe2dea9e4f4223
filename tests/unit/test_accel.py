"""Accelerator probe: image/argv builders, caching and the decision logic.

QEMU is faked by a hostops.run stand-in that writes the serial log a real
guest would; one test boots the real boot sector under TCG when QEMU is
installed (0.1 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackbox.common import hostops
from stackbox.compute.drivers import accel

VERSION = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"


# --- builders -----------------------------------------------------------------

def test_boot_sector_is_a_valid_mbr_pointing_at_its_marker():
    image = accel.boot_sector_image("HELLO")
    assert len(image) == 512 and image[510:] == b"\x55\xaa"
    text_at = image.index(b"HELLO\r\n\0")
    # `mov si, imm16` (0xbe) must load the marker's load address.
    imm = image.index(b"\xbe") + 1
    assert int.from_bytes(image[imm:imm + 2], "little") == 0x7C00 + text_at
    assert b"\xba\xf8\x03" in image  # mov dx, 0x3f8 (COM1)


def test_boot_sector_rejects_marker_that_does_not_fit():
    with pytest.raises(ValueError):
        accel.boot_sector_image("x" * 600)


def test_kernel_argv(tmp_path):
    argv = accel.kernel_argv("qemu", "kvm", tmp_path / "vmlinuz", tmp_path / "s.log",
                             tmp_path / "q.pid")
    assert argv[:3] == ["qemu", "-accel", "kvm"]
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1"
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert f"file:{tmp_path / 's.log'}" in argv
    assert argv[argv.index("-pidfile") + 1] == str(tmp_path / "q.pid")


def test_boot_sector_argv(tmp_path):
    argv = accel.boot_sector_argv("qemu", "tcg", tmp_path / "mbr", tmp_path / "s.log",
                                  tmp_path / "q.pid")
    assert argv[:3] == ["qemu", "-accel", "tcg"]
    assert f"file={tmp_path / 'mbr'},format=raw,if=floppy" in argv
    assert any(a.startswith("isa-debug-exit,iobase=0xf4") for a in argv)


def test_describe_kvm_failure():
    run = accel._Run
    assert "emulation failure" in accel.describe_kvm_failure(
        run("", "KVM internal error. Suberror: 1\nemulation failure", False, 1), 20)
    assert "no kernel output in 20 s" in accel.describe_kvm_failure(
        run("Probing EDD (edd=off to disable)... ok", "", True, 20), 20)
    assert "did not finish" in accel.describe_kvm_failure(
        run("[0.0] Linux version 6.1", "", True, 20), 20)
    assert "failed to set MSR" in accel.describe_kvm_failure(
        run("", "qemu: warning: x\nqemu: error: failed to set MSR 0x10a", False, 0), 20)


# --- cache --------------------------------------------------------------------

def test_cache_roundtrip_and_key_mismatch(tmp_path):
    result = accel.AccelResult("tcg", False, "broken", True)
    key = accel.cache_key(VERSION, "6.1.0")
    accel.store_cached(tmp_path, key, result)
    assert accel.load_cached(tmp_path, key) == result
    assert accel.load_cached(tmp_path, accel.cache_key(VERSION, "6.2.0")) is None
    assert [p.name for p in tmp_path.iterdir()] == [accel.CACHE_FILE]  # no temp left


def test_cache_corrupt_or_absent(tmp_path):
    assert accel.load_cached(None, "k") is None
    assert accel.load_cached(tmp_path, "k") is None
    (tmp_path / accel.CACHE_FILE).write_text("{not json")
    assert accel.load_cached(tmp_path, "k") is None
    (tmp_path / accel.CACHE_FILE).write_text(json.dumps({"key": "k", "result": {"x": 1}}))
    assert accel.load_cached(tmp_path, "k") is None
    accel.store_cached(None, "k", accel.AccelResult("tcg", False, "", True))  # no-op


# --- the decision, with QEMU faked ----------------------------------------------

class FakeQemu:
    """Stands in for hostops.run: behaves per (probe kind, accel)."""

    def __init__(self, behaviour: dict[tuple[str, str], str]):
        self.behaviour = behaviour  # value: "ok" | "silent" | "timeout"
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout, check=True, input=None, env=None):
        self.calls.append(argv)
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, VERSION.encode() + b"\n", b"")
        kind = "kernel" if "-kernel" in argv else "mbr"
        mode = self.behaviour[(kind, argv[argv.index("-accel") + 1])]
        serial = Path(argv[argv.index("-serial") + 1].removeprefix("file:"))
        if mode == "ok":
            serial.write_text(accel.BOOT_MARKER if kind == "mbr" else
                              "Linux version 6.1\nKernel panic - not syncing: VFS: "
                              "Unable to mount root fs on unknown-block(0,0)\n")
        if mode == "timeout":
            raise hostops.CommandTimeout(argv, timeout)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    def boots(self) -> int:
        return sum(1 for c in self.calls if "-accel" in c)


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / accel.KERNEL_SUBDIR).mkdir(parents=True)
    (cache / accel.KERNEL_SUBDIR / "vmlinuz-6.1.0-test").write_bytes(b"kernel")
    monkeypatch.setattr(accel, "_kvm_device_error", lambda: None)

    def install(behaviour):
        fake = FakeQemu(behaviour)
        monkeypatch.setattr(accel.hostops, "run", fake)
        return fake
    return cache, install


def test_kvm_works(probe_env):
    cache, install = probe_env
    fake = install({("mbr", "tcg"): "ok", ("kernel", "kvm"): "ok"})
    result = accel.probe_accelerator(cache_dir=cache, timeout=5)
    assert (result.accel, result.kvm_ok, result.tcg_ok) == ("kvm", True, True)
    assert "booted a Linux kernel" in result.reason
    assert fake.boots() == 2  # no TCG kernel control run when KVM works


def test_broken_kvm_is_cached_and_not_probed_again(probe_env):
    cache, install = probe_env
    fake = install({("mbr", "tcg"): "ok", ("kernel", "kvm"): "timeout",
                    ("kernel", "tcg"): "ok"})
    result = accel.probe_accelerator(cache_dir=cache, timeout=5)
    assert (result.accel, result.kvm_ok, result.tcg_ok) == ("tcg", False, True)
    assert "no kernel output" in result.reason and "boots under TCG" in result.reason
    saved = json.loads((cache / accel.CACHE_FILE).read_text())
    assert saved["key"] == accel.cache_key(VERSION, os.uname().release)
    boots = fake.boots()
    assert accel.probe_accelerator(cache_dir=cache, timeout=5) == result
    assert fake.boots() == boots  # served from the cache


def test_boot_sector_passing_under_kvm_is_not_trusted(probe_env):
    # What this machine does: the 16-bit MBR runs under nested KVM, Linux spins.
    cache, install = probe_env
    fake = install({("mbr", "tcg"): "ok", ("mbr", "kvm"): "ok",
                    ("kernel", "kvm"): "silent", ("kernel", "tcg"): "ok"})
    result = accel.probe_accelerator(cache_dir=cache, timeout=5)
    assert result.accel == "tcg" and not result.kvm_ok
    assert not any("-accel" in c and "kvm" in c and "-kernel" not in c for c in fake.calls)


def test_inconclusive_probe_is_not_cached(probe_env):
    cache, install = probe_env
    install({("mbr", "tcg"): "ok", ("kernel", "kvm"): "silent",
             ("kernel", "tcg"): "silent"})
    result = accel.probe_accelerator(cache_dir=cache, timeout=5)
    assert result.accel == "tcg" and "inconclusive" in result.reason
    assert not (cache / accel.CACHE_FILE).exists()


def test_no_kernel_means_tcg_and_no_cache(tmp_path, monkeypatch):
    install = FakeQemu({("mbr", "tcg"): "ok"})
    monkeypatch.setattr(accel.hostops, "run", install)
    monkeypatch.setattr(accel, "_kvm_device_error", lambda: None)

    def no_kernel(cache_dir, work):
        raise RuntimeError("apt-cache cannot resolve linux-image-cloud-amd64")
    monkeypatch.setattr(accel, "find_probe_kernel", no_kernel)
    result = accel.probe_accelerator(cache_dir=tmp_path, timeout=5)
    assert result == accel.AccelResult(
        "tcg", False, "no kernel to probe KVM with (apt-cache cannot resolve "
        "linux-image-cloud-amd64)", True)
    assert not (tmp_path / accel.CACHE_FILE).exists()


def test_missing_qemu(tmp_path):
    result = accel.probe_accelerator(cache_dir=tmp_path, qemu="/nonexistent/qemu")
    assert result == accel.AccelResult("tcg", False, "/nonexistent/qemu is not runnable",
                                       False)


def test_probe_leaves_no_temp_dir(probe_env, monkeypatch, tmp_path):
    cache, install = probe_env
    monkeypatch.setattr(accel.tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    install({("mbr", "tcg"): "ok", ("kernel", "kvm"): "ok"})
    accel.probe_accelerator(cache_dir=cache, timeout=5)
    assert list((tmp_path / "t").iterdir()) == []


# --- process cleanup ------------------------------------------------------------

def _sleeper(*extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])
    # Popen returns once the child has exec'd, but the kernel sets the new
    # /proc/<pid>/cmdline a moment later; a loaded CI machine caught that window.
    want = "\0".join(extra).encode()
    for _ in range(100):
        if want in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            break
        time.sleep(0.05)
    return proc


def test_kill_leftover_kills_only_the_process_naming_the_pidfile(tmp_path):
    pidfile = tmp_path / "qemu.pid"
    ours, other = _sleeper(str(pidfile)), _sleeper()
    try:
        pidfile.write_text(str(other.pid))
        accel._kill_leftover(pidfile)  # pid does not name our pidfile: spared
        assert other.poll() is None
        pidfile.write_text(str(ours.pid))
        accel._kill_leftover(pidfile)
        assert ours.wait(timeout=5) == -9
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="QEMU not installed")
def test_real_boot_sector_under_tcg(tmp_path):
    started = time.monotonic()
    run = accel._boot_sector("qemu-system-x86_64", "tcg", tmp_path, 20)
    assert accel.BOOT_MARKER in run.output, run.stderr
    assert not run.timed_out and time.monotonic() - started < 20
