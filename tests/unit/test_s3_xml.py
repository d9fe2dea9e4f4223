"""S3 request-body parsing (refuses entities) and response rendering."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from stackbox.objectstore.s3 import xml
from stackbox.objectstore.s3.errors import S3Error, no_such_key

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def test_delete_with_and_without_namespace():
    body = (b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>'
            b'<Object><Key>a &amp; b</Key></Object><Object><Key>c</Key></Object></Delete>')
    assert xml.parse_delete(body) == (True, ["a & b", "c"])
    assert xml.parse_delete(b"<Delete><Object><Key>x</Key></Object></Delete>") == (False, ["x"])


@pytest.mark.parametrize("body", [
    b"",
    b"<Delete>",
    b"<Delete></Delete>",
    b"<Other><Object><Key>x</Key></Object></Other>",
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><Delete><Object><Key>&a;</Key>'
    b"</Object></Delete>",
    b'<!DOCTYPE d SYSTEM "file:///etc/passwd"><Delete><Object><Key>x</Key></Object></Delete>',
])
def test_malformed_or_dangerous_delete(body):
    with pytest.raises(S3Error) as e:
        xml.parse_delete(body)
    assert e.value.code == "MalformedXML" and e.value.status == 400


def test_too_many_delete_keys():
    body = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    with pytest.raises(S3Error):
        xml.parse_delete(body)


def test_complete_multipart():
    body = (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"abc\"</ETag>"
            b"</Part><Part><ETag>def</ETag><PartNumber> 2 </PartNumber></Part>"
            b"</CompleteMultipartUpload>")
    assert xml.parse_complete(body) == [(1, "abc"), (2, "def")]
    for bad in (b"<CompleteMultipartUpload/>",
                b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag>"
                b"</Part></CompleteMultipartUpload>"):
        with pytest.raises(S3Error):
            xml.parse_complete(bad)


def test_location_body():
    assert xml.parse_location(b"") is None
    body = (b"<CreateBucketConfiguration><LocationConstraint>RegionOne</LocationConstraint>"
            b"</CreateBucketConfiguration>")
    assert xml.parse_location(body) == "RegionOne"


def test_error_document():
    doc = ET.fromstring(xml.error(no_such_key("a<b"), resource="/b/a<b", request_id="req-1"))
    assert doc.tag == "Error"
    assert doc.findtext("Code") == "NoSuchKey" and doc.findtext("Key") == "a<b"
    assert doc.findtext("RequestId") == "req-1"


def test_list_objects_v2_document():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    doc = ET.fromstring(xml.list_objects(
        bucket="b", prefix="p/", delimiter="/", max_keys=2, truncated=True,
        contents=[{"key": "p/a b", "last_modified": when, "etag": "e", "size": 3}],
        common_prefixes=["p/d/"], encode=lambda s: s, v2=True, next_token="tok"))
    assert doc.tag == NS + "ListBucketResult"
    assert doc.findtext(NS + "KeyCount") == "2"
    assert doc.findtext(NS + "IsTruncated") == "true"
    assert doc.findtext(f"{NS}Contents/{NS}LastModified") == "2026-01-02T03:04:05.678Z"
    assert doc.findtext(f"{NS}Contents/{NS}ETag") == '"e"'
    assert doc.findtext(f"{NS}CommonPrefixes/{NS}Prefix") == "p/d/"
