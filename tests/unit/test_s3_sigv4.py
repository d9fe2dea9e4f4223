"""SigV4 verification against requests signed by botocore's own signer, and the
aws-chunked example from the S3 documentation."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from stackbox.objectstore.s3 import sigv4
from stackbox.objectstore.s3.errors import S3Error

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGIONS = ("RegionOne", "us-east-1")


def to_request(aws: AWSRequest) -> sigv4.Request:
    url = urlsplit(aws.url)
    headers: dict[str, tuple[str, ...]] = {}
    for name, value in aws.headers.items():
        headers[name.lower()] = headers.get(name.lower(), ()) + (value,)
    headers.setdefault("host", (url.netloc,))
    return sigv4.Request(aws.method, url.path, sigv4.parse_query(url.query), headers)


def signed(method="GET", url="http://127.0.0.1:8080/bucket/key", body=b"", *,
           region="RegionOne", headers=None, secret=SK) -> sigv4.Request:
    aws = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(Credentials(AK, secret), "s3", region).add_auth(aws)
    return to_request(aws)


def presigned(url="http://127.0.0.1:8080/bucket/key", *, expires=60, method="GET"):
    aws = AWSRequest(method=method, url=url)
    S3SigV4QueryAuth(Credentials(AK, SK), "s3", "RegionOne", expires=expires).add_auth(aws)
    return to_request(aws)


def check(req, *, secret=SK, now=None):
    parsed = sigv4.parse(req)
    assert parsed is not None and parsed.access_key == AK
    return sigv4.verify(req, parsed, secret, regions=REGIONS, now=now)


def test_header_signature_with_body_hash():
    body = b"hello world"
    v = check(signed("PUT", body=body, headers={"x-amz-meta-colour": "  blue   green "}))
    assert v.payload == hashlib.sha256(body).hexdigest()


def test_keys_with_odd_characters_and_query():
    url = "http://h:1/b/dir/a%20b%2Bc%C3%A9~%21?list-type=2&prefix=a%2Fb&max-keys=1"
    check(signed(url=url))


def test_wrong_secret_is_signature_mismatch():
    with pytest.raises(S3Error) as e:
        check(signed(), secret="other")
    assert e.value.code == "SignatureDoesNotMatch" and e.value.status == 403


def test_tampered_header_is_signature_mismatch():
    req = signed("PUT", body=b"x", headers={"x-amz-meta-a": "1"})
    req.headers["x-amz-meta-a"] = ("2",)
    with pytest.raises(S3Error) as e:
        check(req)
    assert e.value.code == "SignatureDoesNotMatch"


def test_wrong_region_names_the_expected_one():
    with pytest.raises(S3Error) as e:
        check(signed(region="eu-west-1"))
    assert e.value.code == "AuthorizationHeaderMalformed" and e.value.status == 400
    assert "'eu-west-1' is wrong; expecting 'RegionOne'" in e.value.message


def test_clock_skew():
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=16)
    with pytest.raises(S3Error) as e:
        check(signed(), now=later)
    assert e.value.code == "RequestTimeTooSkewed" and e.value.status == 403
    check(signed(), now=later - dt.timedelta(minutes=2))


def test_presigned_valid_then_expired():
    req = presigned(expires=60)
    v = check(req)
    assert v.payload == sigv4.UNSIGNED_PAYLOAD
    with pytest.raises(S3Error) as e:
        check(req, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=61))
    assert e.value.code == "AccessDenied" and "expired" in e.value.message


def test_presigned_tampered_query():
    req = presigned()
    query = tuple((k, v) for k, v in req.query) + (("versionId", "x"),)
    with pytest.raises(S3Error) as e:
        check(sigv4.Request(req.method, req.raw_path, query, req.headers))
    assert e.value.code == "SignatureDoesNotMatch"


def test_presigned_expires_over_a_week():
    with pytest.raises(S3Error) as e:
        check(presigned(expires=sigv4.MAX_PRESIGN_EXPIRES + 1))
    assert e.value.code == "AuthorizationQueryParametersError"


def test_anonymous_and_sigv2():
    assert sigv4.parse(sigv4.Request("GET", "/b", (), {"host": ("h",)})) is None
    with pytest.raises(S3Error) as e:
        sigv4.parse(sigv4.Request("GET", "/b", (), {"authorization": ("AWS AK:sig",)}))
    assert e.value.code == "InvalidRequest"


def test_missing_content_sha256():
    req = signed()
    headers = {k: v for k, v in req.headers.items() if k != "x-amz-content-sha256"}
    with pytest.raises(S3Error) as e:
        check(sigv4.Request(req.method, req.raw_path, req.query, headers))
    assert e.value.code in ("InvalidRequest", "SignatureDoesNotMatch")


# -- aws-chunked ------------------------------------------------------------

def chunk_body(verified: sigv4.Verified, data: bytes, size: int, *, signed=True,
               trailer: bytes = b"") -> bytes:
    """A client's aws-chunked encoder, written from the S3 documentation."""
    out, previous = bytearray(), verified.signature
    pieces = [data[i:i + size] for i in range(0, len(data), size)] + [b""]
    for piece in pieces:
        if signed:
            sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", verified.amz_date, verified.scope,
                             previous, sigv4.EMPTY_SHA256, hashlib.sha256(piece).hexdigest()])
            previous = hmac.new(verified.key, sts.encode(), hashlib.sha256).hexdigest()
            out += f"{len(piece):x};chunk-signature={previous}\r\n".encode()
        else:
            out += f"{len(piece):x}\r\n".encode()
        if piece:
            out += piece + b"\r\n"
    out += trailer + b"\r\n"
    return bytes(out)


class StreamingAuth(S3SigV4Auth):
    """botocore signs the request; only the payload mode is the streaming one."""
    mode = sigv4.STREAMING_SIGNED

    def payload(self, request):
        return self.mode


def streaming_request(data: bytes, mode=sigv4.STREAMING_SIGNED):
    aws = AWSRequest(method="PUT", url="http://127.0.0.1:8080/bucket/big",
                     headers={"Content-Encoding": "aws-chunked",
                              "x-amz-decoded-content-length": str(len(data))})
    auth = StreamingAuth(Credentials(AK, SK), "s3", "RegionOne")
    auth.mode = mode
    auth.add_auth(aws)
    return to_request(aws)


@pytest.mark.parametrize("step", [1, 7, 8192, 1 << 20])
def test_chunked_body_decodes_in_any_pieces(step):
    data = bytes(range(256)) * 300  # 76800 bytes
    v = check(streaming_request(data))
    assert v.payload == sigv4.STREAMING_SIGNED
    body = chunk_body(v, data, 65536)
    dec = sigv4.AwsChunkedDecoder(v, decoded_length=len(data))
    out = b"".join(dec.feed(body[i:i + step]) for i in range(0, len(body), step))
    dec.finish()
    assert out == data


def test_chunked_body_with_a_bad_chunk_signature_stops_before_release():
    data = b"a" * 20000
    v = check(streaming_request(data))
    body = bytearray(chunk_body(v, data, 8192))
    body[100] ^= 1  # inside the first chunk's data
    dec = sigv4.AwsChunkedDecoder(v, decoded_length=len(data))
    with pytest.raises(S3Error) as e:
        dec.feed(bytes(body))
    assert e.value.code == "SignatureDoesNotMatch"


def test_chunked_body_that_stops_early():
    data = b"a" * 20000
    v = check(streaming_request(data))
    body = chunk_body(v, data, 8192)
    dec = sigv4.AwsChunkedDecoder(v, decoded_length=len(data))
    dec.feed(body[:9000])
    with pytest.raises(S3Error) as e:
        dec.finish()
    assert e.value.code == "IncompleteBody"


def test_unsigned_chunked_body_with_trailer():
    data = b"xyz" * 5000
    v = check(streaming_request(data, sigv4.STREAMING_UNSIGNED_TRAILER))
    body = chunk_body(v, data, 4096, signed=False, trailer=b"x-amz-checksum-crc32:AAAAAA==\r\n")
    dec = sigv4.AwsChunkedDecoder(v, decoded_length=len(data))
    assert dec.feed(body) == data
    dec.finish()
    assert dec.trailers == {"x-amz-checksum-crc32": "AAAAAA=="}


def test_chunked_example_from_the_s3_documentation():
    """'Transferring Payload in Multiple Chunks': 66560 bytes of 'a' in 64 KiB
    chunks, signatures as published by AWS."""
    headers = {"host": ("s3.amazonaws.com",), "x-amz-date": ("20130524T000000Z",),
               "x-amz-storage-class": ("REDUCED_REDUNDANCY",),
               "x-amz-content-sha256": (sigv4.STREAMING_SIGNED,),
               "content-encoding": ("aws-chunked",),
               "x-amz-decoded-content-length": ("66560",), "content-length": ("66824",)}
    signed_headers = ("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                      "x-amz-decoded-content-length;x-amz-storage-class")
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed_headers},Signature={seed}",)
    req = sigv4.Request("PUT", "/examplebucket/chunkObject.txt", (), headers)
    now = dt.datetime(2013, 5, 24, 0, 1, tzinfo=dt.timezone.utc)
    v = sigv4.verify(req, sigv4.parse(req), SK, regions=("us-east-1",), now=now)
    sigs = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
    body = (f"10000;chunk-signature={sigs[0]}\r\n".encode() + b"a" * 65536 + b"\r\n"
            + f"400;chunk-signature={sigs[1]}\r\n".encode() + b"a" * 1024 + b"\r\n"
            + f"0;chunk-signature={sigs[2]}\r\n\r\n".encode())
    assert len(body) == 66824
    dec = sigv4.AwsChunkedDecoder(v, decoded_length=66560)
    assert dec.feed(body) == b"a" * 66560
    dec.finish()
