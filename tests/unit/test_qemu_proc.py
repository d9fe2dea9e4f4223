"""Driver logic that needs no QEMU: trusting pidfiles, killing only the
instance's own process, refusing bad ids and bad specs before any file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from stackbox.compute.drivers import qemu_proc
from stackbox.compute.drivers.base import DriverError, InstanceSpec, PowerState
from stackbox.compute.drivers.qemu import QemuDriver
from stackbox.compute.drivers.qemu_argv import InstancePaths


@pytest.fixture
def short_dir():
    """pytest's tmp_path is too deep for unix socket paths under it."""
    path = Path(tempfile.mkdtemp(prefix="sbx-u-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sleeper(*extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra],
                            stdin=subprocess.DEVNULL)
    # Until the child has exec'd, /proc shows the parent's command line.
    deadline = time.monotonic() + 30
    while b"time.sleep(60)" not in qemu_proc.cmdline(proc.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_pidfile_is_trusted_only_for_the_instances_own_process(tmp_path):
    uid = str(uuid.uuid4())
    paths = InstancePaths(tmp_path / uid)
    paths.dir.mkdir()
    other = _sleeper()
    mine = _sleeper("-uuid", uid)
    try:
        paths.pidfile.write_text(f"{other.pid}\n")
        assert qemu_proc.find_pid(paths) is None
        qemu_proc.kill(other.pid, paths, 1)  # not ours: left alone
        assert other.poll() is None
        paths.pidfile.write_text(f"{mine.pid}\n")
        assert qemu_proc.find_pid(paths) == mine.pid
        qemu_proc.kill(mine.pid, paths, 5)
        assert mine.wait(5) == -9
        assert not paths.pidfile.exists()  # runtime files cleared
    finally:
        for p in (other, mine):
            p.kill()
            p.wait(5)


def test_garbage_pidfile(tmp_path):
    paths = InstancePaths(tmp_path / str(uuid.uuid4()))
    paths.dir.mkdir()
    paths.pidfile.write_text("not a pid")
    assert qemu_proc.find_pid(paths) is None


def test_instance_ids_must_be_canonical_uuids(short_dir):
    driver = QemuDriver(short_dir, accel="tcg")
    for bad in ("../etc", "x", str(uuid.uuid4()).upper(), ""):
        with pytest.raises(DriverError, match="UUID"):
            driver.power_state(bad)
    (short_dir / "not-an-instance").mkdir()
    assert driver.list_instances() == []
    assert driver.power_state(str(uuid.uuid4())) is PowerState.NOSTATE


def test_too_long_instances_dir_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unix sockets allow"):
        QemuDriver(tmp_path / ("d" * 80), accel="tcg")
    with pytest.raises(ValueError, match="accel"):
        QemuDriver(tmp_path, accel="hvf")


def test_bad_spec_fails_before_any_file(short_dir):
    driver = QemuDriver(short_dir, accel="tcg")
    uid = str(uuid.uuid4())
    spec = InstanceSpec(uuid=uid, name="x", vcpus=1, memory_mb=64, root_gb=1,
                        hw={"hw_disk_bus": "floppy"})
    with pytest.raises(DriverError, match="hw_disk_bus"):
        driver.spawn(spec)
    assert not (short_dir / uid).exists()


def test_operations_on_a_missing_instance(short_dir):
    driver = QemuDriver(short_dir, accel="tcg")
    uid = str(uuid.uuid4())
    for op in (driver.pause, driver.unpause, driver.suspend):
        with pytest.raises(DriverError, match="not running"):
            op(uid)
    with pytest.raises(DriverError, match="not running"):
        driver.console_endpoint(uid, "vnc")
    with pytest.raises(DriverError, match="no files"):
        driver.console_output(uid)
    driver.power_off(uid, timeout=1)  # idempotent no-ops
    driver.destroy(uid)
    assert driver.housekeeping() == {"trimmed": 0, "reaped": []}
    assert list(Path(short_dir).iterdir()) == []
