"""The S3 API on the object store: bucket = container, object = object.

`sigv4` verifies AWS Signature Version 4 (headers, presigned URLs, aws-chunked
bodies); `xml` renders responses and parses request bodies safely; `api`
turns S3 requests into object-store service calls.
"""
