"""Pure pieces of the Swift dialect: ranges, conditionals, ACLs, temp URLs."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from stackbox.common.errors import BadRequest, Unauthorized
from stackbox.objectstore import acl, tempurl
from stackbox.objectstore import httpbits as hb
from stackbox.objectstore.errors import PreconditionFailed


@pytest.mark.parametrize("header,expected", [
    (None, None),
    ("bytes=0-9", [(0, 10)]),
    ("bytes=5-", [(5, 100)]),
    ("bytes=-10", [(90, 100)]),
    ("bytes=-1000", [(0, 100)]),
    ("bytes=0-0,50-59", [(0, 1), (50, 60)]),
    ("bytes=90-200", [(90, 100)]),
    ("bytes=200-300,0-1", [(0, 2)]),        # unsatisfiable specs are dropped
    ("bytes=9-3", None),                    # malformed: whole object, as Swift
    ("items=0-1", None),
    ("bytes=a-b", None),
])
def test_parse_ranges(header, expected):
    assert hb.parse_ranges(header, 100) == expected


def test_unsatisfiable_range():
    with pytest.raises(hb.RangeNotSatisfiable):
        hb.parse_ranges("bytes=100-", 100)


def test_conditionals():
    lm = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
    ok = dict(etag="abc", last_modified=lm, method="GET")
    assert hb.check_conditions({}, **ok)
    assert hb.check_conditions({"if-match": '"abc"'}, **ok)
    assert hb.check_conditions({"if-match": "*"}, **ok)
    with pytest.raises(PreconditionFailed):
        hb.check_conditions({"if-match": '"zzz"'}, **ok)
    assert hb.check_conditions({"if-none-match": '"abc"'}, **ok) is False
    with pytest.raises(PreconditionFailed):
        hb.check_conditions({"if-none-match": "*"}, etag="abc", last_modified=lm, method="PUT")
    date = "Fri, 02 Jan 2026 03:04:05 GMT"         # == last modified, to the second
    assert hb.check_conditions({"if-modified-since": date}, **ok) is False
    assert hb.check_conditions({"if-unmodified-since": date}, **ok)
    with pytest.raises(PreconditionFailed):
        hb.check_conditions({"if-unmodified-since": "Thu, 01 Jan 2026 00:00:00 GMT"}, **ok)
    assert hb.check_conditions({"if-modified-since": "garbage"}, **ok)


def test_metadata_headers_round_trip():
    meta = hb.meta_from_headers({"X-Object-Meta-Color": "red", "X-Remove-Object-Meta-Old": "x",
                                 "Content-Type": "a/b"}, "object")
    assert meta == {"color": "red", "old": ""}
    assert hb.meta_headers({"max-age": "1"}, "container") == {"X-Container-Meta-Max-Age": "1"}


def test_acls():
    read = acl.parse(".r:*,.rlistings,p1:*, *:u9", header="X-Container-Read")
    anon = acl.Caller()
    assert acl.can_read(read, anon, referrer=None, listing=True)
    assert acl.can_read(acl.parse(".r:*", header="X-Container-Read"), anon, referrer=None,
                        listing=False)
    assert not acl.can_read(acl.parse(".r:*", header="X-Container-Read"), anon,
                            referrer=None, listing=True)
    assert acl.user_allowed(read, acl.Caller(project_id="p1", user_id="x"))
    assert acl.user_allowed(read, acl.Caller(project_id="p2", user_id="u9"))
    assert not acl.user_allowed(read, acl.Caller(project_id="p2", user_id="u1"))
    ref = acl.parse(".r:.example.com,.r:-bad.example.com", header="X-Container-Read")
    assert acl.referrer_allowed(ref, "http://www.example.com/page")
    assert not acl.referrer_allowed(ref, "http://bad.example.com/")
    assert not acl.referrer_allowed(ref, None)
    for bad in (".bogus", "justaname", ".r:"):
        with pytest.raises(BadRequest) as e:
            acl.parse(bad, header="X-Container-Read")
        assert e.value.field == "X-Container-Read"
    with pytest.raises(BadRequest):
        acl.parse(".r:*", header="X-Container-Write")


def test_tempurl_signatures():
    path = "/v1/AUTH_p/c/o"
    exp = int(time.time()) + 60
    for digest in ("sha1", "sha256", "sha512"):
        sig = tempurl.sign("k", "GET", exp, path, digest)
        tempurl.verify(method="GET", path=path, sig=sig, expires_raw=str(exp), keys=["k"])
        tempurl.verify(method="HEAD", path=path, sig=sig, expires_raw=str(exp), keys=["x", "k"])
    sig = tempurl.sign("k", "GET", exp, path)
    for kwargs in ({"method": "PUT"}, {"keys": ["other"]}, {"keys": []},
                   {"expires_raw": str(int(time.time()) - 1)}, {"sig": "zz"},
                   {"path": "/v1/AUTH_p/c/o2"}):
        args = dict(method="GET", path=path, sig=sig, expires_raw=str(exp), keys=["k"])
        args.update(kwargs)
        with pytest.raises(Unauthorized):
            tempurl.verify(**args)
    psig = tempurl.sign("k", "GET", exp, "prefix:/v1/AUTH_p/c/dir/")
    tempurl.verify(method="GET", path="/v1/AUTH_p/c/dir/x", sig=psig, expires_raw=str(exp),
                   keys=["k"], prefix="dir/")
    with pytest.raises(Unauthorized):
        tempurl.verify(method="GET", path="/v1/AUTH_p/c/other", sig=psig, expires_raw=str(exp),
                       keys=["k"], prefix="dir/")


def test_listing_last_modified_is_the_exact_timestamp_in_utc():
    from stackbox.objectstore.service import ObjectEntry
    for ts in ("0000000001.00000", "1700000000.12345", "1733350000.99999", "2000000000.00001"):
        entry = ObjectEntry(name="o", size=1, etag="e", content_type="t", timestamp=ts)
        secs, frac = ts.split(".")
        want = dt.datetime.fromtimestamp(int(secs), dt.timezone.utc).replace(
            microsecond=int(frac) * 10)
        assert hb._lm(entry) == want.strftime("%Y-%m-%dT%H:%M:%S.%f")
