"""`stackbox up/down/status/openrc` as an operator runs them."""

from __future__ import annotations

import os
import socket

import pytest
import requests

from tests.conftest import Cloud, free_port, run, STACKBOX


def test_unknown_config_key_refuses_to_start(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(f"[identity]\nport = {free_port()}\ntoken_expiraton = 60\n")
    data = tmp_path / "data"
    res = run([STACKBOX, "up", "--detach", "--config", str(config), "--data-dir", str(data)],
              check=False)
    assert res.returncode == 2
    assert "identity.token_expiraton: unknown key" in res.stderr
    assert "did you mean 'token_expiration'?" in res.stderr
    assert str(config) in res.stderr
    assert not data.exists(), "nothing may be created for an invalid configuration"


def test_port_in_use_refuses_to_start(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f"[identity]\nport = {port}\n")
        res = run([STACKBOX, "up", "--detach", "--config", str(config), "--data-dir",
                   str(tmp_path / "data")], check=False)
    assert res.returncode == 2 and "already in use" in res.stderr
    assert not (tmp_path / "data" / "stackbox.sqlite").exists()


@pytest.fixture
def second_cloud(tmp_path):
    c = Cloud(tmp_path, "sqlite", "")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_lifecycle_status_openrc_restart(second_cloud):
    c = second_cloud
    for name in ("clouds.yaml", "openrc-admin", "openrc-demo"):
        assert (c.data_dir / name).stat().st_mode & 0o777 == 0o600
    status = c.stackbox("status")
    assert "identity" in status.stdout and "OK" in status.stdout and "v3.14" in status.stdout
    assert "stackbox-api" in status.stdout
    rc = c.stackbox("openrc", "--cloud", "stackbox-demo").stdout
    assert "OS_USERNAME=demo" in rc and f"OS_AUTH_URL={c.auth_url}" in rc
    token = c.token()
    # starting twice is refused, the first keeps running
    again = c.stackbox("up", "--detach", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    c.stop()
    down = c.stackbox("status", check=False)
    assert down.returncode == 1 and "not running" in down.stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(c.auth_url, timeout=5)
    # The same data dir comes back with the same users, keys and passwords:
    # tokens issued before the restart stay valid.
    c.start()
    r = requests.get(f"{c.auth_url}/auth/projects", headers={"X-Auth-Token": token},
                     timeout=10)
    assert r.status_code == 200 and {p["name"] for p in r.json()["projects"]} == {"admin"}
    assert c.openstack("project", "list")


def test_two_clouds_side_by_side_are_independent(cloud, second_cloud):
    assert cloud.port != second_cloud.port
    foreign = second_cloud.token()
    r = requests.get(f"{cloud.auth_url}/projects", headers={"X-Auth-Token": foreign},
                     timeout=10)
    assert r.status_code == 401
    assert cloud.openstack("project", "list") and second_cloud.openstack("project", "list")


def test_down_only_stops_its_own_cloud(cloud, second_cloud):
    second_cloud.stop()
    assert requests.get(cloud.auth_url, timeout=5).status_code == 200
    assert not (second_cloud.data_dir / "stackbox.pid").exists()
    assert os.path.exists(cloud.data_dir / "stackbox.pid")
