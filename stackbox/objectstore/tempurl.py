"""Temporary URLs (Swift's tempurl middleware), pure functions.

A signature is HMAC(key, "<METHOD>\\n<expires>\\n<path>") where path is
/v1/<account>/<container>/<object> (or `prefix:/v1/a/c/<prefix>` for a prefix
URL). The digest is told by the signature: 40/64/128 hex digits are
SHA1/SHA256/SHA512, or `<algo>:<base64>`. Keys are the account's and the
container's Temp-URL-Key and Temp-URL-Key-2 metadata.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from stackbox.common.errors import Unauthorized

DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
HEX_LENGTHS = {40: "sha1", 64: "sha256", 128: "sha512"}
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")


def _decode(sig: str) -> tuple[str, bytes]:
    if ":" in sig:
        algo, _, b64 = sig.partition(":")
        if algo not in DIGESTS:
            raise Unauthorized(f"temp_url_sig digest {algo!r} is not one of "
                               f"{', '.join(DIGESTS)}")
        try:
            return algo, base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except (binascii.Error, ValueError):
            raise Unauthorized("temp_url_sig is not valid base64") from None
    algo = HEX_LENGTHS.get(len(sig))
    if algo is None:
        raise Unauthorized("temp_url_sig has the wrong length for SHA1/SHA256/SHA512")
    try:
        return algo, bytes.fromhex(sig)
    except ValueError:
        raise Unauthorized("temp_url_sig is not hex") from None


def parse_expires(raw: str | None) -> int:
    if not raw:
        raise Unauthorized("temp_url_expires is missing")
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return int(time.mktime(time.strptime(raw, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
    except ValueError:
        raise Unauthorized(f"temp_url_expires {raw!r} is not a unix time or ISO 8601") from None


def verify(*, method: str, path: str, sig: str, expires_raw: str, keys: list[str],
           prefix: str | None = None, now: float | None = None) -> None:
    """Raise Unauthorized unless the signature is valid and unexpired.
    HEAD is also allowed by a GET, PUT or POST signature, as in Swift."""
    if method not in METHODS:
        raise Unauthorized(f"temp URLs do not allow {method}")
    expires = parse_expires(expires_raw)
    if expires < (time.time() if now is None else now):
        raise Unauthorized("the temp URL has expired")
    if not keys:
        raise Unauthorized("no Temp-URL-Key is set on the account or container")
    algo, given = _decode(sig)
    if prefix is not None:
        signed_path = "prefix:" + _prefix_path(path, prefix)
    else:
        signed_path = path
    methods = [method] + (["GET", "PUT", "POST"] if method == "HEAD" else [])
    for key in keys:
        for m in methods:
            body = f"{m}\n{expires}\n{signed_path}".encode()
            want = hmac.new(key.encode(), body, DIGESTS[algo]).digest()
            if hmac.compare_digest(want, given):
                return
    raise Unauthorized("temp_url_sig does not match")


def _prefix_path(path: str, prefix: str) -> str:
    parts = path.split("/", 4)          # '', 'v1', account, container, object
    if len(parts) < 5 or not parts[4].startswith(prefix):
        raise Unauthorized("the object is outside the temp URL's prefix")
    return "/".join(parts[:4]) + "/" + prefix


def sign(key: str, method: str, expires: int, path: str, digest: str = "sha256") -> str:
    """The signature a client would compute (for tests and the docs)."""
    return hmac.new(key.encode(), f"{method}\n{expires}\n{path}".encode(),
                    DIGESTS[digest]).hexdigest()
