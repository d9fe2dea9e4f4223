"""The `debian` guest: Debian bookworm with cloud-init and openssh-server.

Built with debootstrap from the Debian mirror this host's apt uses, then
upgraded and given the cloud kernel with apt inside the build root, fed
with copies of the host's package lists so the image holds exactly the
versions the cache key names. The disk is one ext4 filesystem made by
`mke2fs -d` (no loop devices, no bootloader), converted to a compressed
qcow2. It boots with the kernel and initrd taken out of it, as Glance
describes with `kernel_id`/`ramdisk_id` and `os_command_line`.

Builds are cached under cache_dir keyed by the versions of every package in
the closure of the recipe's packages and the recipe itself (debian_files),
so an unchanged rebuild only asks apt-cache for versions.

Runs as root (debootstrap and chroot need it). Every command that enters
the build root runs in its own mount namespace, so a killed build leaves no
/proc mounted on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stackbox.common import hostops
from stackbox.guest import debian_files as recipe
from stackbox.guest.debparts import candidate_versions, resolve_dependency

# Bump when the build procedure changes in a way recipe() does not show.
BUILD_FORMAT = 2
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
              "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
DPKG_KEEP_CONFIG = ["-o", "Dpkg::Options::=--force-confdef",
                    "-o", "Dpkg::Options::=--force-confold"]
APT_LISTS = Path("/var/lib/apt/lists")
APT_SOURCE_FILES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# dpkg configuration for the build only; removed before the image is made.
UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/stackbox-build-unsafe-io"


@dataclass(frozen=True)
class DebianImage:
    disk: Path            # qcow2, one ext4 filesystem labelled sbx-root
    kernel: Path
    initrd: Path
    version: str          # "bookworm+<build id prefix>"
    kernel_release: str
    disk_sha256: str
    kernel_sha256: str
    initrd_sha256: str
    virtual_size: int     # bytes: the smallest root disk that holds it
    build_id: str = ""    # sha256 of all inputs: the cache key
    packages: dict = field(default_factory=dict)  # name -> Debian version
    cmdline: str = recipe.CMDLINE
    disk_format: str = "qcow2"


# --- the host's Debian mirror --------------------------------------------

@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]


def parse_sources(text: str, *, deb822: bool) -> list[AptSource]:
    """`deb` entries of a sources.list (one-line) or *.sources (deb822)
    file; `deb-src` and disabled entries are left out."""
    out: list[AptSource] = []
    if not deb822:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            # Options in brackets ([signed-by=...]) do not change the lists.
            line = re.sub(r"\[[^\]]*\]", " ", line)
            words = line.split()
            if len(words) >= 3 and words[0] == "deb":
                out.append(AptSource(words[1].rstrip("/"), words[2], tuple(words[3:])))
        return out
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append(AptSource(uri.rstrip("/"), suite,
                                     tuple(fields.get("components", "").split())))
    return out


def host_sources() -> list[AptSource]:
    """The host's apt entries for our suites, in apt's reading order."""
    files: list[Path] = []
    main, parts = APT_SOURCE_FILES
    if main.is_file():
        files.append(main)
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file())
    found: list[AptSource] = []
    for path in files:
        for src in parse_sources(path.read_text(errors="replace"),
                                 deb822=path.suffix == ".sources"):
            if src.suite in recipe.SUITES and "main" in src.components:
                found.append(src)
    return found


def guest_sources(sources: list[AptSource]) -> tuple[str, str]:
    """(mirror for debootstrap, the guest's sources.list) from the host's
    entries. Only `main`: the recipe needs nothing else."""
    mirror = next((s.uri for s in sources if s.suite == recipe.SUITE), None)
    if mirror is None:
        raise RuntimeError(f"this host's apt has no `deb <mirror> {recipe.SUITE} main` "
                           f"entry in /etc/apt/sources.list*: add one (e.g. "
                           f"http://deb.debian.org/debian) and run apt-get update")
    seen: set[tuple[str, str]] = set()
    lines = []
    for s in sources:
        if (s.uri, s.suite) not in seen:
            seen.add((s.uri, s.suite))
            lines.append(f"deb [signed-by={DEBIAN_KEYRING}] {s.uri} {s.suite} main")
    return mirror, "\n".join(lines) + "\n"


def list_prefix(uri: str, suite: str) -> str:
    """apt's file-name prefix for a source's lists:
    http://deb.debian.org/debian bookworm -> deb.debian.org_debian_dists_bookworm_"""
    rest = re.sub(r"^[a-z+]+://", "", uri).rstrip("/")
    return f"{rest}/dists/{suite}/".replace("/", "_")


# --- cache key -------------------------------------------------------------

def resolve_packages() -> dict[str, str]:
    """Name -> candidate version of the kernel, the recipe's packages and
    everything they depend on (virtual packages left out)."""
    kernel = resolve_dependency(recipe.KERNEL_METAPACKAGE, "linux-image-")
    proc = hostops.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
         kernel, *recipe.PACKAGES], timeout=120)
    names = {ln.strip() for ln in proc.stdout.decode(errors="replace").splitlines()
             if ln and not ln[0].isspace() and not ln.startswith("<")}
    return candidate_versions(sorted(names | {kernel, *recipe.PACKAGES}))


def kernel_package(versions: dict[str, str]) -> str:
    names = [n for n in versions
             if n.startswith("linux-image-") and n != recipe.KERNEL_METAPACKAGE]
    if len(names) != 1:
        raise RuntimeError(f"expected one kernel package, got {names}")
    return names[0]


def build_key(versions: dict[str, str], sources: str) -> str:
    doc = {"format": BUILD_FORMAT, "packages": versions, "recipe": recipe.recipe(),
           "sources": sources}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_cached(out: Path) -> DebianImage | None:
    try:
        m = json.loads((out / "manifest.json").read_text())
        image = DebianImage(
            disk=out / m["disk"], kernel=out / m["kernel"], initrd=out / m["initrd"],
            version=m["version"], kernel_release=m["kernel_release"],
            disk_sha256=m["disk_sha256"], kernel_sha256=m["kernel_sha256"],
            initrd_sha256=m["initrd_sha256"], virtual_size=m["virtual_size"],
            build_id=m["build_id"], packages=m["packages"], cmdline=m["cmdline"])
        sizes = m["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name in ("disk", "kernel", "initrd"):
        path = getattr(image, name)
        if not path.is_file() or path.stat().st_size != sizes.get(name):
            return None  # truncated or removed: a broken entry
    return image


def build_debian(cache_dir: Path, *,
                 progress: Callable[[str], None] = print) -> DebianImage:
    """Build (or reuse) the debian guest under `cache_dir`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def step(msg: str) -> None:
        progress(f"debian: [{time.monotonic() - started:6.1f}s] {msg}")

    # One build at a time per cache dir: a second caller waits and then
    # finds the first one's result.
    with open(cache_dir / ".debian.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        step("resolving package versions")
        sources = host_sources()
        mirror, sources_list = guest_sources(sources)
        versions = resolve_packages()
        key = build_key(versions, sources_list)
        out = cache_dir / f"debian-{key[:16]}"
        cached = _load_cached(out)
        if cached is not None:
            step(f"cached {cached.version} in {out}")
            return cached
        if os.geteuid() != 0:
            raise RuntimeError("building the debian guest needs root (debootstrap, chroot)")
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap not found (apt-get install debootstrap)")
        return _build(cache_dir, out, key, versions, mirror, sources_list, sources, step)


# --- the build ---------------------------------------------------------------

def in_root(root: Path, argv: list[str], *, timeout: float) -> None:
    """Run argv chrooted into `root` with its own /proc, in a private mount
    namespace: the mount disappears with the command, even when killed."""
    hostops.run(["unshare", "--mount", "--propagation", "private",
                 f"--mount-proc={root}/proc", "chroot", str(root), *argv],
                timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    """A clean environment for debootstrap and the chroot, keeping the
    host's proxy settings (apt and debootstrap's wget read them)."""
    proxies = {k: v for k, v in os.environ.items()
               if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    return {**CHROOT_ENV, **proxies}


@contextlib.contextmanager
def _debootstrap_log(root: Path):
    """debootstrap says only "see debootstrap.log" on failure, and that log
    is in the build root we are about to delete: put its tail in the error."""
    try:
        yield
    except hostops.CommandError as exc:
        try:
            tail = (root / "debootstrap/debootstrap.log").read_text(
                errors="replace").strip().splitlines()[-15:]
        except OSError:
            raise exc from None
        raise RuntimeError(f"{exc}\ndebootstrap.log ends with:\n" + "\n".join(tail)) from exc


def mounts_below(mountinfo: str, path: Path) -> list[str]:
    """Mount points at or under `path` in /proc/self/mountinfo text,
    deepest first (the order to unmount them)."""
    base = str(path).rstrip("/")
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            # mountinfo escapes spaces etc. as octal (\040).
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == base or point.startswith(base + "/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _remove_scratch(scratch: Path) -> None:
    """rmtree would descend into anything still mounted in the build root
    (the host's /proc or /dev): detach those first."""
    def mountinfo() -> str:
        try:
            return Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    for point in mounts_below(mountinfo(), scratch):
        hostops.run(["umount", "--lazy", point], timeout=60, check=False)
    if mounts_below(mountinfo(), scratch):
        raise RuntimeError(f"cannot unmount everything under {scratch}; left in place")
    shutil.rmtree(scratch, ignore_errors=True)


def _build(cache_dir: Path, out: Path, key: str, versions: dict[str, str],
           mirror: str, sources_list: str, sources: list[AptSource],
           step: Callable[[str], None]) -> DebianImage:
    scratch = Path(tempfile.mkdtemp(prefix=".debian-build-", dir=cache_dir))
    try:
        root = scratch / "root"
        kernel = kernel_package(versions)
        step(f"debootstrap {recipe.SUITE} from {mirror} (takes a few minutes)")
        # Two stages so dpkg can be told not to fsync every file it unpacks
        # (about 20000 files, ~5 ms each on this kind of disk): the image is
        # made from the finished tree, so a crash just means a rebuild.
        with _debootstrap_log(root):
            hostops.run(["debootstrap", "--foreign", "--variant=minbase",
                         "--components=main", f"--include={','.join(recipe.PACKAGES)}",
                         recipe.SUITE, str(root), mirror], timeout=1200, env=_env())
            _write(root / UNSAFE_IO, "force-unsafe-io\n")
            hostops.run(["unshare", "--mount", "--propagation", "private", "chroot",
                         str(root), "/debootstrap/debootstrap", "--second-stage"],
                        timeout=1800, env=_env())

        step(f"updates and {kernel} with apt in the build root")
        _prepare_apt(root, sources_list, sources)
        in_root(root, ["apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "full-upgrade"],
                timeout=900)
        in_root(root, ["apt-get", "-y", "-q", "--no-install-recommends", *DPKG_KEEP_CONFIG,
                       "install", f"{kernel}={versions[kernel]}"], timeout=900)
        installed = _installed_versions(root)
        drift = {n: (v, installed.get(n)) for n, v in versions.items()
                 if installed.get(n) not in (None, v)}
        if drift:
            raise RuntimeError(f"the build root got other versions than resolved: {drift}")

        step("configuring cloud-init, network, fstab; trimming docs and apt lists")
        _configure(root)
        _trim(root)
        release = kernel.removeprefix("linux-image-")
        stage = scratch / "out"
        stage.mkdir()
        shutil.copyfile(root / "boot" / f"vmlinuz-{release}", stage / "vmlinuz")
        shutil.copyfile(root / "boot" / f"initrd.img-{release}", stage / "initrd.img")

        step(f"mke2fs -d ({recipe.FS_SIZE} ext4) and qemu-img convert -c to qcow2")
        raw = scratch / "root.img"
        fs_uuid = str(uuid.UUID(key[:32]))
        hostops.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", recipe.FS_LABEL,
                     "-U", fs_uuid, "-E", f"hash_seed={fs_uuid}", "-d", str(root),
                     str(raw), recipe.FS_SIZE], timeout=600)
        hostops.run(["e2fsck", "-f", "-n", str(raw)], timeout=300)
        hostops.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2",
                     str(raw), str(stage / "disk.qcow2")], timeout=900)
        _write_manifest(stage, key, versions, release, raw.stat().st_size)
        # Rename into place: readers see a whole entry or none.
        shutil.rmtree(out, ignore_errors=True)
        os.replace(stage, out)
        image = _load_cached(out)
        if image is None:
            raise RuntimeError(f"the new image in {out} does not read back")
        step(f"built {image.version}: qcow2 {image.disk.stat().st_size / 2**20:.0f} MiB "
             f"(virtual {image.virtual_size / 2**30:.1f} GiB), kernel "
             f"{image.kernel.stat().st_size / 2**20:.1f} MiB, initrd "
             f"{image.initrd.stat().st_size / 2**20:.1f} MiB in {out}")
        return image
    finally:
        _remove_scratch(scratch)


def _prepare_apt(root: Path, sources_list: str, sources: list[AptSource]) -> None:
    """Point the root's apt at the host's mirror and give it the host's
    package lists: no download of indexes, and the same candidates the
    cache key was computed from."""
    _write(root / "etc/apt/sources.list", sources_list)
    lists = root / "var/lib/apt/lists"
    for old in lists.glob("*_dists_*"):
        old.unlink()
    prefixes = {list_prefix(s.uri, s.suite) for s in sources}
    for path in APT_LISTS.iterdir():
        if path.is_file() and any(path.name.startswith(p) for p in prefixes):
            shutil.copyfile(path, lists / path.name)
    _write(root / "usr/sbin/policy-rc.d", recipe.POLICY_RC_D, 0o755)
    for rel, (text, mode) in recipe.build_files().items():
        _write(root / rel, text, mode)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # resolv.conf may be a symlink (into the host's!)
    path.write_text(text)
    path.chmod(mode)


def _installed_versions(root: Path) -> dict[str, str]:
    """Package -> version from the root's dpkg status file."""
    versions: dict[str, str] = {}
    name = None
    for line in (root / "var/lib/dpkg/status").read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version: ") and name:
            versions[name] = line.split(":", 1)[1].strip()
    return versions


def _configure(root: Path) -> None:
    for rel, (text, mode) in recipe.files().items():
        _write(root / rel, text, mode)
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    (root / UNSAFE_IO).unlink(missing_ok=True)
    # Made by the openssh-server postinst on the build host: every guest
    # would share them. cloud-init makes each instance its own.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def _trim(root: Path) -> None:
    for rel in recipe.TRIM_DIRS:
        base = root / rel
        if not base.is_dir():
            continue
        for child in base.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    docs = root / "usr/share/doc"
    for path in sorted(docs.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != "copyright":
            path.unlink()
    for old in (root / "var/cache/debconf").glob("*-old"):
        old.unlink()
    for old in (root / "var/lib/dpkg").glob("*-old"):
        old.unlink()


def _write_manifest(stage: Path, key: str, versions: dict[str, str], release: str,
                    virtual_size: int) -> None:
    files = {"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"}
    manifest = {
        **files, "version": f"{recipe.SUITE}+{key[:12]}", "kernel_release": release,
        "build_id": key, "packages": versions, "cmdline": recipe.CMDLINE,
        "virtual_size": virtual_size,
        "sizes": {k: (stage / v).stat().st_size for k, v in files.items()},
        **{f"{k}_sha256": _sha256(stage / v) for k, v in files.items()}}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
