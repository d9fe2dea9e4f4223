"""Who sent an S3 request: SigV4 checked against the identity service's EC2
credentials, with a short cache so a busy client costs no database read per
request (the same few seconds tokens are cached for)."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from starlette.concurrency import run_in_threadpool

from stackbox.common.generation import LocalGeneration
from stackbox.common.http.context import RequestContext
from stackbox.common.oneload import OneLoad
from stackbox.objectstore.s3 import sigv4
from stackbox.objectstore.s3.errors import S3Error


class Ec2Lookup(Protocol):
    def ec2_identity(self, access: str) -> tuple[str, RequestContext] | None: ...


def request_of(scope) -> sigv4.Request:
    headers: dict[str, tuple[str, ...]] = {}
    for k, v in scope.get("headers", ()):
        name = k.decode("latin-1").lower()
        headers[name] = headers.get(name, ()) + (v.decode("latin-1"),)
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    return sigv4.Request(scope["method"], path.split("?", 1)[0], sigv4.parse_query(query),
                         headers)


class S3Authenticator:
    def __init__(self, identity: Ec2Lookup, *, regions: tuple[str, ...],
                 cache_seconds: float = 2.0, generation=None):
        self.identity = identity
        self.generation = generation or LocalGeneration()
        self.regions = regions
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, int, str, RequestContext]] = {}
        self._lock = threading.Lock()
        self._loads = OneLoad()

    def _cached(self, access: str):
        hit = self._cache.get(access)
        if hit and hit[0] > time.monotonic() and hit[1] == self.generation.value():
            return hit[2], hit[3]
        return None

    def _lookup(self, access: str):
        """In a worker thread: the requests that miss the cache together
        (every cache_seconds) share one lookup."""
        with self._loads.hold(access):
            hit = self._cached(access)
            if hit is not None:
                return hit
            gen = self.generation.value()
            found = self.identity.ec2_identity(access)
            if found is not None and self.cache_seconds > 0:
                with self._lock:
                    if len(self._cache) > 10000:
                        self._cache.clear()
                    self._cache[access] = (time.monotonic() + self.cache_seconds, gen, *found)
            return found

    async def authenticate(self, req: sigv4.Request, request_id: str
                           ) -> tuple[RequestContext, sigv4.Verified]:
        parsed = sigv4.parse(req)
        if parsed is None:
            raise S3Error("AccessDenied", "Anonymous access is not allowed; sign the request "
                          "with EC2 credentials (openstack ec2 credentials create).", 403)
        found = self._cached(parsed.access_key) or await run_in_threadpool(
            self._lookup, parsed.access_key)
        if found is None:
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                          "exist in our records.", 403, AWSAccessKeyId=parsed.access_key)
        secret, ctx = found
        verified = sigv4.verify(req, parsed, secret, regions=self.regions)
        return ctx.with_request_id(request_id), verified
