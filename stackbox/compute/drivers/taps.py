"""Tap devices of an instance: created persistent by the driver (so QEMU
only attaches to them and they can be plugged before or after QEMU starts),
put in their network's bridge, removed on destroy."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stackbox.common import hostops
from stackbox.compute.drivers.base import DriverError, Nic

log = logging.getLogger(__name__)
SYS_NET = Path("/sys/class/net")


def exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def master(name: str) -> str:
    """The bridge a device is enslaved to, '' when none."""
    try:
        return os.path.basename(os.readlink(SYS_NET / name / "master"))
    except OSError:
        return ""


def _ip(*args: str, what: str) -> None:
    try:
        hostops.run(["ip", *args], timeout=30)
    except (hostops.CommandError, hostops.CommandTimeout, OSError) as exc:
        err = getattr(exc, "stderr", b"").decode(errors="replace").strip()
        raise DriverError(f"{what}: {err or exc}") from None


def ensure(nic: Nic) -> bool:
    """Make the tap exist, up, with the port's MTU, in its bridge when the
    bridge is there. Returns True when this call created the tap.

    A bridge that does not exist yet is not an error: the network agent
    may still be making it; the tap stays unplugged until `plug` runs again.
    """
    created = False
    if not exists(nic.tap):
        _ip("tuntap", "add", "dev", nic.tap, "mode", "tap",
            what=f"cannot create tap {nic.tap}")
        created = True
    _no_ipv6(nic.tap)
    _ip("link", "set", "dev", nic.tap, "mtu", str(nic.mtu),
        what=f"cannot set MTU {nic.mtu} on {nic.tap}")
    plug(nic)
    _ip("link", "set", "dev", nic.tap, "up", what=f"cannot bring {nic.tap} up")
    return created


def _no_ipv6(name: str) -> None:
    """A bridge port needs no address of its own: without this the host
    gives the tap a link-local address and sends router solicitations and
    MLD reports into the guest's network."""
    knob = Path("/proc/sys/net/ipv6/conf") / name / "disable_ipv6"
    try:
        if knob.read_text().strip() != "1":
            knob.write_text("1")
    except OSError:
        pass  # IPv6 disabled on the host altogether


def plug(nic: Nic) -> bool:
    """Put the tap in nic.bridge. False when there is no bridge (yet)."""
    if not nic.bridge:
        return False
    if not exists(nic.bridge):
        log.warning("bridge %s of port %s does not exist yet; tap %s left unplugged",
                    nic.bridge, nic.port_id, nic.tap)
        return False
    if master(nic.tap) != nic.bridge:
        _ip("link", "set", "dev", nic.tap, "master", nic.bridge,
            what=f"cannot plug {nic.tap} into bridge {nic.bridge}")
    return True


def remove(name: str) -> None:
    if exists(name):
        _ip("link", "del", "dev", name, what=f"cannot remove tap {name}")
