"""The S3 API driven by boto3 (and raw signed HTTP for what boto3 will not
send), with EC2 credentials made by the openstack CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import uuid
from urllib.parse import unquote_plus

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ec2(cloud):
    cred = cloud.openstack("ec2", "credentials", "create", cloud="stackbox-demo")
    return cred["access"], cred["secret"]


@pytest.fixture(scope="module")
def endpoint(cloud):
    return f"http://127.0.0.1:{cloud.ports['object_store']}"


def client(endpoint, access, secret, *, region="RegionOne", **config):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                        aws_secret_access_key=secret, region_name=region,
                        config=Config(retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="module")
def s3(endpoint, ec2):
    return client(endpoint, *ec2)


@pytest.fixture
def bucket(s3):
    name = f"sbx-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    s3.delete_bucket(Bucket=name)


def code_of(exc_info) -> tuple[str, int]:
    err = exc_info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_bucket_lifecycle(s3):
    name = f"sbx-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == "RegionOne"
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    assert code_of(e) == ("BucketAlreadyOwnedByYou", 409)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert code_of(e) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=name)
    assert code_of(e)[1] == 404
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=name)
    assert code_of(e) == ("NoSuchBucket", 404)


def test_bad_bucket_names_and_location(s3):
    for bad in ("ab", "Upper-Case", "-dash", "a" * 64):
        with pytest.raises(ClientError) as e:
            s3.create_bucket(Bucket=bad)
        assert code_of(e) == ("InvalidBucketName", 400), bad
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=f"sbx-{uuid.uuid4().hex[:8]}",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code_of(e) == ("InvalidLocationConstraint", 400)


def test_put_get_head_delete(s3, bucket):
    data = os.urandom(100_000)
    put = s3.put_object(Bucket=bucket, Key="dir/file one.bin", Body=data,
                        ContentType="application/x-test", Metadata={"colour": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/file one.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"colour": "blue"}
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key="dir/file one.bin")
    assert head["ContentLength"] == len(data)
    s3.delete_object(Bucket=bucket, Key="dir/file one.bin")
    s3.delete_object(Bucket=bucket, Key="dir/file one.bin")   # S3: deleting nothing is fine
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="dir/file one.bin")
    assert code_of(e) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="nothing")
    assert code_of(e)[1] == 404


def test_large_single_put_streams(s3, bucket):
    data = os.urandom(3 * MiB + 17)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == data


def test_content_md5_checked_and_nothing_stored(s3, bucket):
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"data", ContentMD5=wrong)
    assert code_of(e) == ("BadDigest", 400)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="md5")
    good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=b"data", ContentMD5=good)


def test_key_too_long(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert code_of(e) == ("KeyTooLongError", 400)


def test_range_and_conditional_get(s3, bucket):
    data = bytes(range(256)) * 40
    etag = s3.put_object(Bucket=bucket, Key="r", Body=data)["ETag"]
    part = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert part["Body"].read() == data[10:20]
    assert part["ContentRange"] == f"bytes 10-19/{len(data)}"
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == data[-5:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=10000-")["Body"].read() == \
        data[10000:]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(data)}-")
    assert code_of(e) == ("InvalidRange", 416)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", IfNoneMatch=etag)
    assert code_of(e)[1] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", IfMatch='"0123"')
    assert code_of(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="r", IfMatch=etag)["ContentLength"] == len(data)


def test_list_v1_and_v2_with_pagination(s3, bucket):
    keys = [f"a/{i:02d}" for i in range(7)] + ["b/x", "b/y/z", "c", "d e+f"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 3}))
    assert len(pages) == 4
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == sorted(keys)
    assert all(p["KeyCount"] <= 3 for p in pages)

    pages = list(s3.get_paginator("list_objects").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}))
    found = [o["Key"] for p in pages for o in p.get("Contents", [])]
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert found == ["c", "d e+f"] and prefixes == ["a/", "b/"]

    r = s3.list_objects_v2(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["b/x"]
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["b/y/"]
    r = s3.list_objects_v2(Bucket=bucket, StartAfter="a/05", MaxKeys=2)
    assert [o["Key"] for o in r["Contents"]] == ["a/06", "b/x"] and r["IsTruncated"]
    r = s3.list_objects(Bucket=bucket, Marker="b/y/z")
    assert [o["Key"] for o in r["Contents"]] == ["c", "d e+f"] and not r["IsTruncated"]
    # asked for explicitly, encoded keys reach the caller as sent
    r = s3.list_objects_v2(Bucket=bucket, Prefix="d ", EncodingType="url")
    assert [unquote_plus(o["Key"]) for o in r["Contents"]] == ["d e+f"]
    assert r["Contents"][0]["Key"] != "d e+f"
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["KeyCount"] == 0


def test_delete_objects(s3, bucket):
    for k in ("x1", "x2", "x3"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x1"}, {"Key": "x2"},
                                                             {"Key": "missing"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["missing", "x1", "x2"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["x3"]


def test_copy_object_metadata_directive(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", ContentType="text/plain",
                  Metadata={"a": "1"})
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"a": "1"} and head["ContentType"] == "text/plain"
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"},
                   ContentType="application/json")
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"b": "2"} and head["ContentType"] == "application/json"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert code_of(e) == ("InvalidRequest", 400)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="d2", CopySource=f"{bucket}/nothing")
    assert code_of(e) == ("NoSuchKey", 404)


def test_multipart_50_mib_with_upload_fileobj(s3, bucket):
    from boto3.s3.transfer import TransferConfig
    data = os.urandom(50 * MiB)
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                         max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), bucket, "fifty", Config=cfg)
    head = s3.head_object(Bucket=bucket, Key="fifty")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    out = io.BytesIO()
    s3.download_fileobj(bucket, "fifty", out, Config=cfg)
    assert out.getvalue() == data
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_calls_and_errors(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="text/x-parts",
                                    Metadata={"m": "v"})["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [up]
    p1 = os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(p1)), (2, 4)]

    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert code_of(e) == ("InvalidPartOrder", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"beef"'}]})
    assert code_of(e) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e2}]})
    assert code_of(e)[0] == "InvalidPart"
    small = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    s1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=1,
                        Body=b"a")["ETag"]
    s2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=2,
                        Body=b"b")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=small,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1},
                                                                {"PartNumber": 2, "ETag": s2}]})
    assert code_of(e) == ("EntityTooSmall", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="small", UploadId=small)
    assert code_of(e) == ("NoSuchUpload", 404)

    # upload part copy: part 3 is bytes 0..5 MiB-1 of the first part's data
    s3.put_object(Bucket=bucket, Key="copysrc", Body=p1)
    e3 = s3.upload_part_copy(Bucket=bucket, Key="mp", UploadId=up, PartNumber=3,
                             CopySource={"Bucket": bucket, "Key": "copysrc"},
                             CopySourceRange=f"bytes=0-{len(p1) - 1}")["CopyPartResult"]["ETag"]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e3}]})
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == p1 + p1
    assert got["ETag"] == done["ETag"]
    assert got["ContentType"] == "text/x-parts" and got["Metadata"] == {"m": "v"}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]
                  if b["Name"].startswith(bucket)) == [bucket]


def test_malformed_complete_body(s3, bucket, endpoint, ec2):
    up = s3.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    r = signed_request(endpoint, ec2, "POST", f"/{bucket}/bad?uploadId={up}",
                       body=b"<CompleteMultipartUpload><Part>")
    assert r.status_code == 400 and b"<Code>MalformedXML</Code>" in r.content


def test_presigned_get_and_put(s3, bucket):
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=60)
    assert requests.put(put_url, data=b"presigned body", timeout=30).status_code == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=60)
    r = requests.get(get_url, timeout=30)
    assert r.status_code == 200 and r.content == b"presigned body"
    r = requests.get(get_url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=30)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content


def test_expired_presigned_url_rejected(s3, bucket):
    s3.put_object(Bucket=bucket, Key="e", Body=b"x")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "e"},
                                    ExpiresIn=1)
    time.sleep(2.1)
    r = requests.get(url, timeout=30)
    assert r.status_code == 403
    assert b"<Code>AccessDenied</Code>" in r.content and b"expired" in r.content


def test_bad_credentials_rejected(endpoint, ec2, bucket):
    access, secret = ec2
    with pytest.raises(ClientError) as e:
        client(endpoint, access, "wrong-secret").list_objects_v2(Bucket=bucket)
    assert code_of(e) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as e:
        client(endpoint, "nobody", secret).list_buckets()
    assert code_of(e) == ("InvalidAccessKeyId", 403)
    with pytest.raises(ClientError) as e:
        client(endpoint, access, secret, region="eu-west-1").list_buckets()
    assert code_of(e) == ("AuthorizationHeaderMalformed", 400)
    r = requests.get(f"{endpoint}/{bucket}", timeout=30)
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content


def test_us_east_1_default_region_is_accepted(endpoint, ec2):
    client(endpoint, *ec2, region="us-east-1").list_buckets()


def signed_request(endpoint, ec2, method, path, *, body=b"", headers=None, host=None,
                   region="RegionOne"):
    """A request signed by botocore's SigV4 signer and sent as is."""
    url = f"http://{host}{path}" if host else endpoint + path
    aws = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(Credentials(*ec2), "s3", region).add_auth(aws)
    send_headers = dict(aws.headers.items())
    target = endpoint + path
    if host:
        send_headers["Host"] = host
    return requests.request(method, target, data=body, headers=send_headers, timeout=60)


def test_virtual_hosted_style(s3, bucket, endpoint, ec2):
    s3.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    port = endpoint.rsplit(":", 1)[1]
    r = signed_request(endpoint, ec2, "GET", "/vh/key", host=f"{bucket}.localhost:{port}")
    assert r.status_code == 200 and r.content == b"virtual"


def test_tampered_body_is_rejected(endpoint, ec2, bucket, s3):
    aws = AWSRequest(method="PUT", url=f"{endpoint}/{bucket}/t", data=b"original")
    S3SigV4Auth(Credentials(*ec2), "s3", "RegionOne").add_auth(aws)
    r = requests.put(f"{endpoint}/{bucket}/t", data=b"tampered", headers=dict(aws.headers),
                     timeout=30)
    assert r.status_code == 400 and b"XAmzContentSHA256Mismatch" in r.content
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="t")


def _streaming_put(endpoint, ec2, path, data, *, chunk=64 * 1024, corrupt=False,
                   mode="STREAMING-AWS4-HMAC-SHA256-PAYLOAD"):
    """An aws-chunked PUT as the AWS SDKs for Java/Go send it: botocore signs
    the headers (seed signature), each chunk is signed from the previous one."""
    import hmac

    from stackbox.objectstore.s3 import sigv4

    class Streaming(S3SigV4Auth):
        def payload(self, request):
            return mode

    aws = AWSRequest(method="PUT", url=endpoint + path, headers={
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))})
    Streaming(Credentials(*ec2), "s3", "RegionOne").add_auth(aws)
    headers = dict(aws.headers.items())
    seed = headers["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/RegionOne/s3/aws4_request"
    key = sigv4.signing_key(ec2[1], amz_date[:8], "RegionOne")
    body, previous = bytearray(), seed
    for piece in [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                         sigv4.EMPTY_SHA256, hashlib.sha256(piece).hexdigest()])
        previous = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        body += f"{len(piece):x};chunk-signature={previous}\r\n".encode()
        body += piece + b"\r\n" if piece else b""
    body += b"\r\n"
    if corrupt:
        body[len(body) // 2] ^= 0xFF
    return requests.put(endpoint + path, data=bytes(body), headers=headers, timeout=60)


def test_aws_chunked_signed_upload(endpoint, ec2, s3, bucket):
    data = os.urandom(300_000)
    r = _streaming_put(endpoint, ec2, f"/{bucket}/chunked", data)
    assert r.status_code == 200, r.text
    got = s3.get_object(Bucket=bucket, Key="chunked")
    assert got["Body"].read() == data and got["ContentLength"] == len(data)
    assert "ContentEncoding" not in got          # aws-chunked is framing, not stored


def test_aws_chunked_bad_chunk_signature_stores_nothing(endpoint, ec2, s3, bucket):
    r = _streaming_put(endpoint, ec2, f"/{bucket}/badchunk", os.urandom(2_000_000),
                       corrupt=True)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="badchunk")


def test_corrupt_replica_is_not_served(cloud, s3, bucket):
    """One replica's bytes flipped on disk: S3 GETs still return the right data."""
    data = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="fragile", Body=data)
    copies = [p for p in (cloud.data_dir / "objects").rglob("*") if p.is_file()
              and len(data) <= p.stat().st_size < len(data) + 65536
              and data[:4096] in p.read_bytes()]
    assert len(copies) >= 2, copies
    raw = bytearray(copies[0].read_bytes())
    raw[raw.index(data[:4096]) + 100] ^= 0xFF
    copies[0].write_bytes(bytes(raw))
    for _ in range(3):
        assert s3.get_object(Bucket=bucket, Key="fragile")["Body"].read() == data


def test_body_that_stops_early_leaves_nothing(endpoint, ec2, s3, bucket):
    import socket
    data = os.urandom(3 * MiB)
    aws = AWSRequest(method="PUT", url=f"{endpoint}/{bucket}/cut", data=data)
    S3SigV4Auth(Credentials(*ec2), "s3", "RegionOne").add_auth(aws)
    host, port = endpoint.rsplit("/", 1)[1].split(":")
    head = f"PUT /{bucket}/cut HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in aws.headers.items()) + \
        f"Host: {host}:{port}\r\nContent-Length: {len(data)}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + data[:MiB + 123])
        time.sleep(0.5)
    time.sleep(1)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="cut")
    assert code_of(e)[1] == 404
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_key_with_nul_is_refused(s3, bucket):
    # the HTTP server refuses %00 in a path before the API sees it
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="a\x00b", Body=b"x")
    assert code_of(e)[1] == 400
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def _unsigned_trailer_put(endpoint, ec2, path, data, crc_b64):
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER, as botocore sends over HTTPS: plain
    aws-chunked framing and an x-amz-checksum-crc32 trailer."""
    class Trailer(S3SigV4Auth):
        def payload(self, request):
            return "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    aws = AWSRequest(method="PUT", url=endpoint + path, headers={
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32"})
    Trailer(Credentials(*ec2), "s3", "RegionOne").add_auth(aws)
    body = bytearray()
    for piece in [data[i:i + 65536] for i in range(0, len(data), 65536)]:
        body += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    body += f"0\r\nx-amz-checksum-crc32:{crc_b64}\r\n\r\n".encode()
    return requests.put(endpoint + path, data=bytes(body), headers=dict(aws.headers.items()),
                        timeout=60)


def test_unsigned_trailer_upload_checks_its_crc32(endpoint, ec2, s3, bucket):
    import zlib
    data = os.urandom(3 * MiB + 5)
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    r = _unsigned_trailer_put(endpoint, ec2, f"/{bucket}/trailer", data, good)
    assert r.status_code == 200, r.text
    assert s3.get_object(Bucket=bucket, Key="trailer")["Body"].read() == data
    r = _unsigned_trailer_put(endpoint, ec2, f"/{bucket}/trailer2", data, "AAAAAA==")
    assert r.status_code == 400 and b"BadDigest" in r.content
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="trailer2")


def test_a_project_reader_may_read_through_an_acl_and_may_not_write(cloud, endpoint, s3,
                                                                   bucket, unique):
    """A user with only the reader role in the bucket's project is not its
    owner: each request is checked against the container's ACLs (a database
    query, in a worker thread), so it gets 403 AccessDenied, never a 500."""
    user = unique("s3reader")
    cloud.openstack("user", "create", "--password", "pw-reader-1", user)
    cloud.openstack("role", "add", "--user", user, "--project", "demo", "reader",
                    as_json=False)
    env = cloud.user_env(user, "pw-reader-1", "demo")
    cred = cloud.openstack("ec2", "credentials", "create", cloud=None, env=env)
    reader = client(endpoint, cred["access"], cred["secret"])
    s3.put_object(Bucket=bucket, Key="k", Body=b"for the owner")
    for call in (lambda: reader.put_object(Bucket=bucket, Key="w", Body=b"x"),
                 lambda: reader.get_object(Bucket=bucket, Key="k"),
                 lambda: reader.delete_object(Bucket=bucket, Key="k")):
        with pytest.raises(ClientError) as e:
            call()
        assert code_of(e) == ("AccessDenied", 403)
    # a read ACL on the container (set through the Swift API) lets the reader GET
    token = cloud.openstack("token", "issue", cloud="stackbox-demo")["id"]
    project = cloud.openstack("project", "show", "demo")["id"]
    r = requests.post(f"{endpoint}/v1/AUTH_{project}/{bucket}",
                      headers={"X-Auth-Token": token, "X-Container-Read": ".r:*"}, timeout=30)
    assert r.status_code == 204
    assert reader.get_object(Bucket=bucket, Key="k")["Body"].read() == b"for the owner"
    with pytest.raises(ClientError) as e:
        reader.put_object(Bucket=bucket, Key="w", Body=b"x")
    assert code_of(e) == ("AccessDenied", 403)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]


def test_keys_with_url_characters_are_keys(s3, bucket):
    """?, #, % and backslash in a key are the key's own (boto3 quotes them),
    and the Swift API sees the same names."""
    keys = ["what?x=1", "sharp#frag", "back\\slash", "per%25cent"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(keys)
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    # an error names the resource by its key, not its escaped form
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="missing?x=1")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"
    assert err.value.response["Error"]["Resource"] == f"/{bucket}/missing?x=1"
