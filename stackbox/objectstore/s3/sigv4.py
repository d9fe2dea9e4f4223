"""AWS Signature Version 4 for S3, verified on the server side.

Two steps, so the secret lookup (a database read) can run in a worker thread:
`parse()` reads the access key and scope out of the Authorization header or a
presigned URL's query; `verify()` rebuilds the canonical request, checks the
date, region and signature, and returns what the body reader needs (the
payload mode and, for aws-chunked bodies, the seed signature and signing key).

Payload modes (x-amz-content-sha256): a hex SHA-256 of the body (checked by
the body reader when the body has been read), UNSIGNED-PAYLOAD, and the
aws-chunked modes decoded by `AwsChunkedDecoder`, which checks each chunk's
signature as it arrives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import re
from urllib.parse import quote, unquote

from stackbox.objectstore.s3.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MAX_SKEW = dt.timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The derived key: the same for a credential all day, so it is kept (as
    the AWS SDKs keep theirs) instead of four HMACs per request."""
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """AWS's UriEncode: every byte except A-Z a-z 0-9 - _ . ~ is %XX (upper case)."""
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


@dataclasses.dataclass(frozen=True)
class Request:
    """What the verifier needs from an HTTP request; no framework types."""
    method: str
    raw_path: str                               # percent-encoded, as sent
    query: tuple[tuple[str, str], ...]          # decoded name/value pairs, in order
    headers: dict[str, tuple[str, ...]]         # lower-case name -> values

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return ",".join(values) if values else None

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None


def parse_query(raw: str) -> tuple[tuple[str, str], ...]:
    """Query pairs decoded with unquote, not unquote_plus: SigV4 clients send a
    space as %20, and a literal '+' must stay '+' for the signature to match."""
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """The claims of a signed request, before the secret is known."""
    access_key: str
    date: str                # yyyymmdd of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str            # yyyymmddThhmmssZ
    presigned: bool
    expires: int = 0         # presigned only

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclasses.dataclass(frozen=True)
class Verified:
    access_key: str
    payload: str             # hex sha256, UNSIGNED-PAYLOAD or a STREAMING-* mode
    key: bytes               # signing key, for chunk signatures
    signature: str           # the seed signature of a chunked body
    amz_date: str
    scope: str


def _malformed(message: str, presigned: bool) -> S3Error:
    if presigned:
        return S3Error("AuthorizationQueryParametersError", message, 400)
    return S3Error("AuthorizationHeaderMalformed", message, 400)


def parse(req: Request) -> Parsed | None:
    """The signature claims of a request, or None for an anonymous one.

    Raises S3Error for a request signed in a way this server does not accept
    (malformed header, SigV2)."""
    auth = req.header("authorization")
    if auth is not None:
        return _parse_header(auth, req)
    if req.param("X-Amz-Algorithm") is not None or req.param("X-Amz-Credential") is not None:
        return _parse_query(req)
    if req.param("AWSAccessKeyId") is not None:
        raise S3Error("InvalidRequest", "Signature Version 2 is not supported; "
                      "sign requests with AWS4-HMAC-SHA256.", 400)
    return None


def _credential(value: str, presigned: bool) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise _malformed(f"The Credential is mal-formed; expecting "
                         f"\"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\", got "
                         f"\"{value}\".", presigned)
    if parts[3] != "s3":
        raise _malformed(f"The service '{parts[3]}' in the Credential is wrong; "
                         f"expecting 's3'.", presigned)
    if not re.fullmatch(r"\d{8}", parts[1]):
        raise _malformed(f"Invalid credential date \"{parts[1]}\". This date is not the "
                         "format yyyyMMdd.", presigned)
    return parts[0], parts[1], parts[2], parts[3]


def _parse_header(auth: str, req: Request) -> Parsed:
    if auth.startswith("AWS "):
        raise S3Error("InvalidRequest", "Signature Version 2 is not supported; sign "
                      "requests with AWS4-HMAC-SHA256.", 400)
    algorithm, _, rest = auth.partition(" ")
    if algorithm != ALGORITHM:
        raise _malformed(f"Unsupported authorization algorithm \"{algorithm}\"; "
                         f"expecting \"{ALGORITHM}\".", False)
    fields = {}
    for item in rest.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            fields[name] = value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise _malformed(f"The authorization header is malformed; missing "
                         f"{', '.join(missing)}.", False)
    access, date, region, service = _credential(fields["Credential"], False)
    amz_date = req.header("x-amz-date") or _from_http_date(req.header("date"))
    if not amz_date:
        raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                      "x-amz-date header", 403)
    return Parsed(access, date, region, service,
                  tuple(h for h in fields["SignedHeaders"].split(";") if h),
                  fields["Signature"], amz_date, presigned=False)


def _parse_query(req: Request) -> Parsed:
    need = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
            "X-Amz-SignedHeaders", "X-Amz-Expires")
    missing = [n for n in need if req.param(n) is None]
    if missing:
        raise _malformed("Query-string authentication version 4 requires the "
                         f"{', '.join(need)} parameters; missing {', '.join(missing)}.", True)
    if req.param("X-Amz-Algorithm") != ALGORITHM:
        raise _malformed(f"X-Amz-Algorithm only supports \"{ALGORITHM}\"", True)
    access, date, region, service = _credential(req.param("X-Amz-Credential"), True)
    raw_expires = req.param("X-Amz-Expires")
    if not raw_expires.isdigit():
        raise _malformed("X-Amz-Expires should be a number", True)
    expires = int(raw_expires)
    if expires > MAX_PRESIGN_EXPIRES:
        raise _malformed("X-Amz-Expires must be less than a week (in seconds) that is "
                         "604800", True)
    return Parsed(access, date, region, service,
                  tuple(h for h in req.param("X-Amz-SignedHeaders").split(";") if h),
                  req.param("X-Amz-Signature"), req.param("X-Amz-Date"), presigned=True,
                  expires=expires)


def _from_http_date(value: str | None) -> str | None:
    if not value:
        return None
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime(_AMZ_DATE)


_AMZ_DATE_RE = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z")


def _parse_amz_date(value: str, presigned: bool) -> dt.datetime:
    # a regex and the constructor: strptime cost ~10 us on every request
    m = _AMZ_DATE_RE.fullmatch(value)
    try:
        if m is None:
            raise ValueError(value)
        return dt.datetime(*map(int, m.groups()), tzinfo=dt.timezone.utc)
    except ValueError:
        if presigned:
            raise _malformed("X-Amz-Date must be in the ISO8601 Long Format "
                             "\"yyyyMMdd'T'HHmmss'Z'\"", True)
        raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                      "x-amz-date header", 403)


def _canonical_query(req: Request, presigned: bool) -> str:
    pairs = [(uri_encode(k), uri_encode(v)) for k, v in req.query
             if not (presigned and k == "X-Amz-Signature")]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _canonical_headers(req: Request, signed: tuple[str, ...]) -> str:
    lines = []
    for name in signed:
        values = req.headers.get(name)
        if values is None:
            raise S3Error("SignatureDoesNotMatch", f"The header '{name}' is listed in "
                          "SignedHeaders but is not in the request.", 403)
        value = ",".join(" ".join(v.split()) for v in values)
        lines.append(f"{name}:{value}\n")
    return "".join(lines)


def _canonical_paths(raw_path: str) -> list[str]:
    """The path as sent, and AWS's encoding of the decoded path if that differs
    (clients disagree on which characters to escape; S3 accepts both)."""
    normal = uri_encode(unquote(raw_path), keep_slash=True)
    return [raw_path] if normal == raw_path else [raw_path, normal]


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def verify(req: Request, parsed: Parsed, secret: str, *, regions: tuple[str, ...],
           now: dt.datetime | None = None) -> Verified:
    """Checks region, time and signature; returns the payload mode to enforce."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if parsed.region not in regions:
        raise _malformed(f"The authorization header is malformed; the region "
                         f"'{parsed.region}' is wrong; expecting '{regions[0]}'",
                         parsed.presigned)
    when = _parse_amz_date(parsed.amz_date, parsed.presigned)
    if parsed.amz_date[:8] != parsed.date:
        raise _malformed(f"The authorization header is malformed; Invalid credential date. "
                         f"Date is not the same as X-Amz-Date: {parsed.date}.",
                         parsed.presigned)
    if parsed.presigned:
        if when - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet", 403)
        if now > when + dt.timedelta(seconds=parsed.expires):
            raise S3Error("AccessDenied", "Request has expired", 403,
                          Expires=(when + dt.timedelta(seconds=parsed.expires)).strftime(
                              "%Y-%m-%dT%H:%M:%SZ"),
                          ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        payload = req.param("X-Amz-Content-Sha256") or UNSIGNED_PAYLOAD
    else:
        if abs(now - when) > MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", "The difference between the request time "
                          "and the current time is too large.", 403,
                          RequestTime=parsed.amz_date,
                          ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          MaxAllowedSkewMilliseconds="900000")
        payload = req.header("x-amz-content-sha256")
        if payload is None:
            raise S3Error("InvalidRequest", "Missing required header for this request: "
                          "x-amz-content-sha256", 400)
        if not (payload == UNSIGNED_PAYLOAD or payload in STREAMING_MODES
                or _HEX64.match(payload)):
            raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                          "STREAMING-UNSIGNED-PAYLOAD-TRAILER or a hex SHA-256", 400,
                          ArgumentName="x-amz-content-sha256", ArgumentValue=payload)
    if "host" not in parsed.signed_headers:
        raise _malformed("The host header must be signed.", parsed.presigned)

    key = signing_key(secret, parsed.date, parsed.region, parsed.service)
    headers = _canonical_headers(req, parsed.signed_headers)
    query = _canonical_query(req, parsed.presigned)
    signed_list = ";".join(parsed.signed_headers)
    last_sts = ""
    for path in _canonical_paths(req.raw_path):
        canonical = "\n".join([req.method, path, query, headers, signed_list, payload])
        last_sts = string_to_sign(parsed.amz_date, parsed.scope, canonical)
        expected = hmac.new(key, last_sts.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, parsed.signature):
            return Verified(parsed.access_key, payload, key, parsed.signature,
                            parsed.amz_date, parsed.scope)
    raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not "
                  "match the signature you provided. Check your key and signing method.", 403,
                  AWSAccessKeyId=parsed.access_key, StringToSign=last_sts)


class AwsChunkedDecoder:
    """Incremental decoder of an aws-chunked body.

    Each chunk is `hex-size[;chunk-signature=sig]\\r\\n data \\r\\n`; the last has
    size 0 and may be followed by trailer headers (x-amz-checksum-*). With a
    signed mode every chunk's signature chains from the previous one, starting
    at the seed signature of the request; a chunk is released by `feed()` only
    after its signature verified, so unverified bytes never reach storage."""

    MAX_CHUNK = 16 * 1024 * 1024
    MAX_LINE = 4096

    def __init__(self, verified: Verified, *, decoded_length: int | None = None):
        self.signed = verified.payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self.key = verified.key
        self.previous = verified.signature
        self.amz_date = verified.amz_date
        self.scope = verified.scope
        self.decoded_length = decoded_length
        self.buffer = bytearray()
        self.state = "size"
        self.chunk_size = 0
        self.chunk_signature = ""
        self.total = 0
        self.trailers: dict[str, str] = {}

    def _error(self, message: str) -> S3Error:
        return S3Error("IncompleteBody" if "ended" in message else "InvalidRequest",
                       message, 400)

    def _signature_error(self) -> S3Error:
        return S3Error("SignatureDoesNotMatch", "The chunk signature we calculated does not "
                       "match the signature you provided.", 403)

    def _line(self) -> str | None:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > self.MAX_LINE:
                raise self._error("An aws-chunked header line is too long.")
            return None
        line = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end + 2]
        return line

    def _chunk_sts(self, data: bytes) -> str:
        return "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope, self.previous,
                          EMPTY_SHA256, hashlib.sha256(data).hexdigest()])

    def _check_chunk(self, data: bytes) -> None:
        if not self.signed:
            return
        expected = hmac.new(self.key, self._chunk_sts(data).encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.chunk_signature):
            raise self._signature_error()
        self.previous = expected

    def feed(self, data: bytes) -> bytes:
        """Consumes body bytes; returns the verified payload bytes they complete."""
        self.buffer += data
        out = bytearray()
        while True:
            if self.state == "size":
                line = self._line()
                if line is None:
                    break
                size_text, _, ext = line.partition(";")
                try:
                    self.chunk_size = int(size_text.strip(), 16)
                except ValueError:
                    raise self._error(f"Bad aws-chunked size line {line[:40]!r}.")
                if self.chunk_size > self.MAX_CHUNK:
                    raise self._error(f"An aws-chunked chunk is larger than "
                                      f"{self.MAX_CHUNK} bytes.")
                name, _, value = ext.partition("=")
                if self.signed:
                    if name.strip() != "chunk-signature" or not value:
                        raise self._signature_error()
                    self.chunk_signature = value.strip()
                self.state = "data" if self.chunk_size else "last"
                if self.state == "last":
                    self._check_chunk(b"")
            elif self.state == "data":
                if len(self.buffer) < self.chunk_size + 2:
                    break
                chunk = bytes(self.buffer[:self.chunk_size])
                if self.buffer[self.chunk_size:self.chunk_size + 2] != b"\r\n":
                    raise self._error("An aws-chunked chunk is not followed by CRLF.")
                del self.buffer[:self.chunk_size + 2]
                self._check_chunk(chunk)
                out += chunk
                self.total += len(chunk)
                self.state = "size"
            elif self.state == "last":
                line = self._line()
                if line is None:
                    break
                if not line:
                    self.state = "done"
                    continue
                name, _, value = line.partition(":")
                self.trailers[name.strip().lower()] = value.strip()
            else:
                if self.buffer.strip():
                    raise self._error("Data after the end of an aws-chunked body.")
                self.buffer.clear()
                break
        return bytes(out)

    def finish(self) -> None:
        """Call at the end of the body: raises unless the body was complete."""
        if self.state == "last" and not self.buffer:
            self.state = "done"  # some clients omit the final CRLF without trailers
        if self.state != "done":
            raise S3Error("IncompleteBody", "The aws-chunked body ended before its final "
                          "chunk.", 400)
        if self.decoded_length is not None and self.total != self.decoded_length:
            raise S3Error("IncompleteBody", f"x-amz-decoded-content-length is "
                          f"{self.decoded_length} but the body has {self.total} bytes.", 400)
