"""s3cmd (a third S3 client, with its own SigV4 and multipart code) against
stackbox: buckets, put/get/ls/info/del, a multipart upload, sync of a
directory, and the data seen through Swift."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

S3CMD = str(Path(sys.executable).parent / "s3cmd")


@pytest.fixture(scope="module")
def s3cmd(cloud, tmp_path_factory):
    if not os.path.exists(S3CMD):
        pytest.fail("s3cmd is not installed in the virtualenv (requirements-test.lock)")
    cred = cloud.openstack("ec2", "credentials", "create", cloud="stackbox-demo")
    home = tmp_path_factory.mktemp("s3cmd-home")
    host = f"127.0.0.1:{cloud.ports['object_store']}"
    config = home / "s3cfg"
    config.write_text("[default]\n"
                      f"access_key = {cred['access']}\nsecret_key = {cred['secret']}\n"
                      f"host_base = {host}\nhost_bucket = {host}\n"
                      "use_https = False\nsignature_v2 = False\nbucket_location = RegionOne\n"
                      "multipart_chunk_size_mb = 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OS_"))}
    env["HOME"] = str(home)

    def run(*args, check=True):
        proc = subprocess.run([S3CMD, "-c", str(config), *args], capture_output=True,
                              text=True, env=env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"s3cmd {args} exited {proc.returncode}:\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc
    run.credentials = cred
    return run


def test_s3cmd_buckets_objects_multipart_and_sync(cloud, s3cmd, tmp_path):
    bucket = f"s3cmd-{uuid.uuid4().hex[:10]}"
    s3cmd("mb", f"s3://{bucket}")
    try:
        assert f"s3://{bucket}" in s3cmd("ls").stdout
        small = tmp_path / "small.txt"
        small.write_bytes(b"hello from s3cmd\n")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(12 * 1024 * 1024 + 5))      # 3 parts of 5 MiB max
        s3cmd("put", str(small), f"s3://{bucket}/dir/small.txt")
        out = s3cmd("put", "--progress", str(big), f"s3://{bucket}/big.bin").stdout
        assert "part 3 of 3" in out, out
        etag = s3cmd("ls", "--list-md5", f"s3://{bucket}/big.bin").stdout
        # stackbox's multipart ETag is the data's real MD5 (docs/s3.md), which
        # s3cmd's sync and --list-md5 take at face value
        assert hashlib.md5(big.read_bytes()).hexdigest() in etag, etag
        listing = s3cmd("ls", "-r", f"s3://{bucket}").stdout
        assert f"s3://{bucket}/dir/small.txt" in listing and f"s3://{bucket}/big.bin" in listing
        got = tmp_path / "got.bin"
        s3cmd("get", f"s3://{bucket}/big.bin", str(got))
        assert hashlib.md5(got.read_bytes()).digest() == hashlib.md5(big.read_bytes()).digest()
        # sync a directory up, then change one file and sync again: only it moves
        tree = tmp_path / "tree"
        (tree / "a").mkdir(parents=True)
        for i in range(5):
            (tree / "a" / f"f{i}").write_text(f"file {i}\n")
        s3cmd("sync", f"{tree}/", f"s3://{bucket}/tree/")
        (tree / "a" / "f3").write_text("changed\n")
        again = s3cmd("sync", f"{tree}/", f"s3://{bucket}/tree/").stdout
        assert "a/f3" in again and "a/f1" not in again, again
        # the same bytes through the Swift API
        conn = cloud.sdk("stackbox-demo")
        try:
            body = conn.object_store.download_object("tree/a/f3", container=bucket)
            assert body == b"changed\n"
        finally:
            conn.close()
        s3cmd("del", f"s3://{bucket}/dir/small.txt")
        assert "small.txt" not in s3cmd("ls", "-r", f"s3://{bucket}").stdout
        # errors come back as S3 codes s3cmd understands
        missing = s3cmd("get", f"s3://{bucket}/nope", str(tmp_path / "nope"), check=False)
        assert missing.returncode != 0 and "does not exist" in missing.stderr, missing.stderr
        full = s3cmd("rb", f"s3://{bucket}", check=False)
        assert full.returncode != 0 and "BucketNotEmpty" in full.stderr + full.stdout
    finally:
        s3cmd("del", "--recursive", "--force", f"s3://{bucket}", check=False)
        s3cmd("rb", f"s3://{bucket}", check=False)
