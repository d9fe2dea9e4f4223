"""Configuration: every error names file, key, value, why and a fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stackbox.common.config import (ConfigError, check_host, load_settings, render_docs)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "stackbox.toml"
    path.write_text(text)
    return path


def problems(path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_settings(path, **kw)
    return e.value.problems


def test_defaults_need_no_file():
    s = load_settings(None)
    assert s.identity.port == 5000 and s.api.bind_address == "127.0.0.1"
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("stackbox.sqlite")
    assert s.base_url("identity") == "http://127.0.0.1:5000"


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "[identity]\ntoken_expiraton = 10\n")
    [msg] = problems(path)
    assert str(path) in msg and "identity.token_expiraton" in msg
    assert "unknown key" in msg and "did you mean 'token_expiration'?" in msg


def test_unknown_section_lists_known_keys(tmp_path):
    [msg] = problems(write(tmp_path, "[idenity]\nport = 1\n"))
    assert "idenity" in msg and "did you mean 'identity'?" in msg


def test_wrong_type_and_range_name_value_and_default(tmp_path):
    msgs = problems(write(tmp_path, '[identity]\nport = "five"\ntoken_expiration = 5\n'))
    assert len(msgs) == 2
    port = next(m for m in msgs if "identity.port" in m)
    assert "'five'" in port and "default: 5000" in port
    exp = next(m for m in msgs if "identity.token_expiration" in m)
    assert "= 5" in exp and "greater than or equal to 60" in exp


def test_missing_interface_lists_what_the_host_has(tmp_path):
    [msg] = problems(write(tmp_path, '[network]\npublic_interface = "sbx-nope0"\n'))
    assert "network.public_interface = 'sbx-nope0'" in msg
    assert "no such interface on this host (have:" in msg and "lo" in msg


def test_bad_bind_address_and_db_scheme(tmp_path):
    msgs = problems(write(tmp_path, '[api]\nbind_address = "localhost"\n'
                                    '[database]\nurl = "mysql://x"\n'))
    assert any("api.bind_address" in m and "not an IP address" in m for m in msgs)
    assert any("database.url" in m and "sqlite or postgresql" in m for m in msgs)


def test_invalid_toml_is_reported(tmp_path):
    [msg] = problems(write(tmp_path, "[identity\n"))
    assert "not valid TOML" in msg


def test_port_in_use_is_caught_before_start(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        s = load_settings(write(tmp_path, f"[identity]\nport = {port}\n"),
                          data_dir=tmp_path / "d")
        with pytest.raises(ConfigError) as e:
            check_host(s)
    [msg] = e.value.problems
    assert f"identity.port = {port}" in msg and "already in use" in msg and "fix:" in msg


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = load_settings(None, data_dir=blocker / "sub")
    with pytest.raises(ConfigError) as e:
        check_host(s, ports_held_by_us=True)
    assert "data_dir" in e.value.problems[0] and "cannot create it" in e.value.problems[0]


def test_unreachable_database(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql+psycopg://u:secret@127.0.0.1:{port}/db"
    settings = load_settings(write(tmp_path, f'[database]\nurl = "{url}"\n'),
                             data_dir=tmp_path / "d")
    with pytest.raises(ConfigError) as e:
        check_host(settings, ports_held_by_us=True)
    [msg] = e.value.problems
    assert "database.url" in msg and "cannot connect" in msg and "secret" not in msg


def test_configuration_docs_are_generated_and_current():
    text = render_docs()
    assert "`token_expiration`" in text and "## `[identity]`" in text
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == text, "docs/configuration.md is stale: run `make docs`"
