"""Request bodies of S3 writes: decoded (aws-chunked) and checked as they
stream — x-amz-content-sha256, Content-MD5, x-amz-checksum-crc32 and the
declared length. A check that fails raises S3Error at the end of the body,
before the writer commits, so a bad upload leaves nothing."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import AsyncIterator

import anyio

from stackbox.objectstore.s3 import sigv4
from stackbox.objectstore.s3.errors import S3Error

MAX_PUT_SIZE = 5 * 1024 ** 3
HASH_BATCH = 1024 * 1024


def _int_header(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer.", 400,
                      ArgumentName=name, ArgumentValue=value)
    return n


class Payload:
    """The decoded body of one request and the checks it must pass."""

    def __init__(self, headers, verified: sigv4.Verified):
        self.verified = verified
        self.chunked = verified.payload in sigv4.STREAMING_MODES
        self.content_length = _int_header(headers.get("content-length"), "Content-Length")
        declared = (_int_header(headers.get("x-amz-decoded-content-length"),
                                "x-amz-decoded-content-length")
                    if self.chunked else self.content_length)
        if self.chunked and declared is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length "
                          "(x-amz-decoded-content-length) HTTP header.", 411)
        if declared is not None and declared > MAX_PUT_SIZE:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum "
                          "allowed size", 400, ProposedSize=str(declared),
                          MaxSizeAllowed=str(MAX_PUT_SIZE))
        self.size = declared
        md5 = headers.get("content-md5")
        if md5 is not None:
            try:
                self.content_md5 = base64.b64decode(md5, validate=True)
            except ValueError:
                self.content_md5 = b""
            if len(self.content_md5) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.",
                              400, Content_MD5=md5)
        else:
            self.content_md5 = None
        self.crc32 = headers.get("x-amz-checksum-crc32")
        # a CRC32 announced as a trailer arrives after the data it covers
        self.want_crc = self.crc32 is not None or "x-amz-checksum-crc32" in (
            headers.get("x-amz-trailer") or "").lower()
        # the store computes the ETag itself; MD5 here only to check Content-MD5
        self.md5 = hashlib.md5() if self.content_md5 is not None else None
        self.sha = None
        self.crc = 0

    def _digest(self, data: bytes) -> None:
        if self.sha is not None:
            self.sha.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self.want_crc:
            self.crc = zlib.crc32(data, self.crc)

    async def chunks(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yields decoded payload bytes; raises S3Error when a check fails.

        Bytes are gathered up to HASH_BATCH and hashed in a worker thread
        (hashlib and zlib release the GIL), so a large upload does not hold
        the event loop; a small body is hashed in place."""
        v = self.verified
        decoder = sigv4.AwsChunkedDecoder(v, decoded_length=self.size) if self.chunked else None
        self.sha = hashlib.sha256() if not self.chunked and v.payload != sigv4.UNSIGNED_PAYLOAD \
            else None
        self.crc = 0
        total = 0
        buf = bytearray()
        async for raw in stream:
            data = decoder.feed(raw) if decoder else raw
            if not data:
                continue
            total += len(data)
            if self.size is not None and total > self.size:
                raise S3Error("IncompleteBody", "The body is longer than its declared "
                              "length.", 400)
            buf += data
            if len(buf) >= HASH_BATCH:
                batch = bytes(buf)
                buf.clear()
                await anyio.to_thread.run_sync(self._digest, batch)
                yield batch
        if decoder:
            decoder.finish()
            if "x-amz-checksum-crc32" in decoder.trailers:
                self.crc32 = decoder.trailers["x-amz-checksum-crc32"]
                if not self.want_crc:
                    raise S3Error("InvalidRequest", "The x-amz-checksum-crc32 trailer was "
                                  "not announced in x-amz-trailer.", 400)
        if self.size is not None and total != self.size:
            raise S3Error("IncompleteBody", "You did not provide the number of bytes "
                          "specified by the Content-Length HTTP header.", 400)
        if buf:
            self._digest(bytes(buf))
        self._check()
        if buf:
            yield bytes(buf)

    def _check(self) -> None:
        v = self.verified
        if self.sha is not None and self.sha.hexdigest() != v.payload:
            raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                          "header does not match what was computed.", 400,
                          ClientComputedContentSHA256=v.payload,
                          S3ComputedContentSHA256=self.sha.hexdigest())
        if self.content_md5 is not None and self.md5.digest() != self.content_md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                          "received.", 400)
        if self.crc32 is not None and self.crc32 != base64.b64encode(
                self.crc.to_bytes(4, "big")).decode():
            raise S3Error("BadDigest", "The CRC32 you specified did not match the calculated "
                          "checksum.", 400)

    async def read_all(self, stream: AsyncIterator[bytes], limit: int) -> bytes:
        buf = bytearray()
        async for data in self.chunks(stream):
            buf += data
            if len(buf) > limit:
                raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        return bytes(buf)
