"""Image API request parsing: JSON patch, create bodies, list queries, ranges."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException

from stackbox.common.errors import BadRequest, Forbidden
from stackbox.image import schemas
from stackbox.image.api import _byte_range, list_query


def test_patch_ops():
    ops = schemas.image_patch([{"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
                               {"op": "remove", "path": "/a~1b"}])
    assert ops == [schemas.PatchOp("add", "hw_disk_bus", "virtio"),
                   schemas.PatchOp("remove", "a/b")]
    for bad in ({"op": "add"}, [{"op": "test", "path": "/x", "value": 1}],
                [{"op": "add", "path": "/a/b", "value": "x"}], [{"op": "add", "path": "/x"}]):
        with pytest.raises(BadRequest):
            schemas.image_patch(bad)
    with pytest.raises(Forbidden):
        schemas.image_patch([{"op": "remove", "path": "/checksum"}])


def test_create_body():
    spec = schemas.image_create({"name": "n", "tags": ["a", "a", "b"], "os_type": "linux",
                                 "id": "6C2B4D0C-8B5B-4A80-9E9A-3A4C0E6B9F1E"})
    assert spec.core == {"name": "n", "tags": ["a", "b"]}
    assert spec.properties == {"os_type": "linux"}
    assert spec.id == "6c2b4d0c-8b5b-4a80-9e9a-3a4c0e6b9f1e"
    with pytest.raises(Forbidden):
        schemas.image_create({"size": 1})
    with pytest.raises(Forbidden):
        schemas.image_create({"locations": []})
    with pytest.raises(BadRequest):
        schemas.image_create({"min_ram": -1})
    with pytest.raises(BadRequest):
        schemas.image_create({"protected": "yes"})


def test_list_query():
    q = list_query(QueryParams("sort=name:asc,size&tag=a&tag=b&os_distro=debian"
                               "&disk_format=in:raw,qcow2&protected=false"))
    assert q.sort == (("name", "asc"), ("size", "desc"), ("id", "desc"))
    assert q.tags == ("a", "b") and q.properties == {"os_distro": "debian"}
    assert q.columns == {"disk_format": ["raw", "qcow2"], "protected": False}
    q = list_query(QueryParams("sort_key=name&sort_key=created_at&sort_dir=asc"))
    assert q.sort == (("name", "asc"), ("created_at", "asc"), ("id", "asc"))
    for bad in ("sort=name&sort_key=id", "sort_key=secret", "sort=name:up",
                "visibility=everyone", "member_status=maybe", "size_min=big"):
        with pytest.raises(BadRequest):
            list_query(QueryParams(bad))


def test_byte_range():
    assert _byte_range(None, 100) is None
    assert _byte_range("bytes=0-9", 100) == (0, 9)
    assert _byte_range("bytes=90-", 100) == (90, 99)
    assert _byte_range("bytes=95-200", 100) == (95, 99)
    assert _byte_range("bytes=-10", 100) == (90, 99)
    for bad in ("bytes=100-", "bytes=5-1", "items=0-1", "bytes=-", "bytes=0-1,3-4"):
        with pytest.raises(HTTPException) as err:
            _byte_range(bad, 100)
        assert err.value.status_code == 416
