"""IMDSv2 session tokens, bound to the instance that asked for them.

A token is `<expiry>.<mac>` with the MAC an HMAC over (network, source ip,
expiry) under a per-process key: nothing is stored, a token stolen from one
instance is worthless to another, and a restart simply invalidates tokens
(clients then PUT for a new one, as they do when a token expires).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
MIN_TTL, MAX_TTL = 1, 21600


class TokenError(ValueError):
    pass


def new_key() -> bytes:
    return os.urandom(32)


def parse_ttl(value: str | None) -> int:
    """The TTL header of a token PUT, or TokenError saying what is allowed."""
    if value is None:
        raise TokenError(f"missing header {TTL_HEADER} (an integer {MIN_TTL}..{MAX_TTL})")
    try:
        ttl = int(value.strip())
    except ValueError:
        ttl = -1
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise TokenError(f"{TTL_HEADER} must be an integer {MIN_TTL}..{MAX_TTL}, got {value!r}")
    return ttl


def _mac(key: bytes, network_id: str, ip: str, expiry: int) -> str:
    msg = f"{network_id}\0{ip}\0{expiry}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode().rstrip("=")


def issue(key: bytes, network_id: str, ip: str, ttl: int, now: float) -> str:
    expiry = int(now) + ttl
    return f"{expiry}.{_mac(key, network_id, ip, expiry)}"


def valid(key: bytes, token: str, network_id: str, ip: str, now: float) -> bool:
    expiry_text, _, mac = token.strip().partition(".")
    try:
        expiry = int(expiry_text)
    except ValueError:
        return False
    if expiry < now:
        return False
    return hmac.compare_digest(mac, _mac(key, network_id, ip, expiry))
