"""S3 errors: the code, message and status an S3 client expects.

These live at the API edge (S3 codes are wire vocabulary). Domain errors from
the object-store service are mapped to them in one table in `api.py`."""

from __future__ import annotations


class S3Error(Exception):
    """An error answered as `<Error><Code>…</Code><Message>…</Message>…</Error>`."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra  # extra elements, e.g. BucketName, Key, RequestTime


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist", 404,
                   BucketName=bucket)


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=key)


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified multipart upload does not exist. The upload "
                   "ID may be invalid, or the upload may have been aborted or completed.",
                   404, UploadId=upload_id)


def invalid_argument(message: str, name: str, value: str) -> S3Error:
    return S3Error("InvalidArgument", message, 400, ArgumentName=name, ArgumentValue=value)


def malformed_xml() -> S3Error:
    return S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                   "validate against our published schema.", 400)
