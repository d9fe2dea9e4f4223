"""Pure request helpers of the S3 API: which requests on the shared port are
S3, byte ranges, conditional headers, metadata and copy sources."""

from __future__ import annotations

import datetime as dt

import pytest

from stackbox.objectstore.s3.api import _has_body, is_s3_request, s3_settings
from stackbox.objectstore.s3.errors import S3Error
from stackbox.objectstore.s3.objects import (byte_range, check_conditions,
                                             decode_copy_source, stored_headers, user_meta)
from stackbox.objectstore.service import ObjectInfo


def scope(path, *, headers=(), qs=b""):
    return {"type": "http", "path": path, "headers": list(headers), "query_string": qs}


@pytest.mark.parametrize("s, expected", [
    (scope("/v1/AUTH_x/c/o", headers=[(b"x-auth-token", b"t")]), False),
    (scope("/info"), False),
    (scope("/healthcheck"), False),
    (scope("/"), False),                                        # Swift's version document
    (scope("/", headers=[(b"authorization", b"AWS4-HMAC-SHA256 Credential=a/b")]), True),
    (scope("/v1/key", headers=[(b"authorization", b"AWS4-HMAC-SHA256 Credential=a")]), True),
    (scope("/bucket/key", qs=b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a"), True),
    (scope("/bucket"), True),                                   # anonymous S3: AccessDenied
    (scope("/v1/AUTH_x/c/o", qs=b"temp_url_sig=a&temp_url_expires=1"), False),
])
def test_is_s3_request(s, expected):
    assert is_s3_request(s) is expected


@pytest.mark.parametrize("header, size, expected", [
    (None, 10, None), ("bytes=0-4", 10, (0, 4)), ("bytes=5-", 10, (5, 9)),
    ("bytes=-3", 10, (7, 9)), ("bytes=-30", 10, (0, 9)), ("bytes=2-100", 10, (2, 9)),
    ("bytes=0-1,4-5", 10, None), ("items=0-1", 10, None), ("bytes=5-2", 10, None),
])
def test_byte_range(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_unsatisfiable_range(header):
    with pytest.raises(S3Error) as e:
        byte_range(header, 10)
    assert e.value.status == 416 and e.value.extra["ActualObjectSize"] == "10"


def info(etag="abc", when=dt.datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=dt.timezone.utc)):
    return ObjectInfo(account="a", container="c", name="o", size=1, etag=etag,
                      content_type="x", timestamp=f"{when.timestamp():016.5f}")


def test_conditions():
    i = info()
    assert check_conditions(i, {}) is None
    assert check_conditions(i, {"if-match": '"abc"'}) is None
    assert check_conditions(i, {"if-match": '"nope", "other"'}) == 412
    assert check_conditions(i, {"if-match": "*"}) is None
    assert check_conditions(i, {"if-none-match": '"abc"'}) == 304
    assert check_conditions(i, {"if-none-match": '"abc"'}, copy=True) == 412
    assert check_conditions(i, {"if-modified-since": "Thu, 01 Jan 2026 12:00:00 GMT"}) == 304
    assert check_conditions(i, {"if-modified-since": "Thu, 01 Jan 2026 11:59:59 GMT"}) is None
    assert check_conditions(i, {"if-unmodified-since": "Thu, 01 Jan 2026 11:00:00 GMT"}) == 412
    # If-Match wins over If-Unmodified-Since (RFC 7232 section 6)
    assert check_conditions(i, {"if-match": '"abc"',
                                "if-unmodified-since": "Thu, 01 Jan 2026 11:00:00 GMT"}) is None
    assert check_conditions(i, {"x-amz-copy-source-if-match": '"zzz"'},
                            prefix="x-amz-copy-source-if-", copy=True) == 412


def test_metadata_and_stored_headers():
    h = {"x-amz-meta-colour": "blue", "content-encoding": "aws-chunked,gzip",
         "content-disposition": "inline", "x-amz-date": "x"}
    assert user_meta(h) == {"colour": "blue"}
    assert stored_headers(h) == {"content-encoding": "gzip", "content-disposition": "inline"}
    assert stored_headers({"content-encoding": "aws-chunked"}) == {}
    with pytest.raises(S3Error) as e:
        user_meta({"x-amz-meta-big": "v" * 2100})
    assert e.value.code == "MetadataTooLarge"


def test_copy_source():
    assert decode_copy_source("/b/dir/a%20b") == ("b", "dir/a b")
    assert decode_copy_source("b/k?versionId=1") == ("b", "k")
    with pytest.raises(S3Error):
        decode_copy_source("just-bucket")


def test_has_body():
    class R:
        def __init__(self, headers):
            self.headers = headers
    assert _has_body(R({"content-length": "5"}))
    assert not _has_body(R({"content-length": "0"}))
    assert _has_body(R({"transfer-encoding": "chunked"}))
    assert not _has_body(R({}))


def test_s3_settings():
    from stackbox.common.config import Settings
    s = Settings()
    kw = s3_settings(s)
    assert kw["regions"] == ("RegionOne", "us-east-1") and kw["base_domains"] == ("localhost",)
    s = Settings(api={"public_base_url": "https://cloud.example.com"})
    assert s3_settings(s)["base_domains"] == ("cloud.example.com", "localhost")


def test_routing_by_subresource():
    from stackbox.objectstore.s3.api import S3Api
    api = S3Api.__new__(S3Api)
    api.objects = type("O", (), {n: n for n in (
        "upload_part", "list_parts", "abort_multipart_upload", "complete_multipart_upload",
        "create_multipart_upload", "put_object", "get_object", "delete_object",
        "list_multipart_uploads", "delete_objects")})()
    assert api.route("GET", "b", None, {"location": ""}) == api.get_bucket_location
    assert api.route("GET", "b", None, {"list-type": "2"}) == api.list_objects
    assert api.route("PUT", "b", None, {}) == api.create_bucket
    assert api.route("PUT", "b", "k", {"partNumber": "1", "uploadId": "u"}) == "upload_part"
    assert api.route("POST", "b", "k", {"uploads": ""}) == "create_multipart_upload"
    assert api.route("GET", "b", "k", {"response-content-type": "x"}) == "get_object"
    for method, key, query in (("PUT", None, {"versioning": ""}), ("GET", "k", {"acl": ""}),
                               ("PUT", None, {"tagging": ""}), ("DELETE", None, {"cors": ""})):
        with pytest.raises(S3Error) as e:
            api.route(method, "b", key, query)
        assert e.value.status == 501, (method, query)
    with pytest.raises(S3Error) as e:
        api.route("POST", "b", "k", {})
    assert e.value.status == 405


def test_ec2_lookups_missing_the_cache_together_are_one():
    """The requests in flight when an access key's cache entry expires wait for
    one lookup of it, not one each."""
    import threading
    import time

    from stackbox.common.http.context import RequestContext
    from stackbox.objectstore.s3.auth import S3Authenticator

    calls = []

    class Identity:
        def ec2_identity(self, access):
            calls.append(access)
            time.sleep(0.05)
            return ("secret", RequestContext(request_id="-", user_id="u")) \
                if access == "known" else None

    auth = S3Authenticator(Identity(), regions=("RegionOne",), cache_seconds=60)
    found, start = [], threading.Barrier(8)

    def one(key):
        start.wait()
        found.append(auth._lookup(key))
    threads = [threading.Thread(target=one, args=("known",)) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == ["known"] and all(f and f[0] == "secret" for f in found) and len(found) == 8
    assert auth._lookup("unknown") is None and auth._lookup("unknown") is None
    assert calls == ["known", "unknown", "unknown"], "unknown keys are not cached"
