"""The benchmark-only noop driver keeps states consistent and persists them."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from stackbox.compute.drivers.base import DriverError, ImageFile, InstanceSpec, PowerState
from stackbox.compute.drivers.noop import NoopDriver


def _spec() -> InstanceSpec:
    return InstanceSpec(uuid=str(uuid.uuid4()), name="n", vcpus=1, memory_mb=64, root_gb=1,
                        image=ImageFile("img-1", None, "qcow2"))


def test_state_machine(tmp_path):
    d = NoopDriver(tmp_path)
    s = _spec()
    assert d.power_state(s.uuid) is PowerState.NOSTATE
    d.spawn(s)
    assert d.power_state(s.uuid) is PowerState.RUNNING
    d.pause(s.uuid)
    assert d.power_state(s.uuid) is PowerState.PAUSED
    d.unpause(s.uuid)
    d.suspend(s.uuid)
    assert d.power_state(s.uuid) is PowerState.SUSPENDED
    with pytest.raises(DriverError, match="cannot pause"):
        d.pause(s.uuid)
    d.power_on(s)
    d.power_off(s.uuid)
    assert d.power_state(s.uuid) is PowerState.SHUTDOWN
    with pytest.raises(DriverError):
        d.suspend(s.uuid)
    assert d.images_in_use() == {"img-1"}
    assert "started" in d.console_output(s.uuid, length=1)
    # A new driver over the same directory re-adopts.
    again = NoopDriver(tmp_path)
    assert again.list_instances() == [s.uuid]
    assert again.power_state(s.uuid) is PowerState.SHUTDOWN
    again.destroy(s.uuid)
    assert again.list_instances() == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(DriverError):
        again.pause(s.uuid)


def test_snapshot_is_a_valid_qcow2(tmp_path):
    d = NoopDriver()
    s = _spec()
    d.spawn(s)
    assert d.snapshot(s.uuid, tmp_path / "snap.qcow2") == "qcow2"
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "check", str(tmp_path / "snap.qcow2")], check=True,
                       capture_output=True, timeout=30)
