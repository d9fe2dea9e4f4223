"""Parts for guest images from Debian packages: resolve, download, unpack.

Nothing is installed on the host: `apt-get download` fetches .debs into a
scratch directory and `dpkg-deb -x` unpacks them into a tree. Versions come
from apt's candidate, so a security update of the kernel changes the
resolved package name and the tiny image's cache key with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from stackbox.common import hostops

# apt refuses to drop privileges into a directory `_apt` cannot enter and
# warns; the scratch dir is ours, so say so instead of chmod'ing it.
APT_OPTS = ["-o", "APT::Sandbox::User=root"]


def resolve_dependency(metapackage: str, prefix: str) -> str:
    """The first `Depends:` of `metapackage` starting with `prefix`, e.g.
    linux-image-cloud-amd64 -> linux-image-6.1.0-56-cloud-amd64."""
    proc = hostops.run(["apt-cache", "depends", metapackage], timeout=60)
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "Depends" and value.startswith(prefix) and "<" not in value:
            return value
    raise RuntimeError(f"apt-cache cannot resolve {metapackage} to {prefix}*")


def runtime_closure(package: str) -> list[str]:
    """`package` and everything it needs at run time (Depends and
    Pre-Depends, recursively); virtual packages are left out."""
    proc = hostops.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
         package], timeout=60)
    names = [ln.strip() for ln in proc.stdout.decode(errors="replace").splitlines()
             if ln and not ln[0].isspace() and not ln.startswith("<")]
    return sorted(set(names))


def candidate_versions(packages: list[str]) -> dict[str, str]:
    """Package -> the version `apt-get download` would fetch."""
    proc = hostops.run(["apt-cache", "show", "--no-all-versions", *packages],
                       timeout=60)
    versions: dict[str, str] = {}
    name = None
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("Package: "):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version: ") and name and name not in versions:
            versions[name] = line.split(":", 1)[1].strip()
    missing = sorted(set(packages) - set(versions))
    if missing:
        raise RuntimeError(f"apt has no candidate for {', '.join(missing)}")
    return versions


def download_and_unpack(versions: dict[str, str], scratch: Path, tree: Path) -> None:
    """apt-get download exactly `versions` into `scratch`, unpack into `tree`."""
    scratch.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}={version}" for name, version in sorted(versions.items())]
    try:
        # env -C: apt-get download writes into its cwd; don't chdir ourselves.
        hostops.run(["env", "-C", str(scratch), "apt-get", *APT_OPTS,
                     "download", *pins], timeout=600)
    except hostops.CommandError as exc:
        raise RuntimeError(f"{exc} (stale package lists? run `apt-get update`)") from exc
    debs = sorted(scratch.glob("*.deb"))
    if len(debs) != len(versions):
        raise RuntimeError(f"expected {len(versions)} .debs, got {len(debs)}")
    for deb in debs:
        hostops.run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=300)


def in_tree(tree: Path, path: str | Path, _depth: int = 0) -> Path:
    """Resolve `path` as the guest would see it, with `tree` as its root:
    absolute symlinks in packages (/lib64/ld-linux...) must not escape to
    the host's files."""
    if _depth > 40:
        raise RuntimeError(f"symlink loop at {path}")
    current = tree
    parts = Path(str(path).lstrip("/")).parts
    for i, part in enumerate(parts):
        if part == "..":
            current = current.parent if current != tree else tree
            continue
        nxt = current / part
        if nxt.is_symlink():
            target = os.readlink(nxt)
            rest = Path(*parts[i + 1:]) if i + 1 < len(parts) else Path()
            base = "/" if target.startswith("/") else "/" + str(current.relative_to(tree))
            return in_tree(tree, Path(base, target, rest), _depth + 1)
        current = nxt
    return current


_LIST_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$")


def shared_libraries(tree: Path, binary: Path) -> dict[str, Path]:
    """Guest name -> host file of each library `binary` loads, the loader
    included, found by the package's own loader (`ld.so --list`) so only the
    unpacked libraries are used. A library that resolves outside `tree`
    means a package is missing from the closure: fail instead of copying
    the host's."""
    loader = loader_path(tree)
    proc = hostops.run([str(loader), "--inhibit-cache", "--library-path",
                        library_path(tree), "--list", str(binary)], timeout=30)
    libs: dict[str, Path] = {}
    root = tree.resolve()
    for line in proc.stdout.decode(errors="replace").splitlines():
        match = _LIST_LINE.match(line)
        if not match:
            continue  # linux-vdso.so.1 has no file
        name, found = match.groups()
        host = Path(found).resolve()
        if root not in host.parents:
            raise RuntimeError(f"{binary.name} needs {name}, found only on the host "
                               f"({found}): a package is missing")
        libs[name] = host
    return libs


def loader_path(tree: Path) -> Path:
    return in_tree(tree, "/lib64/ld-linux-x86-64.so.2")


def library_path(tree: Path) -> str:
    dirs = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"]
    return ":".join(str(tree / d) for d in dirs if (tree / d).is_dir())


def run_packaged(tree: Path, binary: Path, args: list[str], *,
                 timeout: float) -> None:
    """Run a dynamically linked binary from `tree` on the host with the
    tree's own loader and libraries (e.g. dropbearkey at build time)."""
    hostops.run([str(loader_path(tree)), "--inhibit-cache", "--library-path",
                 library_path(tree), str(binary), *args], timeout=timeout)
