"""The S3 benchmark's own SigV4 signer signs exactly as botocore's does, so
a cheaper client sends the same requests (bench/objectstore/s3.py)."""

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.objectstore.s3 import LeanSigV4

URL = "http://127.0.0.1:8765"


@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/bkt1/o000017", b"x" * 4096),
    ("GET", "/bkt1/o000017", b""),
    ("DELETE", "/s3bench-1733472000000", b""),
    ("PUT", "/bkt1/dir/a-b_c.d~e", b"\x00\xff"),
])
def test_the_lean_signer_signs_as_botocore_does(method, path, body):
    req = AWSRequest(method, URL + path, data=body)
    S3SigV4Auth(Credentials("AKID", "SECRET"), "s3", "RegionOne").add_auth(req)
    theirs = dict(req.headers)

    ours = LeanSigV4("AKID", "SECRET", "RegionOne", "127.0.0.1:8765").headers(
        method, path, body, amz_date=theirs["X-Amz-Date"])

    assert ours.pop("Host") == "127.0.0.1:8765"
    assert ours == theirs


def test_a_path_that_needs_encoding_is_refused():
    with pytest.raises(ValueError, match="URI encoding"):
        LeanSigV4("AKID", "SECRET", "RegionOne", "h").headers("GET", "/b/a key", b"")
