"""The `aws s3` and `aws s3api` commands against stackbox, and S3 <-> Swift on
one set of data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

AWS = str(Path(sys.executable).parent / "aws")


@pytest.fixture(scope="module")
def aws(cloud, tmp_path_factory):
    cred = cloud.openstack("ec2", "credentials", "create", cloud="stackbox-demo")
    home = tmp_path_factory.mktemp("aws-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OS_"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID=cred["access"],
               AWS_SECRET_ACCESS_KEY=cred["secret"], AWS_DEFAULT_REGION="RegionOne",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(home / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"))
    endpoint = f"http://127.0.0.1:{cloud.ports['object_store']}"

    def run(*args, check=True):
        proc = subprocess.run([AWS, "--endpoint-url", endpoint, *args], capture_output=True,
                              text=True, env=env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"aws {args} exited {proc.returncode}: {proc.stderr}")
        return proc
    run.credentials = cred
    run.endpoint = endpoint
    return run


def test_aws_s3_cp_ls_sync_rm(aws, tmp_path):
    bucket = f"sbx-{uuid.uuid4().hex[:10]}"
    aws("s3", "mb", f"s3://{bucket}")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    big = os.urandom(12 * 1024 * 1024)          # over the CLI's 8 MiB multipart threshold
    (src / "sub" / "big.bin").write_bytes(big)
    aws("s3", "cp", "--recursive", str(src), f"s3://{bucket}/tree")
    listing = aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout
    assert "tree/a.txt" in listing and "tree/sub/big.bin" in listing
    out = tmp_path / "out"
    aws("s3", "sync", f"s3://{bucket}/tree", str(out))
    assert (out / "a.txt").read_bytes() == b"alpha\n"
    assert hashlib.sha256((out / "sub" / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(big).digest()
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key",
                          "tree/a.txt").stdout)
    assert head["ContentLength"] == 6
    assert aws("s3", "rb", f"s3://{bucket}", check=False).returncode != 0   # not empty
    aws("s3", "rm", "--recursive", f"s3://{bucket}")
    aws("s3", "rb", f"s3://{bucket}")
    assert bucket not in aws("s3", "ls").stdout


def test_s3api_errors_name_the_code(aws):
    proc = aws("s3api", "get-object", "--bucket", f"sbx-none-{uuid.uuid4().hex[:6]}",
               "--key", "k", "/dev/null", check=False)
    assert proc.returncode != 0 and "NoSuchBucket" in proc.stderr


def _swift_ready(cloud) -> bool:
    port = cloud.ports["object_store"]
    r = requests.get(f"http://127.0.0.1:{port}/info", timeout=10)
    return r.status_code == 200 and r.headers.get("content-type", "").startswith(
        "application/json")


def test_s3_and_swift_share_data(cloud, aws):
    if not _swift_ready(cloud):
        pytest.skip("the Swift API is not in this build (branch swift)")
    import swiftclient
    project = cloud.openstack("project", "show", "demo")["id"]
    conn = swiftclient.Connection(
        preauthurl=f"{aws.endpoint}/v1/AUTH_{project}",
        preauthtoken=cloud.token("demo", cloud.demo_password, "demo"))
    bucket = f"sbx-{uuid.uuid4().hex[:10]}"
    aws("s3", "mb", f"s3://{bucket}")
    aws("s3api", "put-object", "--bucket", bucket, "--key", "from-s3",
        "--body", "/etc/hostname", "--metadata", "colour=blue")
    headers, body = conn.get_object(bucket, "from-s3")
    assert body == Path("/etc/hostname").read_bytes()
    assert headers["x-object-meta-colour"] == "blue"
    conn.put_object(bucket, "from-swift", b"swift data", content_type="text/x-swift",
                    headers={"X-Object-Meta-Shape": "round"})
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key",
                          "from-swift").stdout)
    assert head["ContentType"] == "text/x-swift" and head["Metadata"] == {"shape": "round"}
    assert head["ETag"] == f'"{hashlib.md5(b"swift data").hexdigest()}"'
    names = [o["name"] for o in conn.get_container(bucket)[1]]
    assert names == ["from-s3", "from-swift"]
    aws("s3", "rm", "--recursive", f"s3://{bucket}")
    conn.delete_container(bucket)
