"""The `stackbox` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from stackbox import __version__
from stackbox.common.errors import StackboxError
from stackbox.common.config import DEFAULT_CONFIG, ConfigError, Settings, check_host, load_settings


def _settings(args) -> Settings:
    config = args.config
    if config is None and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    return load_settings(config, data_dir=args.data_dir)


class Progress:
    """One readable line per start-up step: `[2/5] database ... ok (0.3 s)`."""

    def __init__(self, total: int, out=sys.stdout):
        self.total, self.n, self.out = total, 0, out

    def step(self, title: str):
        self.n += 1
        return _Step(self, title)


class _Step:
    def __init__(self, progress: Progress, title: str):
        self.p, self.title, self.note = progress, title, ""

    def __enter__(self):
        self.started = time.monotonic()
        self.p.out.write(f"[{self.p.n}/{self.p.total}] {self.title} ... ")
        self.p.out.flush()
        return self

    def __exit__(self, exc_type, exc, tb):
        ms = time.monotonic() - self.started
        word = "ok" if exc_type is None else "FAILED"
        note = f" {self.note}" if self.note else ""
        self.p.out.write(f"{word}{note} ({ms:.1f} s)\n")
        self.p.out.flush()


def running_pid(data_dir: Path) -> int | None:
    from stackbox.server import pidfile
    try:
        pid = int(pidfile(data_dir).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"stackbox" in cmdline else None


def cmd_up(args) -> int:
    settings = _settings(args)
    data_dir = settings.data_dir
    pid = running_pid(data_dir)
    if pid is not None:
        print(f"stackbox is already running for {data_dir} (pid {pid}); "
              f"`stackbox down --data-dir {data_dir}` stops it.", file=sys.stderr)
        return 1
    progress = Progress(7)
    with progress.step("checking configuration and host"):
        check_host(settings)
    from stackbox.common.db import Database, migrate
    from stackbox.identity import bootstrap as boot
    with progress.step("applying database migrations") as st:
        applied = migrate(settings.database_url)
        st.note = f"({len(applied)} applied)" if applied else "(up to date)"
    db = Database(settings.database_url)
    try:
        with progress.step("bootstrapping identity and catalog") as st:
            created = boot.bootstrap(db, password_cost=settings.identity.password_hash_cost)
            boot.sync_catalog(db, settings)
            st.note = "(admin and demo created)" if created else "(existing cloud)"
            if settings.network.default_networks:
                made = _default_networks(db, settings)
                st.note += f" (networks: {', '.join(made)})" if made else ""
        with progress.step("writing credentials"):
            if created:
                boot.write_credentials(data_dir, settings, created)
            else:
                boot.refresh_credentials(data_dir, settings)
        with progress.step("preparing compute: flavors and the tiny guest image") as st:
            st.note = _prepare_compute(db, settings)
        with progress.step("choosing the accelerator (KVM, else TCG)") as st:
            st.note = _probe_accel(settings)
    finally:
        db.dispose()
    if args.detach:
        with progress.step("starting the APIs in the background") as st:
            st.note = _start_detached(args, settings)
        _summary(settings)
        return 0
    with progress.step("starting the APIs"):
        from stackbox.server import bind
        sockets = [bind(settings.api.bind_address, p) for p in settings.listen_ports().values()]
    _summary(settings)
    print("Press Ctrl-C to stop.", flush=True)
    from stackbox.common import logs
    from stackbox.server import serve
    logs.setup(data_dir, level=settings.log.level, max_bytes=settings.log.max_bytes,
               backups=settings.log.backups, to_stderr=True)
    serve(settings, sockets)
    return 0


def _probe_accel(settings: Settings) -> str:
    """Probe once here (the result is cached) so the server starts at once."""
    if settings.compute.driver != "qemu":
        return f"(driver {settings.compute.driver}: no guests run)"
    if settings.compute.accel != "auto":
        return f"({settings.compute.accel}, as configured)"
    from stackbox.server import choose_accel
    return f"({choose_accel(settings)})"


def _prepare_compute(db, settings: Settings) -> str:
    from stackbox.compute import bootstrap as compute_boot
    notes = []
    if settings.compute.default_flavors:
        compute_boot.ensure_flavors(db)
        notes.append("flavors")
    if settings.compute.tiny_image:
        from stackbox.identity.service import IdentityService
        from stackbox.image.drivers.local import LocalStore
        from stackbox.image.service import ImageService
        image = ImageService(db, settings, LocalStore(settings.data_dir / "images"))
        cache = settings.compute.guest_cache_dir or settings.data_dir / "cache" / "guests"
        from stackbox.common.errors import StackboxError
        try:
            notes.append(compute_boot.register_tiny(db, settings,
                                                    identity=IdentityService(db, settings),
                                                    image=image, cache_dir=cache))
        except StackboxError as e:      # e.g. an image quota too small for it: up still works
            notes.append(f"tiny not registered: {e.message}")
    return f"({'; '.join(notes)})" if notes else "(nothing to do)"
def _default_networks(db, settings: Settings) -> list[str]:
    from stackbox.common.http.context import RequestContext
    from stackbox.identity.service import IdentityService
    from stackbox.network.defaults import ensure_default_networks
    from stackbox.network.service import NetworkService
    admin = RequestContext(request_id="req-bootstrap", roles=("admin",))
    projects = {p.name: p.id for p in IdentityService(db, settings).list_projects(
        admin, domain_id="default")}
    return ensure_default_networks(NetworkService(db, settings), settings,
                                   admin_project=projects["admin"],
                                   demo_project=projects["demo"])


def _start_detached(args, settings: Settings) -> str:
    log_dir = settings.data_dir / "log"
    log_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "stackbox", "serve", "--data-dir", str(settings.data_dir)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    with open(log_dir / "stackbox.out", "ab") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the stackbox process exited with {child.returncode}; see "
                               f"{log_dir / 'stackbox.out'} and {log_dir / 'stackbox.log'}")
        if all(_version_doc(settings, name)[0] for name in settings.service_ports()):
            return f"(pid {child.pid})"
        time.sleep(0.1)
    child.terminate()
    raise RuntimeError(f"the APIs did not answer within 120 s; see {log_dir}")


def _version_doc(settings: Settings, service: str) -> tuple[bool, str]:
    port = settings.service_ports()[service]
    host = settings.api.bind_address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:  # Keystone answers its version list with 300
        if e.code != 300:
            return False, f"HTTP {e.code}"
        body = json.loads(e.read())
    except (OSError, ValueError) as e:
        return False, str(getattr(e, "reason", e))
    versions = body.get("versions", {})
    values = versions.get("values", versions) if isinstance(versions, dict) else versions
    ids = [v.get("id", "?") for v in values] if isinstance(values, list) else []
    return True, ", ".join(ids) or "?"


def _summary(settings: Settings) -> None:
    d = settings.data_dir
    print(f"\nstackbox {__version__} is up.")
    for name in settings.service_ports():
        print(f"  {name:<14} {settings.base_url(name)}")
    print(f"\nCredentials: {d / 'clouds.yaml'} (clouds: stackbox = admin, stackbox-demo = demo)")
    print(f"             {d / 'openrc-admin'}, {d / 'openrc-demo'}")
    import shutil
    client = "openstack"
    beside = Path(sys.executable).parent / "openstack"
    if shutil.which("openstack") is None and beside.exists():
        client = str(beside)  # the virtualenv's client, when it is not on PATH
    print("Try:\n"
          f"  export OS_CLIENT_CONFIG_FILE={d / 'clouds.yaml'}\n"
          f"  {client} --os-cloud stackbox project list\n", flush=True)


def cmd_serve(args) -> int:
    settings = _settings(args)
    from stackbox.common import logs
    from stackbox.server import serve
    logs.setup(settings.data_dir, level=settings.log.level, max_bytes=settings.log.max_bytes,
               backups=settings.log.backups, to_stderr=False)
    serve(settings)
    return 0


def cmd_down(args) -> int:
    settings = _settings(args)
    pid = running_pid(settings.data_dir)
    if pid is None:
        print(f"stackbox is not running for {settings.data_dir}.")
        if args.purge:
            _purge(settings)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    # wait for the process itself, not its pidfile: threads may outlive the file
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        print(f"stackbox (pid {pid}) did not stop in 30 s; killed.")
    else:
        print(f"stackbox (pid {pid}) stopped.")
    if args.purge:
        _purge(settings)
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _purge(settings: Settings) -> None:
    """Remove what this cloud runs on the host (VMs, bridges, namespaces,
    dnsmasq, nft tables); the database and files stay."""
    instances = settings.data_dir / "instances"
    if instances.is_dir():
        from stackbox.compute.drivers.qemu import QemuDriver
        driver = QemuDriver(instances, accel="tcg")
        for uuid in driver.list_instances():
            driver.destroy(uuid)
            print(f"removed instance {uuid}")
    from stackbox.network.agent import NetworkAgent
    from stackbox.network.hoststate import HostState
    agent = NetworkAgent.from_settings(settings, desired=lambda: HostState(host_id="purge"))
    report = agent.cleanup_all()
    print(f"removed host networking ({len(getattr(report, 'changes', []))} objects)")


def cmd_status(args) -> int:
    settings = _settings(args)
    pid = running_pid(settings.data_dir)
    print(f"stackbox {'running, pid ' + str(pid) if pid else 'not running'} "
          f"(data dir {settings.data_dir})")
    healthy = True
    print(f"{'service':<14} {'address':<28} {'health':<8} version")
    for name in settings.service_ports():
        ok, detail = _version_doc(settings, name)
        healthy &= ok
        print(f"{name:<14} {settings.base_url(name):<28} {'OK' if ok else 'DOWN':<8} {detail}")
    try:
        from stackbox.common.db import Database
        from stackbox.common.registry import list_agents
        from stackbox.common.db import utcnow
        db = Database(settings.database_url)
        agents = list_agents(db)
        db.dispose()
        print(f"\n{'agent':<16} {'host':<24} {'version':<9} last seen")
        for a in agents:
            age = (utcnow() - a.last_seen).total_seconds()
            print(f"{a.binary:<16} {a.host:<24} {a.version:<9} {age:.0f} s ago (pid {a.pid})")
    except Exception as e:  # the database may not exist yet
        print(f"\nagents: unknown ({str(e).splitlines()[0][:120]})")
    return 0 if healthy else 1


def cmd_openrc(args) -> int:
    settings = _settings(args)
    user = {"stackbox": "admin", "stackbox-demo": "demo"}.get(args.cloud)
    if user is None:
        print(f"unknown cloud {args.cloud!r}; have: stackbox, stackbox-demo", file=sys.stderr)
        return 2
    path = settings.data_dir / f"openrc-{user}"
    if not path.exists():
        print(f"{path} does not exist; run `stackbox up` first", file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text())
    return 0


def cmd_doctor(args) -> int:
    import logging
    logging.basicConfig(level=logging.ERROR)  # doctor's own lines say what went wrong
    from stackbox.cli.doctor import run_doctor
    return run_doctor(_settings(args))


def cmd_config_docs(args) -> int:
    from stackbox.common.config import render_docs
    text = render_docs()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_keys_rotate(args) -> int:
    settings = _settings(args)
    from stackbox.common.db import Database
    from stackbox.identity.service import IdentityService
    db = Database(settings.database_url)
    try:
        key_id = IdentityService(db, settings).keys.rotate()
    finally:
        db.dispose()
    print(f"new primary token signing key {key_id}; tokens signed by older keys stay valid "
          f"until they expire")
    return 0


def cmd_image_build(args) -> int:
    settings = _settings(args)
    cache_dir = args.cache_dir or settings.compute.guest_cache_dir or \
        settings.data_dir / "cache" / "guests"
    if args.name == "debian":
        from stackbox.guest.debian import build_debian
        image = build_debian(cache_dir)
        print(f"debian {image.version} (kernel {image.kernel_release})\n"
              f"  disk      {image.disk}  sha256 {image.disk_sha256}  ({image.disk_format}, "
              f"virtual size {image.virtual_size} bytes)\n"
              f"  kernel    {image.kernel}  sha256 {image.kernel_sha256}\n"
              f"  initrd    {image.initrd}  sha256 {image.initrd_sha256}\n"
              f"  cmdline   {image.cmdline}")
        return 0
    from stackbox.guest.tiny import build_tiny
    image = build_tiny(cache_dir)
    print(f"tiny {image.version}\n  kernel    {image.kernel}  sha256 {image.kernel_sha256}\n"
          f"  initramfs {image.initramfs}  sha256 {image.initramfs_sha256}\n"
          f"  cmdline   {image.cmdline}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stackbox", description=__doc__)
    p.add_argument("--version", action="version", version=f"stackbox {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help=f"TOML configuration file (default: {DEFAULT_CONFIG} if it exists)")
    common.add_argument("--data-dir", type=Path, default=None,
                        help="state directory (overrides data_dir in the file)")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the cloud")
    up.add_argument("--detach", action="store_true",
                    help="return once every API answers its version document")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("serve", parents=[common], help=argparse.SUPPRESS).set_defaults(fn=cmd_serve)
    down = sub.add_parser("down", parents=[common], help="stop the cloud (VMs and networks "
                          "keep running unless --purge)")
    down.add_argument("--purge", action="store_true",
                      help="also remove this cloud's VMs and host networking")
    down.set_defaults(fn=cmd_down)
    sub.add_parser("status", parents=[common],
                   help="services and agents").set_defaults(fn=cmd_status)
    sub.add_parser("doctor", parents=[common],
                   help="check this host").set_defaults(fn=cmd_doctor)
    rc = sub.add_parser("openrc", parents=[common], help="print an openrc file")
    rc.add_argument("--cloud", default="stackbox", help="stackbox (admin) or stackbox-demo")
    rc.set_defaults(fn=cmd_openrc)
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    docs = cfg_sub.add_parser("docs", help="print docs/configuration.md")
    docs.add_argument("--output", default=None)
    docs.set_defaults(fn=cmd_config_docs)
    keys = sub.add_parser("keys", help="token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("rotate", parents=[common],
                        help="add a new primary signing key").set_defaults(fn=cmd_keys_rotate)
    from stackbox.cli import ring as ring_cli
    ring_cli.add_parsers(sub, common, lambda fn: (
        lambda args: fn(args, _settings(args).data_dir)))
    image = sub.add_parser("image", help="guest images built from Debian packages")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", parents=[common],
                                 help="build (or reuse the cached) guest image")
    build.add_argument("name", choices=["tiny", "debian"], help="tiny: busybox + dropbear "
                       "CirrOS-like guest (kernel + initramfs); debian: bookworm with "
                       "cloud-init and openssh-server (qcow2 + kernel + initrd, needs root "
                       "and debootstrap)")
    build.add_argument("--cache-dir", type=Path, default=None,
                       help="where built images are kept (default: <data_dir>/cache/images)")
    build.set_defaults(fn=cmd_image_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print("stackbox: invalid configuration, nothing was started:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"stackbox: {e}", file=sys.stderr)
        return 1
    except StackboxError as e:
        where = f" ({e.field})" if e.field else ""
        print(f"stackbox: {e.message}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
