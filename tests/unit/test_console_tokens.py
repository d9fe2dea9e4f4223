"""Console tokens (one use, expiry, only hashes stored) and console URLs."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from stackbox.common.config import load_settings
from stackbox.compute.consoleproxy import console_base_url, console_url, find_novnc
from stackbox.compute.consoletokens import (TOMBSTONE_SECONDS, ConsoleTokenError,
                                            ConsoleTokens, MemoryTokenBackend, TokenRecord)
from stackbox.compute.drivers.base import ConsoleEndpoint

UUID = "6f1c1b8e-1d52-4a8f-9f53-0a3f3c7d2b11"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def lookup(calls):
    def console_endpoint(uuid, kind):
        calls.append((uuid, kind))
        return ConsoleEndpoint(kind=kind, unix_path=Path(f"/run/sbx/{uuid}/{kind}.sock"))
    return console_endpoint


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tokens(clock):
    return ConsoleTokens(MemoryTokenBackend(), ttl=600, clock=clock)


def test_issue_asks_the_driver_once_and_consume_returns_its_endpoint(tokens):
    calls = []
    token = tokens.issue(UUID, "vnc", lookup(calls))
    assert calls == [(UUID, "vnc")]
    assert len(token) >= 40 and token.replace("-", "").replace("_", "").isalnum()
    record = tokens.consume(token)
    assert record.instance_uuid == UUID and record.kind == "vnc"
    assert record.endpoint.unix_path == Path(f"/run/sbx/{UUID}/vnc.sock")


def test_a_token_opens_one_connection_only(tokens):
    token = tokens.issue(UUID, "serial", lookup([]))
    tokens.consume(token)
    with pytest.raises(ConsoleTokenError, match="already used"):
        tokens.consume(token)


def test_expired_and_unknown_tokens_say_so(tokens, clock):
    token = tokens.issue(UUID, "vnc", lookup([]))
    clock.now += 600
    with pytest.raises(ConsoleTokenError, match="expired"):
        tokens.consume(token)
    with pytest.raises(ConsoleTokenError, match="unknown"):
        tokens.consume("not-a-token")
    with pytest.raises(ConsoleTokenError, match="no console token"):
        tokens.consume("")


def test_token_valid_until_just_before_expiry(tokens, clock):
    token = tokens.issue(UUID, "vnc", lookup([]))
    clock.now += 599.9
    assert tokens.consume(token).kind == "vnc"


def test_store_keeps_hashes_never_tokens(tokens):
    token = tokens.issue(UUID, "vnc", lookup([]))
    records = list(tokens.backend._records.values())
    assert len(records) == 1
    dumped = json.dumps(records[0].to_json())
    assert token not in dumped
    assert TokenRecord.from_json(json.loads(dumped)) == records[0]


def test_old_records_are_purged_on_issue(tokens, clock):
    tokens.issue(UUID, "vnc", lookup([]))
    clock.now += 600 + TOMBSTONE_SECONDS + 1
    tokens.issue(UUID, "vnc", lookup([]))
    assert len(tokens.backend) == 1


def test_unknown_kind_and_unreachable_endpoint_fail_at_issue(tokens):
    with pytest.raises(ValueError, match="allowed: vnc, serial"):
        tokens.issue(UUID, "spice", lookup([]))
    with pytest.raises(ValueError, match="neither"):
        tokens.issue(UUID, "vnc", lambda uuid, kind: ConsoleEndpoint(kind=kind))
    assert len(tokens.backend) == 0


def test_racing_consumers_only_one_wins(tokens):
    token = tokens.issue(UUID, "vnc", lookup([]))
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def attempt():
        barrier.wait()
        try:
            wins.append(tokens.consume(token))
        except ConsoleTokenError as e:
            losses.append(e.reason)
    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7


def test_console_urls_have_novas_shapes():
    token = "abc_DEF-123"
    url = console_url("http://cloud.example.com:6080", "vnc", token)
    parts = urlsplit(url)
    assert parts.path == "/vnc_lite.html"
    # noVNC appends `path` to ws://<page host:port>/ -> ws://cloud.example.com:6080/?token=...
    assert parse_qs(parts.query) == {"path": [f"?token={token}"]}
    assert console_url("https://c.example:6080/", "serial", token) == \
        f"wss://c.example:6080/serial?token={token}"
    assert console_url("http://10.0.0.1:6080", "serial", token) == \
        f"ws://10.0.0.1:6080/serial?token={token}"
    with pytest.raises(ValueError):
        console_url("http://x:1", "rdp", token)


def test_console_base_url_follows_public_base_url(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[api]\npublic_base_url = "https://cloud.example.com"\n'
                   '[compute]\nconsole_port = 16080\n')
    assert console_base_url(load_settings(cfg)) == "https://cloud.example.com:16080"
    assert console_base_url(load_settings(None)) == "http://127.0.0.1:6080"


def test_novnc_dir_must_hold_novnc(tmp_path):
    from stackbox.common.config import ConfigError
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[compute]\nnovnc_dir = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="compute.novnc_dir.*vnc_lite.html.*make novnc"):
        load_settings(cfg)
    (tmp_path / "vnc_lite.html").write_text("<html></html>")
    assert load_settings(cfg).compute.novnc_dir == str(tmp_path)
    assert find_novnc(str(tmp_path)) == tmp_path
    assert find_novnc(str(tmp_path / "nothing")) is None


def test_database_backend_spends_each_token_once(tmp_path):
    """The compute service's store: tokens in the database, claimed by one
    conditional UPDATE, with the same refusals as the memory store."""
    from stackbox.common.db import Database, migrate
    from stackbox.compute.consoletokens import DatabaseTokenBackend
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    db = Database(url)
    now = [1000.0]
    tokens = ConsoleTokens(DatabaseTokenBackend(db), ttl=60, clock=lambda: now[0])
    endpoint = ConsoleEndpoint(kind="vnc", unix_path=tmp_path / "vnc.sock")
    token = tokens.issue(UUID, "vnc", lambda uuid, kind: endpoint)
    record = tokens.consume(token)
    assert record.instance_uuid == UUID and record.endpoint == endpoint
    with pytest.raises(ConsoleTokenError, match="already used"):
        tokens.consume(token)
    late = tokens.issue(UUID, "vnc", lambda uuid, kind: endpoint)
    now[0] += 61
    with pytest.raises(ConsoleTokenError, match="expired"):
        tokens.consume(late)
    db.dispose()
