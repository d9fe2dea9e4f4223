"""`stackbox doctor`: output format, exit code, registration, and one real run
with PATH stripped of QEMU."""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
from pathlib import Path

import pytest

from stackbox.cli import doctor
from stackbox.cli.doctor import FAIL, OK, WARN, Check, Result
from stackbox.common.config import Settings


def test_format_ok_has_one_line():
    assert doctor.format_result(Result(OK, "fine", name="python")) == ["OK   python: fine"]


def test_format_non_ok_has_consequence_and_fix():
    r = Result(WARN, "slow", "VMs run under TCG", "modprobe kvm_intel", name="kvm")
    assert doctor.format_result(r) == [
        "WARN kvm: slow",
        "     consequence: VMs run under TCG",
        "     fix: modprobe kvm_intel",
    ]
    r.status = FAIL
    assert doctor.format_result(r)[0] == "FAIL kvm: slow"


def test_exit_code():
    assert doctor.exit_code([Result(OK, ""), Result(WARN, "")]) == 0
    assert doctor.exit_code([Result(OK, ""), Result(FAIL, "")]) == 1
    assert doctor.exit_code([]) == 0


def test_registration_appends_in_order(monkeypatch):
    monkeypatch.setattr(doctor, "CHECKS", [])

    @doctor.check("first")
    def first(settings):
        return Result(OK, "1")

    @doctor.check("second")
    def second(settings):
        return Result(WARN, "2", "c", "f")

    assert [c.name for c in doctor.CHECKS] == ["first", "second"]
    out = io.StringIO()
    assert doctor.run_doctor(None, out=out) == 0
    assert out.getvalue().splitlines()[:2] == ["OK   first: 1", "WARN second: 2"]


def test_builtin_checks_registered():
    names = [c.name for c in doctor.CHECKS]
    for expected in ("python", "privileges", "/dev/net/tun", "bridge", "netns", "nftables",
                     "qemu-system-x86_64", "qemu-img", "kvm", "dnsmasq", "haproxy", "ports",
                     "disk", "data dir", "xattr", "object store file system", "clock"):
        assert expected in names
    assert len(names) == len(set(names))


def test_crashing_check_is_a_fail_and_others_still_run():
    def boom(settings):
        raise KeyError("x")

    def several(settings):
        return [Result(OK, "a", name="port a"), Result(FAIL, "b", "c", "f", name="port b")]
    out = io.StringIO()
    rc = doctor.run_doctor(None, out=out, checks=[Check("boom", boom), Check("ports", several)])
    lines = out.getvalue().splitlines()
    assert rc == 1
    assert lines[0] == "FAIL boom: check crashed: KeyError: 'x'"
    assert "OK   port a: a" in lines and "FAIL port b: b" in lines


def test_novnc_check_finds_or_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "vnc_lite.html").write_text("<html></html>")
    settings = Settings.model_validate({"compute": {"novnc_dir": str(tmp_path)}})
    assert doctor.check_novnc(settings).status == OK
    from stackbox.compute import consoleproxy
    monkeypatch.setattr(consoleproxy, "NOVNC_CANDIDATES", (tmp_path / "none",))
    r = doctor.check_novnc(Settings())
    assert (r.status, r.fix) == (WARN, "make novnc")


def test_missing_binary_names_debian_package():
    r = doctor.missing("qemu-img", "no disks")
    assert (r.status, r.fix) == (FAIL, "apt-get install qemu-utils")
    assert "Debian package qemu-utils" in r.detail
    assert doctor.missing("haproxy", "no LBs", status=WARN).status == WARN


def test_is_stackbox():
    assert doctor.is_stackbox(["/usr/local/bin/stackbox", "up"])
    assert doctor.is_stackbox(["/usr/bin/python3", "/usr/local/bin/stackbox", "up"])
    assert doctor.is_stackbox(["python3", "-m", "stackbox.cli", "up"])
    assert not doctor.is_stackbox(["python3", "-m", "pytest", "/src/stackbox/tests"])
    assert not doctor.is_stackbox([])


def test_largest_xattr_search(monkeypatch, tmp_path):
    limit = {"n": 0}

    def setxattr(path, name, value):
        if len(value) > limit["n"]:
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(doctor.os, "setxattr", setxattr)
    monkeypatch.setattr(doctor.os, "removexattr", lambda path, name: None)
    for n, expected in ((70000, 65536), (20000, 16384), (4096, 4096), (4032, 4032),
                        (100, 100), (0, 0)):
        limit["n"] = n
        assert doctor.largest_xattr(str(tmp_path)) == expected


def test_largest_xattr_unsupported(monkeypatch, tmp_path):
    def setxattr(path, name, value):
        raise OSError(errno.ENOTSUP, "Operation not supported")
    monkeypatch.setattr(doctor.os, "setxattr", setxattr)
    with pytest.raises(OSError):
        doctor.largest_xattr(str(tmp_path))


def _settings(tmp_path, port):
    s = Settings(data_dir=tmp_path / "data")
    s.identity.port = port
    return s


def test_port_in_use_is_fail_with_fix(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        results = doctor.check_ports(_settings(tmp_path, port))
    by_name = {r.name: r for r in results}
    assert by_name["port identity"].status == FAIL, results
    results = [by_name["port identity"]]
    assert results[0].fix == f"stop the process on port {port} or change [identity] port"
    assert f"pid {os.getpid()}" in results[0].detail


def test_port_free(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert doctor.check_ports(_settings(tmp_path, port))[0].status == OK


def test_disk_thresholds(monkeypatch, tmp_path):
    settings = Settings(data_dir=tmp_path)
    usage = shutil.disk_usage(tmp_path)
    for free, status in ((20 * doctor.GiB, OK), (5 * doctor.GiB, WARN), (doctor.GiB // 2, FAIL)):
        monkeypatch.setattr(doctor.shutil, "disk_usage",
                            lambda p, free=free: usage._replace(free=free))
        assert doctor.check_disk(settings).status == status


HOST_TOOLS = ("ip", "nft", "dnsmasq", "haproxy", "timedatectl")


def test_real_doctor_without_qemu_img_in_path(tmp_path, monkeypatch):
    """Runs every real check; PATH holds the host tools but not QEMU."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in HOST_TOOLS:
        if found := shutil.which(tool):
            (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = io.StringIO()

    rc = doctor.run_doctor(_settings(tmp_path, port), out=out)

    lines = out.getvalue().splitlines()
    assert rc == 1
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL qemu-img:"))
    assert "qemu-img not found" in lines[fail] and "qemu-utils" in lines[fail]
    assert lines[fail + 1].startswith("     consequence: ")
    assert lines[fail + 2] == "     fix: apt-get install qemu-utils"
    assert any(ln.startswith("FAIL kvm:") for ln in lines)  # qemu-system missing too
    # Every check cleaned up after itself.
    name = f"sbx-dr-{os.getpid()}"
    assert not Path(f"/sys/class/net/{name}").exists()
    assert not Path(f"/run/netns/{name}").exists()
    if shutil.which("nft") and os.geteuid() == 0:
        tables = doctor.hostops.run(["nft", "list", "tables"], timeout=10).stdout
        assert f"sbx_doctor_{os.getpid()}".encode() not in tables
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]  # data dir not created


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:25 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
31 22 7:0 / /srv/my\\040disk rw,noatime shared:9 - xfs /dev/loop0 rw
32 30 0:40 / /tmp/over rw - tmpfs first rw
33 30 254:0 /x /tmp/over rw - ext4 /dev/vda rw
"""


def test_mount_of_takes_the_deepest_and_the_last_mount():
    assert doctor.mount_of("/var/lib/stackbox", MOUNTINFO) == ("/", "ext4", "254:0")
    assert doctor.mount_of("/tmp", MOUNTINFO) == ("/tmp", "tmpfs", "0:25")
    assert doctor.mount_of("/tmpfoo/x", MOUNTINFO) == ("/", "ext4", "254:0")
    assert doctor.mount_of("/srv/my disk/d1", MOUNTINFO) == ("/srv/my disk", "xfs", "7:0")
    assert doctor.mount_of("/tmp/over/a", MOUNTINFO) == ("/tmp/over", "ext4", "254:0")
    assert doctor.mount_of("relative", MOUNTINFO) is None


def test_ext4_journal_is_told_by_jbd2(tmp_path):
    sys_block, jbd2 = tmp_path / "sys", tmp_path / "jbd2"
    (tmp_path / "devices" / "vda").mkdir(parents=True)
    (tmp_path / "devices" / "vdb").mkdir(parents=True)
    sys_block.mkdir()
    (sys_block / "254:0").symlink_to(tmp_path / "devices" / "vda")
    (sys_block / "254:16").symlink_to(tmp_path / "devices" / "vdb")
    (jbd2 / "vdb-8").mkdir(parents=True)
    assert doctor.ext4_has_journal("254:16", jbd2=jbd2, sys_block=sys_block)
    assert not doctor.ext4_has_journal("254:0", jbd2=jbd2, sys_block=sys_block)
