"""Shared fixtures: a real stackbox started in a temporary data dir, once per
database backend (SQLite, and PostgreSQL when STACKBOX_TEST_PG_URL is set;
under CI=true PostgreSQL is required)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from stackbox.common.config import SERVED

VENV_BIN = Path(sys.executable).parent
STACKBOX = str(VENV_BIN / "stackbox")
OPENSTACK = str(VENV_BIN / "openstack")
PG_ADMIN_URL = os.environ.get("STACKBOX_TEST_PG_URL", "")
GUEST_CACHE = os.environ.get("STACKBOX_TEST_CACHE", "/var/cache/stackbox-test")


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_handed_out: set[int] = set()
# Below the ephemeral range and above the well-known services' ports (stackbox's
# defaults, PostgreSQL's 5432, the Swift peer's 16200-18080 and the like).
_PORTS = [p for p in range(20000, 32000)
          if not _EPHEMERAL[0] <= p <= _EPHEMERAL[1]]


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range: a port
    taken from that range (bind to port 0) could be handed to an outgoing
    connection (to PostgreSQL, to another cloud) in the seconds before the
    cloud binds it, and the cloud would then fail to start. Each port is
    handed out once per test session."""
    for _attempt in range(200 if _PORTS else 0):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:      # a host whose ephemeral range covers 20000-31999
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, *, env=None, check=True, timeout=120, input=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


class Cloud:
    """A running stackbox and helpers to drive it with real clients."""

    def __init__(self, root: Path, backend: str, db_url: str, *,
                 extra: dict[str, list[str]] | None = None):
        """extra: more `key = value` lines per config section, e.g.
        {"object_store": ["replicator_interval = 1"]}."""
        if len(str(root)) > 40:
            # QEMU's unix sockets live under <data_dir>/instances/<uuid>/ and a
            # unix socket path holds at most 107 bytes: keep the root short
            import atexit
            import shutil
            import tempfile
            root = Path(tempfile.mkdtemp(prefix="sbx-c-"))
            # removed at the end, not in stop(): tests stop and start a cloud again
            atexit.register(shutil.rmtree, root, ignore_errors=True)
        self.root = root
        self.backend = backend
        self.data_dir = root / "data"
        self.config = root / "stackbox.toml"
        self.ports = {name: free_port() for name in SERVED}
        self.port = self.ports["identity"]
        self.image_port = self.ports["image"]
        lines = []
        for name, port in self.ports.items():
            lines += [f"[{name}]", f"port = {port}"]
            if name == "identity":
                # keep tests fast: the KDF cost is a benchmark concern, not a test one
                lines.append("password_hash_cost = 10")
            if name == "network":
                # a bridge of its own, so clouds side by side never share one
                self.public_bridge = f"sbx-bx{uuid.uuid4().hex[:6]}"
                lines.append(f'bridge_mappings = "public:{self.public_bridge}"')
            if name == "compute":
                # one guest build cache for every test cloud (and the e2e tests)
                lines.append(f'guest_cache_dir = "{GUEST_CACHE}"')
                lines.append(f"console_port = {free_port()}")
            lines += (extra or {}).get(name, [])
        if db_url:
            lines += ["[database]", f'url = "{db_url}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.auth_url = f"http://127.0.0.1:{self.port}/v3"

    def stackbox(self, *args, check=True, env=None) -> subprocess.CompletedProcess:
        return run([STACKBOX, *args, "--config", str(self.config), "--data-dir",
                    str(self.data_dir)], check=check, env=env, timeout=600)

    def start(self) -> None:
        try:
            self.stackbox("up", "--detach")
        except AssertionError as exc:
            # the data dir may be gone by the time anyone looks: keep the
            # end of the process's logs with the failure
            tails = []
            for name in ("stackbox.out", "stackbox.log"):
                path = self.data_dir / "log" / name
                if path.exists():
                    lines = path.read_text(errors="replace").splitlines()[-40:]
                    tails.append(f"--- last lines of {path}:\n" + "\n".join(lines))
            raise AssertionError("\n".join([str(exc), *tails])) from None
        clouds = yaml.safe_load((self.data_dir / "clouds.yaml").read_text())["clouds"]
        self.admin_password = clouds["stackbox"]["auth"]["password"]
        self.demo_password = clouds["stackbox-demo"]["auth"]["password"]

    def stop(self) -> None:
        self.stackbox("down", "--purge", check=False)

    @property
    def clouds_yaml(self) -> Path:
        return self.data_dir / "clouds.yaml"

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = str(self.clouds_yaml)
        env.update(extra)
        return env

    def user_env(self, user: str, password: str, project: str) -> dict:
        """Environment for the CLI logging in as `user` scoped to `project`."""
        return self.env(OS_AUTH_URL=self.auth_url, OS_USERNAME=user, OS_PASSWORD=password,
                        OS_PROJECT_NAME=project, OS_USER_DOMAIN_NAME="Default",
                        OS_PROJECT_DOMAIN_NAME="Default", OS_IDENTITY_API_VERSION="3")

    def openstack(self, *args, cloud: str | None = "stackbox", check=True, env=None,
                  as_json=True):
        argv = [OPENSTACK]
        if cloud:
            argv += ["--os-cloud", cloud]
        argv += list(args)
        if as_json:
            argv += ["-f", "json"]
        proc = run(argv, env=env or self.env(), check=check)
        if check and as_json and proc.stdout.strip():
            # `--wait` prints progress ("Complete") before the document
            text = proc.stdout
            starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
            return json.loads(text[min(starts):] if starts else text)
        return proc

    def sdk(self, cloud: str = "stackbox"):
        import openstack
        import openstack.config
        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)])
        return openstack.connection.Connection(config=config.get_one(cloud=cloud))

    def token(self, username="admin", password=None, project="admin") -> str:
        import requests
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": username, "domain": {"id": "default"},
            "password": password or self.admin_password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        r = requests.post(f"{self.auth_url}/auth/tokens", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"]


def _backends():
    params = [pytest.param("sqlite", id="sqlite")]
    if PG_ADMIN_URL or os.environ.get("CI") == "true":
        params.append(pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres))
    return params


@pytest.fixture(scope="session", params=_backends())
def cloud(request, tmp_path_factory):
    backend = request.param
    db_url, drop = "", None
    if backend == "postgresql":
        if not PG_ADMIN_URL:
            pytest.fail("CI=true but STACKBOX_TEST_PG_URL is not set: .ci/run must start "
                        "PostgreSQL")
        db_url, drop = _create_pg_database()
    # a short root: QEMU's unix sockets live under <data_dir>/instances/<uuid>/
    # and a unix socket path holds at most 107 bytes
    import shutil
    import tempfile
    root = Path(tempfile.mkdtemp(prefix=f"sbx-{backend[:2]}-"))
    c = Cloud(root, backend, db_url)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
        if drop:
            drop()


def _create_pg_database():
    import psycopg
    name = f"sbx_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_ADMIN_URL.rpartition("/")

    def drop():
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"{base}/{name}", drop


@pytest.fixture
def pg_database():
    """A fresh empty PostgreSQL database URL (skipped without PostgreSQL)."""
    if not PG_ADMIN_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but STACKBOX_TEST_PG_URL is not set")
        pytest.skip("STACKBOX_TEST_PG_URL not set")
    url, drop = _create_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def unique():
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:8]}"
