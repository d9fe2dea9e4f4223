"""The `tiny` guest: a CirrOS-like kernel + initramfs from Debian packages.

Parts: the Debian cloud kernel (virtio as modules), busybox-static, and
dropbear with its shared libraries and the loader. No disk image: boot with
`-kernel/-initrd/-append` (Glance's kernel_id/ramdisk_id). /init is in
tiny_init.py; it reads a config drive or the metadata service, installs
SSH keys, runs `#!` user-data and starts dropbear, printing
`STACKBOX-TINY: ...` markers on the serial console.

Builds are cached under cache_dir keyed by the package versions and the
text of everything we generate, so an unchanged rebuild only asks apt-cache
for versions (about a second) and returns the cached files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stackbox.common import hostops
from stackbox.guest import debparts, kmod, tiny_init
from stackbox.guest.cpio import Tree

# Bump when the build procedure changes in a way the inputs do not show.
BUILD_FORMAT = 1
CMDLINE = "console=ttyS0 quiet"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
DROPBEAR_PACKAGE = "dropbear-bin"
# Load order is computed from each module's `depends`; this order (from the
# guest notes) is kept otherwise. Storage for config drives: IDE CD-ROM
# (ata_piix, sr_mod, isofs) or a virtio disk (virtio_blk, vfat).
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk",
           "virtio_rng", "ata_piix", "sr_mod", "isofs", "vfat", "nls_cp437", "nls_ascii"]
HOSTKEY_DIR = "tiny-hostkey"
HOSTKEY_NAME = "dropbear_ed25519_host_key"


@dataclass(frozen=True)
class TinyImage:
    kernel: Path
    initramfs: Path
    version: str  # "<kernel release>+<build id prefix>"
    kernel_sha256: str
    initramfs_sha256: str
    build_id: str = ""  # sha256 of all inputs: the cache key
    packages: dict = field(default_factory=dict)  # name -> Debian version
    # Kernel command line to boot with: serial console for the markers,
    # `quiet` so kernel messages do not interleave with them.
    cmdline: str = CMDLINE


def input_texts() -> dict[str, str]:
    """Everything generated into the image besides package contents."""
    return {"init": tiny_init.INIT, "udhcpc": tiny_init.UDHCPC_SCRIPT,
            "inittab": tiny_init.INITTAB, "passwd": tiny_init.PASSWD,
            "shadow": tiny_init.SHADOW, "group": tiny_init.GROUP,
            "shells": tiny_init.SHELLS, "modules": "\n".join(MODULES),
            "cmdline": CMDLINE}


def build_key(versions: dict[str, str], hostkey_fingerprint: str = "") -> str:
    doc = {"format": BUILD_FORMAT, "packages": versions, "texts": input_texts(),
           "hostkey": hostkey_fingerprint}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_packages() -> dict[str, str]:
    kernel = debparts.resolve_dependency(KERNEL_METAPACKAGE, "linux-image-")
    names = {kernel, BUSYBOX_PACKAGE, *debparts.runtime_closure(DROPBEAR_PACKAGE)}
    return debparts.candidate_versions(sorted(names))


def _load_cached(out: Path) -> TinyImage | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        image = TinyImage(kernel=out / manifest["kernel"],
                          initramfs=out / manifest["initramfs"],
                          version=manifest["version"],
                          kernel_sha256=manifest["kernel_sha256"],
                          initramfs_sha256=manifest["initramfs_sha256"],
                          build_id=manifest["build_id"],
                          packages=manifest["packages"])
    except (OSError, ValueError, KeyError):
        return None
    # Size check is cheap; a truncated file means a broken cache entry.
    if not (image.kernel.is_file() and image.initramfs.is_file()
            and image.kernel.stat().st_size == manifest.get("kernel_size")
            and image.initramfs.stat().st_size == manifest.get("initramfs_size")):
        return None
    return image


def build_tiny(cache_dir: Path, *, progress: Callable[[str], None] = print) -> TinyImage:
    """Build (or reuse) the tiny guest under `cache_dir`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def step(msg: str) -> None:
        progress(f"tiny: [{time.monotonic() - started:5.1f}s] {msg}")

    # One build at a time per cache dir: concurrent test runs or services
    # wait for the first build instead of downloading the same parts.
    with open(cache_dir / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        step("resolving package versions")
        versions = resolve_packages()
        hostkey = cache_dir / HOSTKEY_DIR / HOSTKEY_NAME
        fingerprint = _sha256(hostkey) if hostkey.is_file() else ""
        key = build_key(versions, fingerprint)
        out = cache_dir / f"tiny-{key[:16]}"
        cached = _load_cached(out) if fingerprint else None
        if cached is not None:
            step(f"cached {cached.version} in {out}")
            return cached
        return _build(cache_dir, versions, step)


def _build(cache_dir: Path, versions: dict[str, str],
           step: Callable[[str], None]) -> TinyImage:
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache_dir))
    try:
        tree = scratch / "tree"
        step(f"downloading {len(versions)} packages: {', '.join(sorted(versions))}")
        debparts.download_and_unpack(versions, scratch / "debs", tree)
        hostkey = _ensure_hostkey(cache_dir, tree, step)
        key = build_key(versions, _sha256(hostkey))
        out = cache_dir / f"tiny-{key[:16]}"
        vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise RuntimeError(f"expected one kernel in the package, found {vmlinuz}")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        step(f"assembling initramfs for kernel {release}")
        archive = assemble(tree, release, hostkey.read_bytes()).initramfs()

        stage = scratch / "out"
        stage.mkdir()
        shutil.copyfile(vmlinuz[0], stage / "vmlinuz")
        (stage / "initramfs.gz").write_bytes(archive)
        version = f"{release}+{key[:12]}"
        manifest = {
            "kernel": "vmlinuz", "initramfs": "initramfs.gz", "version": version,
            "kernel_sha256": _sha256(stage / "vmlinuz"),
            "initramfs_sha256": hashlib.sha256(archive).hexdigest(),
            "kernel_size": (stage / "vmlinuz").stat().st_size,
            "initramfs_size": len(archive), "build_id": key, "packages": versions,
            "cmdline": CMDLINE}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        # Rename into place: readers see a whole entry or none.
        shutil.rmtree(out, ignore_errors=True)
        os.replace(stage, out)
        step(f"built {version}: kernel {manifest['kernel_size'] / 2**20:.1f} MiB, "
             f"initramfs {len(archive) / 2**20:.1f} MiB in {out}")
        image = _load_cached(out)
        assert image is not None
        return image
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ensure_hostkey(cache_dir: Path, tree: Path, step) -> Path:
    """One ed25519 host key per cache dir, made with the packaged
    dropbearkey. Generating it at build time keeps first boot fast (dropbear
    otherwise makes keys on the first connection) and keeps rebuilds
    byte-identical; the price is that all tiny guests from this cache share
    the host key, acceptable for a test image (CirrOS trades the other way)."""
    keydir = cache_dir / HOSTKEY_DIR
    key = keydir / HOSTKEY_NAME
    if key.is_file():
        return key
    step("generating the dropbear ed25519 host key")
    keydir.mkdir(parents=True, exist_ok=True)
    tmp = keydir / f".{HOSTKEY_NAME}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    debparts.run_packaged(tree, tree / "usr/bin/dropbearkey",
                          ["-t", "ed25519", "-f", str(tmp)], timeout=60)
    os.replace(tmp, key)
    return key


def _busybox_links(busybox: Path) -> list[str]:
    # busybox-static runs on any x86-64 Linux host; its own list of applets
    # is the authoritative one for this version.
    proc = hostops.run([str(busybox), "--list-full"], timeout=30)
    return sorted(line.strip() for line in proc.stdout.decode().splitlines()
                  if "/" in line and line.strip() != "bin/busybox")


def assemble(tree: Path, release: str, hostkey: bytes) -> Tree:
    """The initramfs file tree from the unpacked packages."""
    t = Tree()
    for d in ["dev", "proc", "sys", "run", "mnt", "etc/dropbear", "var/log"]:
        t.dir(d)
    t.dir("root", 0o700)
    t.dir("tmp", 0o1777)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    t.chardev("dev/console", 5, 1)
    t.chardev("dev/null", 1, 3, 0o666)

    busybox = tree / "bin/busybox"
    t.file("bin/busybox", busybox.read_bytes(), 0o755)
    for link in _busybox_links(busybox):
        t.symlink(link, "/bin/busybox")

    dropbear = tree / "usr/sbin/dropbear"
    t.file("usr/sbin/dropbear", dropbear.read_bytes(), 0o755)
    for name, host in sorted(debparts.shared_libraries(tree, dropbear).items()):
        # Libraries go where the guest's loader looks without ld.so.cache;
        # the loader itself to its PT_INTERP path.
        guest = name if name.startswith("/") else f"lib/x86_64-linux-gnu/{name}"
        t.file(guest, host.read_bytes(), 0o755)

    moddir = tree / "lib/modules" / release
    modules = kmod.index_modules(moddir / "kernel")
    order = kmod.load_order(MODULES, modules,
                            kmod.builtin_names(moddir / "modules.builtin"))
    for name in order:
        t.file(f"lib/modules/{name}.ko", kmod.read_module(modules[name]))
    t.file("etc/tiny/modules", ("\n".join(order) + "\n").encode())

    t.file("init", tiny_init.INIT.encode(), 0o755)
    t.file("etc/tiny/udhcpc.script", tiny_init.UDHCPC_SCRIPT.encode(), 0o755)
    t.file("etc/inittab", tiny_init.INITTAB.encode())
    t.file("etc/passwd", tiny_init.PASSWD.encode())
    t.file("etc/shadow", tiny_init.SHADOW.encode(), 0o600)
    t.file("etc/group", tiny_init.GROUP.encode())
    t.file("etc/shells", tiny_init.SHELLS.encode())
    t.file("etc/hostname", tiny_init.HOSTNAME.encode())
    t.file("etc/resolv.conf", b"")
    t.file(f"etc/dropbear/{HOSTKEY_NAME}", hostkey, 0o600)
    return t
