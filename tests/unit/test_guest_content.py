"""Pure parts of the guest images: cpio writer, module order, config drive
content."""

from __future__ import annotations

import gzip
import json
import lzma
import stat
import struct

import pytest

from stackbox.guest import configdrive, cpio, kmod, tiny, tiny_init


# --- cpio ---------------------------------------------------------------------

def _sample(order: list[str]) -> cpio.Tree:
    items = {
        "init": lambda t: t.file("init", b"#!/bin/sh\n", 0o755),
        "busybox": lambda t: t.file("bin/busybox", b"\x7fELF" + bytes(1000), 0o755),
        "sh": lambda t: t.symlink("bin/sh", "/bin/busybox"),
        "console": lambda t: t.chardev("dev/console", 5, 1),
        "key": lambda t: t.file("etc/dropbear/key", b"k" * 83, 0o600),
    }
    tree = cpio.Tree()
    for name in order:
        items[name](tree)
    return tree


def test_cpio_is_deterministic_whatever_the_insertion_order():
    a = _sample(["init", "busybox", "sh", "console", "key"])
    b = _sample(["key", "console", "sh", "busybox", "init"])
    assert a.cpio() == b.cpio()
    assert a.initramfs() == b.initramfs()
    assert gzip.decompress(a.initramfs()) == a.cpio()


def test_cpio_round_trip_and_layout():
    data = _sample(["init", "busybox", "sh", "console", "key"]).cpio()
    assert len(data) % 512 == 0
    entries = cpio.read_newc(data)
    names = list(entries)
    assert names == sorted(names)
    # parents were created implicitly, before their children
    assert names.index("etc") < names.index("etc/dropbear") < names.index("etc/dropbear/key")
    assert stat.S_ISDIR(entries["etc/dropbear"].mode)
    assert entries["bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISLNK(entries["bin/sh"].mode)
    assert stat.S_ISCHR(entries["dev/console"].mode)
    assert entries["dev/console"].rdev == (5, 1)
    assert stat.S_IMODE(entries["etc/dropbear/key"].mode) == 0o600
    assert entries["bin/busybox"].data.startswith(b"\x7fELF")
    # fixed mtime in every header
    assert data[6 + 5 * 8:6 + 6 * 8] == b"%08X" % cpio.FIXED_MTIME


@pytest.mark.parametrize("bad", ["", "/", "../etc/x", "a/../../b"])
def test_cpio_rejects_bad_paths(bad):
    with pytest.raises(ValueError):
        cpio.Tree().file(bad, b"")


def test_cpio_rejects_file_over_directory():
    tree = cpio.Tree()
    tree.file("etc/passwd", b"")
    with pytest.raises(ValueError):
        tree.file("etc", b"")


# --- kernel modules -------------------------------------------------------------

def _fake_ko(depends: str) -> bytes:
    """A minimal ELF64 with a .modinfo and a .shstrtab section."""
    modinfo = f"license=GPL\0depends={depends}\0name=x\0".encode()
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    shoff = body_off + len(modinfo) + len(shstrtab)
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x28, shoff)
    struct.pack_into("<HHH", ehdr, 0x3A, 64, 3, 2)

    def shdr(name, off, size):
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)
    return (bytes(ehdr) + modinfo + shstrtab + bytes(64)
            + shdr(1, body_off, len(modinfo))
            + shdr(10, body_off + len(modinfo), len(shstrtab)))


def test_modinfo_and_load_order(tmp_path):
    deps = {"virtio_net": "virtio_ring,virtio,net_failover", "net_failover": "failover",
            "failover": "", "virtio": "", "virtio_ring": "", "virtio-rng": "rng_core"}
    for name, dep in deps.items():
        if name == "failover":  # newer Debian kernels ship .ko.xz
            (tmp_path / f"{name}.ko.xz").write_bytes(lzma.compress(_fake_ko(dep)))
        else:
            (tmp_path / f"{name}.ko").write_bytes(_fake_ko(dep))
    assert kmod.modinfo(_fake_ko("a,b"))["depends"] == "a,b"
    modules = kmod.index_modules(tmp_path)
    assert "virtio_rng" in modules  # dashes normalised like the kernel does
    assert kmod.read_module(modules["failover"]).startswith(b"\x7fELF")
    order = kmod.load_order(["virtio_net", "virtio_rng"], modules, {"rng_core"})
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert order.index("virtio_ring") < order.index("virtio_net")
    assert "rng_core" not in order
    with pytest.raises(KeyError):
        kmod.load_order(["nope"], modules)


# --- config drive content -------------------------------------------------------

META = {"uuid": "11111111-2222-3333-4444-555555555555", "hostname": "vm1",
        "name": "vm1", "public_keys": {"k1": "ssh-ed25519 AAAA k1"}}


def test_openstack_layout_paths():
    files = configdrive.openstack_layout(META, b"#!/bin/sh\n", {"links": []}, {"a": 1})
    for version in (*configdrive.OPENSTACK_VERSIONS, "latest"):
        assert f"openstack/{version}/meta_data.json" in files
        assert f"openstack/{version}/user_data" in files
    assert "openstack/latest/network_data.json" in files
    assert "openstack/2013-04-04/network_data.json" not in files
    assert "openstack/2015-10-15/network_data.json" in files
    assert "openstack/2012-08-10/vendor_data.json" not in files
    assert "openstack/2018-08-27/vendor_data2.json" in files
    assert "ec2/latest/meta-data.json" in files
    assert configdrive.OPENSTACK_VERSIONS[0] == "2012-08-10"
    assert configdrive.OPENSTACK_VERSIONS[-1] == "2018-08-27"
    assert all(not p.startswith("/") and ".." not in p for p in files)


def test_openstack_layout_content_is_deterministic():
    a = configdrive.openstack_layout(META, None, None, None)
    b = configdrive.openstack_layout(dict(reversed(list(META.items()))), None, None, None)
    assert a == b
    meta = json.loads(a["openstack/latest/meta_data.json"])
    assert meta["uuid"] == META["uuid"]
    assert not any(p.endswith("user_data") for p in a)
    assert not any(p.endswith("network_data.json") for p in a)
    ec2 = json.loads(a["ec2/latest/meta-data.json"])
    assert ec2["public-keys"]["0"]["openssh-key"] == "ssh-ed25519 AAAA k1"
    assert ec2["public-keys"]["0"]["_name"] == "0=k1"
    raw = a["openstack/latest/meta_data.json"].decode()
    assert raw.index('"hostname"') < raw.index('"uuid"')  # sorted keys


def test_openstack_layout_needs_uuid():
    with pytest.raises(ValueError):
        configdrive.openstack_layout({"name": "x"}, None, None, None)


# --- build inputs -----------------------------------------------------------------

def test_build_key_tracks_versions_and_scripts(monkeypatch):
    versions = {"busybox-static": "1", "linux-image-x": "2"}
    key = tiny.build_key(versions, "fp")
    assert key == tiny.build_key(dict(reversed(list(versions.items()))), "fp")
    assert key != tiny.build_key({**versions, "busybox-static": "1.1"}, "fp")
    assert key != tiny.build_key(versions, "other-hostkey")
    monkeypatch.setattr(tiny_init, "INIT", tiny_init.INIT + "# changed\n")
    assert key != tiny.build_key(versions, "fp")


def test_init_uses_timeout_not_wget_T():
    # busybox 1.35 `wget -T` segfaults; udhcpc needs -O staticroutes for 121.
    def code(script):
        return "\n".join(ln for ln in script.splitlines() if not ln.strip().startswith("#"))
    assert "wget -T" not in code(tiny_init.INIT)
    assert "timeout 5 wget" in code(tiny_init.INIT)
    assert "-O staticroutes" in code(tiny_init.INIT)
    assert "route flush" not in code(tiny_init.UDHCPC_SCRIPT)
