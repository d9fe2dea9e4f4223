"""Token signing keys, payloads, passwords and the revocation list, on a real
SQLite database."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import select

from stackbox.common.db import Database, migrate, utcnow
from stackbox.common.errors import Unauthorized
from stackbox.identity import passwords
from stackbox.identity.auth import RevocationList
from stackbox.identity.models import Revocation, SigningKey
from stackbox.identity.tokens import KeyRing, TokenCodec, TokenPayload


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 't.sqlite'}"
    migrate(url)
    d = Database(url)
    yield d
    d.dispose()


def payload(**kw):
    p = {"v": 1, "u": "u1", "m": ["password"], "i": int(time.time() * 1e6),
         "e": int(time.time()) + 60, "a": ["aud1"], "p": "p1"}
    p.update(kw)
    return p


def test_rotation_keeps_old_tokens_valid(db):
    ring = KeyRing(db, rotation=3600, token_lifetime=3600)
    ring.ensure_key()
    codec = TokenCodec(ring)
    old = codec.encode(payload())
    ring.rotate()
    new = codec.encode(payload(u="u2"))
    fresh = TokenCodec(KeyRing(db, rotation=3600, token_lifetime=3600))  # another API host
    assert fresh.decode(old).user_id == "u1"
    assert fresh.decode(new).user_id == "u2"
    with db.read() as s:
        assert len(s.scalars(select(SigningKey)).all()) == 2


def test_keys_older_than_any_live_token_are_dropped(db):
    ring = KeyRing(db, rotation=60, token_lifetime=60)
    ring.ensure_key()
    with db.transaction() as s:  # pretend the first key became secondary long ago
        for k in s.scalars(select(SigningKey)):
            k.created_at = utcnow() - dt.timedelta(days=2)
    ring.rotate()
    with db.transaction() as s:
        for k in s.scalars(select(SigningKey).order_by(SigningKey.id.desc()).limit(1)):
            k.created_at = utcnow() - dt.timedelta(days=1)
    ring.rotate()
    with db.read() as s:
        assert len(s.scalars(select(SigningKey)).all()) == 2


def test_expired_tampered_and_foreign_tokens_are_rejected(db, tmp_path):
    ring = KeyRing(db, rotation=3600, token_lifetime=3600)
    ring.ensure_key()
    codec = TokenCodec(ring)
    with pytest.raises(Unauthorized):
        codec.decode(codec.encode(payload(e=int(time.time()) - 1)))
    good = codec.encode(payload())
    tampered = good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:]
    with pytest.raises(Unauthorized):
        codec.decode(tampered)
    other_url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    migrate(other_url)
    other_db = Database(other_url)
    other = KeyRing(other_db, rotation=3600, token_lifetime=3600)
    other.ensure_key()
    with pytest.raises(Unauthorized):
        TokenCodec(other).decode(good)
    other_db.dispose()


def test_revocation_list_matches_audit_user_and_project(db):
    revs = RevocationList(db)
    t = TokenPayload(payload(a=["a1", "chain"]))
    revs.load()
    assert not revs.revoked(t)
    for kw in ({"audit_id": "chain"}, {"user_id": "u1"}, {"project_id": "p1"}):
        with db.transaction() as s:
            s.query(Revocation).delete()
            s.add(Revocation(issued_before=utcnow(), created_at=utcnow(), **kw))
        revs.load()
        assert revs.revoked(t), kw
        later = TokenPayload(payload(i=int((time.time() + 5) * 1e6)))
        assert not revs.revoked(later), "tokens issued after the event stay valid"


def test_password_hash_roundtrip_and_unknown_user_costs_the_same():
    h = passwords.hash_password("s3cret", cost=10)
    assert h.startswith("scrypt$10$") and "s3cret" not in h
    assert passwords.verify_password("s3cret", h, cost=10)
    assert not passwords.verify_password("wrong", h, cost=10)
    assert not passwords.verify_password("s3cret", None, cost=10)
    assert not passwords.verify_password("s3cret", "garbage", cost=10)
    runs = []
    for stored in (h, None):
        t = time.perf_counter()
        passwords.verify_password("x", stored, cost=12)
        runs.append(time.perf_counter() - t)
    assert runs[1] > runs[0] / 4, "an unknown user must cost a full KDF run too"


def test_verified_password_cache():
    cache = passwords.VerifiedCache(ttl=60)
    h = passwords.hash_password("pw", cost=10)
    assert not cache.hit("u1", h, "pw")
    cache.remember("u1", h, "pw")
    assert cache.hit("u1", h, "pw")
    assert not cache.hit("u1", h, "other"), "a wrong password never hits"
    assert not cache.hit("u2", h, "pw"), "another user never hits"
    new_hash = passwords.hash_password("pw", cost=10)
    assert not cache.hit("u1", new_hash, "pw"), "a password change misses by construction"
    assert "pw" not in repr(cache._entries)
    assert not passwords.VerifiedCache(ttl=0).hit("u1", h, "pw")


def test_requests_missing_the_cache_together_load_once(db, monkeypatch):
    """Every second the revocations go stale and every cache_seconds a token's
    entry does; the requests in flight then share one reload of each, instead
    of every one loading both (a revocation still counts at once)."""
    import threading

    from stackbox.identity.auth import Authenticator
    from stackbox.identity.bootstrap import bootstrap
    from stackbox.identity.roles import effective_roles

    made = bootstrap(db, password_cost=10)
    ring = KeyRing(db, rotation=3600, token_lifetime=3600)
    ring.ensure_key()
    auth = Authenticator(db, TokenCodec(ring), token_lifetime=3600, password_cost=10,
                         cache_seconds=60, roles_for=effective_roles)
    token = auth.issue({"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": made["admin"]}}},
        {"project": {"name": "admin", "domain": {"id": "default"}}}).token
    loads, reloads = [], []
    real_load, real_reload = auth._load, auth.revocations.load
    monkeypatch.setattr(auth, "_load", lambda *a: loads.append(1) or real_load(*a))
    monkeypatch.setattr(auth.revocations, "load",
                        lambda: reloads.append(1) or (time.sleep(0.05), real_reload())[1])

    def together(n=16):
        seen, errors = [], []
        start = threading.Barrier(n)

        def one():
            start.wait()
            try:
                seen.append(auth.validate(token).user.name)
            except Exception as exc:          # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=one) for _ in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors and seen == ["admin"] * n

    auth._cache.clear()                 # a token nobody here validated yet
    together()
    assert (len(loads), len(reloads)) == (1, 1)
    auth.revocations._loaded = 0.0      # the revocations went stale
    together()
    assert (len(loads), len(reloads)) == (1, 2), "the cached token is not loaded again"
    auth.add_revocation(user_id=auth.validate(token).user.id)
    auth.revocations._loaded = 0.0
    with pytest.raises(Unauthorized):
        auth.validate(token)
