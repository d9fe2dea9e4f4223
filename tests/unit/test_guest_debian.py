"""Pure parts of the debian guest build: the host's apt sources, apt's list
file names, the cache key, mount cleanup, configuring and trimming a root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stackbox.guest import debian, debian_files
from stackbox.guest.debian import AptSource

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
Components: main contrib
Enabled: yes

Types: deb
URIs: http://old.example/debian
Suites: bookworm
Components: main
Enabled: no
"""

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/k.gpg] http://ftp.de.debian.org/debian/ bookworm main contrib
deb-src http://ftp.de.debian.org/debian bookworm main
deb http://ftp.de.debian.org/debian bookworm-updates main  # trailing
"""


def test_parse_deb822_keeps_enabled_binary_entries():
    assert debian.parse_sources(DEB822, deb822=True) == [
        AptSource("http://deb.debian.org/debian", "bookworm", ("main",)),
        AptSource("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
        AptSource("http://mirror.example/debian-security", "bookworm-security",
                  ("main", "contrib")),
    ]


def test_parse_one_line_ignores_options_comments_and_sources():
    assert debian.parse_sources(ONE_LINE, deb822=False) == [
        AptSource("http://ftp.de.debian.org/debian", "bookworm", ("main", "contrib")),
        AptSource("http://ftp.de.debian.org/debian", "bookworm-updates", ("main",)),
    ]


def test_guest_sources_use_the_hosts_mirror_main_only():
    sources = debian.parse_sources(DEB822, deb822=True)
    mirror, text = debian.guest_sources(sources)
    assert mirror == "http://deb.debian.org/debian"
    assert text.splitlines() == [
        f"deb [signed-by={debian.DEBIAN_KEYRING}] http://deb.debian.org/debian bookworm main",
        f"deb [signed-by={debian.DEBIAN_KEYRING}] http://deb.debian.org/debian "
        "bookworm-updates main",
        f"deb [signed-by={debian.DEBIAN_KEYRING}] http://mirror.example/debian-security "
        "bookworm-security main",
    ]


def test_guest_sources_without_the_suite_says_what_to_add():
    only_security = [AptSource("http://x/debian-security", "bookworm-security", ("main",))]
    with pytest.raises(RuntimeError, match="bookworm main"):
        debian.guest_sources(only_security)


def test_list_prefix_matches_apts_file_names():
    # Real names from /var/lib/apt/lists on a bookworm host.
    assert debian.list_prefix("http://deb.debian.org/debian", "bookworm") == \
        "deb.debian.org_debian_dists_bookworm_"
    assert debian.list_prefix("http://deb.debian.org/debian-security/",
                              "bookworm-security") == \
        "deb.debian.org_debian-security_dists_bookworm-security_"


def test_recipe_writes_the_initramfs_config_before_the_kernel():
    # The kernel's postinst builds the initrd: its config must be in place first.
    assert "MODULES=list" in debian_files.build_files()[
        "etc/initramfs-tools/conf.d/stackbox.conf"][0]
    assert "virtio_blk" in debian_files.build_files()["etc/initramfs-tools/modules"][0]
    assert set(debian_files.build_files()) <= set(debian_files.recipe()["files"])


def test_build_key_follows_versions_recipe_and_sources(monkeypatch):
    versions = {"cloud-init": "22.4.2-1+deb12u3", "linux-image-6.1.0-56-cloud-amd64": "6.1.1"}
    key = debian.build_key(versions, "deb x bookworm main\n")
    assert key == debian.build_key(dict(reversed(list(versions.items()))),
                                   "deb x bookworm main\n")
    assert key != debian.build_key({**versions, "cloud-init": "22.4.2-1+deb12u4"},
                                   "deb x bookworm main\n")
    assert key != debian.build_key(versions, "deb y bookworm main\n")
    monkeypatch.setattr(debian_files, "CLOUD_CFG", debian_files.CLOUD_CFG + "# edit\n")
    assert key != debian.build_key(versions, "deb x bookworm main\n")


def test_kernel_package_is_the_versioned_one():
    assert debian.kernel_package({"linux-image-cloud-amd64": "1", "linux-base": "4",
                                  "linux-image-6.1.0-56-cloud-amd64": "2"}) == \
        "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(RuntimeError):
        debian.kernel_package({"linux-base": "4"})


def test_mounts_below_deepest_first_and_unescaped():
    info = "\n".join([
        "22 1 0:21 / /proc rw - proc proc rw",
        "90 1 0:50 / /var/cache/x/.debian-build-1/root/proc rw - proc proc rw",
        "91 90 0:51 / /var/cache/x/.debian-build-1/root/proc/sys/fs/binfmt_misc rw - x x rw",
        r"92 1 0:52 / /var/cache/x/.debian-build-1/root/dir\040with rw - tmpfs t rw",
        "93 1 0:53 / /var/cache/x/.debian-build-10 rw - tmpfs t rw",
    ])
    assert debian.mounts_below(info, Path("/var/cache/x/.debian-build-1")) == [
        "/var/cache/x/.debian-build-1/root/proc/sys/fs/binfmt_misc",
        "/var/cache/x/.debian-build-1/root/proc",
        "/var/cache/x/.debian-build-1/root/dir with",
    ]


def test_configure_and_trim_a_root(tmp_path):
    root = tmp_path / "root"
    for d in ["etc/ssh", "usr/sbin", "var/lib/dbus", "usr/share/doc/cloud-init/examples",
              "usr/share/man/man1", "var/lib/apt/lists/partial", "var/log/apt",
              "var/cache/debconf", "var/lib/dpkg"]:
        (root / d).mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("# keep")
    (root / "usr/sbin/policy-rc.d").write_text(debian_files.POLICY_RC_D)
    (root / debian.UNSAFE_IO).parent.mkdir(parents=True)
    (root / debian.UNSAFE_IO).write_text("force-unsafe-io\n")
    (root / "var/lib/dbus/machine-id").write_text("abc")
    os.symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    (root / "usr/share/doc/cloud-init/copyright").write_text("GPL")
    (root / "usr/share/doc/cloud-init/changelog.gz").write_text("x")
    (root / "usr/share/doc/cloud-init/examples/a.yaml").write_text("x")
    (root / "usr/share/man/man1/ls.1.gz").write_text("x")
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    (root / "var/log/apt/history.log").write_text("x")
    (root / "var/lib/dpkg/status-old").write_text("x")
    (root / "var/lib/dpkg/status").write_text("x")

    debian._configure(root)
    debian._trim(root)

    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").exists()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / debian.UNSAFE_IO).exists()  # guests keep dpkg's fsyncs
    assert not (root / "var/lib/dbus/machine-id").exists()
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == ""
    assert (root / "etc/machine-id").read_text() == ""
    cfg = (root / "etc/cloud/cloud.cfg.d/90_stackbox.cfg").read_text()
    assert "datasource_list: [ConfigDrive, OpenStack, None]" in cfg
    assert (root / "etc/fstab").read_text().startswith(f"LABEL={debian_files.FS_LABEL} / ext4")
    docs = sorted(str(p.relative_to(root)) for p in (root / "usr/share/doc").rglob("*"))
    assert docs == ["usr/share/doc/cloud-init", "usr/share/doc/cloud-init/copyright"]
    assert (root / "usr/share/man").is_dir() and not any((root / "usr/share/man").iterdir())
    assert not any((root / "var/lib/apt/lists").iterdir())
    assert (root / "var/log").is_dir() and not any((root / "var/log").iterdir())
    assert not (root / "var/lib/dpkg/status-old").exists()
    assert (root / "var/lib/dpkg/status").exists()


def test_cached_entry_with_a_truncated_file_is_rebuilt(tmp_path):
    out = tmp_path / "debian-0123"
    out.mkdir()
    for name, body in {"disk.qcow2": b"q" * 10, "vmlinuz": b"k" * 5,
                       "initrd.img": b"i" * 7}.items():
        (out / name).write_bytes(body)
    debian._write_manifest(out, "ab" * 32, {"cloud-init": "1"}, "6.1.0-56-cloud-amd64",
                           2 << 30)
    image = debian._load_cached(out)
    assert image is not None and image.virtual_size == 2 << 30
    assert image.version.startswith("bookworm+abab")
    assert json.loads((out / "manifest.json").read_text())["sizes"]["disk"] == 10
    (out / "initrd.img").write_bytes(b"i")
    assert debian._load_cached(out) is None


def test_cli_image_build_debian_uses_the_cache_dir(tmp_path, monkeypatch, capsys):
    from stackbox.cli.main import main
    calls = []

    def fake_build(cache_dir, **kwargs):
        calls.append(cache_dir)
        return debian.DebianImage(
            disk=tmp_path / "disk.qcow2", kernel=tmp_path / "vmlinuz",
            initrd=tmp_path / "initrd.img", version="bookworm+0123",
            kernel_release="6.1.0-56-cloud-amd64", disk_sha256="d" * 64,
            kernel_sha256="k" * 64, initrd_sha256="i" * 64, virtual_size=2 << 30)

    monkeypatch.setattr(debian, "build_debian", fake_build)
    assert main(["image", "build", "debian", "--cache-dir", str(tmp_path)]) == 0
    assert calls == [tmp_path]
    out = capsys.readouterr().out
    assert "debian bookworm+0123 (kernel 6.1.0-56-cloud-amd64)" in out
    assert f"cmdline   {debian_files.CMDLINE}" in out
    assert "qcow2, virtual size 2147483648 bytes" in out


def test_debootstrap_failure_carries_the_log_tail(tmp_path):
    from stackbox.common import hostops
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap/debootstrap.log").write_text(
        "I: Retrieving libc6\nE: Couldn't download package cloud-init (ver 22.4.2)\n")
    with pytest.raises(RuntimeError, match="Couldn't download package cloud-init"):
        with debian._debootstrap_log(tmp_path):
            raise hostops.CommandError(["debootstrap"], 1, b"see debootstrap.log")


def test_build_env_is_clean_but_keeps_proxies(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = debian._env()
    assert env["http_proxy"] == "http://proxy.example:3128"
    assert "PYTHONPATH" not in env and env["DEBIAN_FRONTEND"] == "noninteractive"


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    from stackbox.common import hostops
    monkeypatch.setattr(debian, "host_sources", lambda: [
        AptSource("http://deb.debian.org/debian", "bookworm", ("main",))])
    monkeypatch.setattr(debian, "resolve_packages", lambda: {
        "linux-image-6.1.0-56-cloud-amd64": "6.1.192-2", "cloud-init": "22.4.2-1"})
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    monkeypatch.setattr(debian.shutil, "which", lambda name: f"/usr/sbin/{name}")
    ran = []

    def fake_run(argv, **kwargs):
        ran.append(argv)
        root = Path(argv[-2])  # debootstrap ... SUITE ROOT MIRROR
        (root / "debootstrap").mkdir(parents=True)
        (root / "debootstrap/debootstrap.log").write_text("E: Couldn't download packages\n")
        raise hostops.CommandError(argv, 1, b"see debootstrap.log")

    monkeypatch.setattr(debian.hostops, "run", fake_run)
    with pytest.raises(RuntimeError, match="Couldn't download packages"):
        debian.build_debian(tmp_path, progress=lambda line: None)
    assert ran[0][:2] == ["debootstrap", "--foreign"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".debian.lock"]
