"""The per-host image cache: verified, atomic, one download per image."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from stackbox.compute.imagecache import ImageCache, ImageFetchError

DATA = b"stackbox image bytes\n" * 5000


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def chunks(data: bytes, size: int = 4096, delay: float = 0.0):
    for i in range(0, len(data), size):
        if delay:
            time.sleep(delay)
        yield data[i:i + size]


def dir_entries(path):
    return sorted(p.name for p in path.iterdir())


def test_fetch_streams_verifies_and_caches(tmp_path):
    cache = ImageCache(tmp_path / "c")
    opened = []

    def open_stream():
        opened.append(1)
        return chunks(DATA)

    path = cache.fetch("img-1", os_hash_value=sha(DATA), size=len(DATA), open_stream=open_stream)
    assert path == tmp_path / "c" / "img-1"
    assert path.read_bytes() == DATA
    again = cache.fetch("img-1", os_hash_value=sha(DATA), size=len(DATA),
                        open_stream=open_stream)
    assert again == path and len(opened) == 1
    assert cache.list() == ["img-1"]


@pytest.mark.parametrize("bad", ["hash", "short", "long"])
def test_bad_download_leaves_nothing(tmp_path, bad):
    cache = ImageCache(tmp_path)
    data = DATA
    kwargs = {"os_hash_value": sha(data), "size": len(data)}
    if bad == "hash":
        data = DATA[:-1] + b"X"
    elif bad == "short":
        data = DATA[:-10]
    else:
        data = DATA + b"more"
    with pytest.raises(ImageFetchError) as err:
        cache.fetch("img", open_stream=lambda: chunks(data), **kwargs)
    assert "img" in err.value.message
    assert [n for n in dir_entries(tmp_path) if not n.endswith(".lock")] == []
    # A good fetch afterwards still works.
    cache.fetch("img", open_stream=lambda: chunks(DATA), **kwargs)
    assert (tmp_path / "img").read_bytes() == DATA


def test_stream_error_becomes_fetch_error_and_closes_stream(tmp_path):
    cache = ImageCache(tmp_path)
    closed = []

    class Stream:
        def __iter__(self):
            yield DATA[:100]
            raise ConnectionResetError("peer went away")

        def close(self):
            closed.append(True)

    with pytest.raises(ImageFetchError, match="peer went away"):
        cache.fetch("img", os_hash_value=sha(DATA), size=None, open_stream=Stream)
    assert closed == [True]
    assert not (tmp_path / "img").exists()


def test_concurrent_fetches_download_once(tmp_path):
    cache = ImageCache(tmp_path)
    opened = []
    results, errors = [], []

    def open_stream():
        opened.append(1)
        return chunks(DATA, delay=0.002)

    def worker():
        try:
            results.append(cache.fetch("img", os_hash_value=sha(DATA), size=len(DATA),
                                       open_stream=open_stream))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(results) == 5 and len(set(results)) == 1
    assert len(opened) == 1


def test_changed_checksum_downloads_again(tmp_path):
    cache = ImageCache(tmp_path)
    cache.fetch("img", os_hash_value=sha(DATA), size=len(DATA), open_stream=lambda: [DATA])
    new = b"other content"
    path = cache.fetch("img", os_hash_value=sha(new), size=len(new), open_stream=lambda: [new])
    assert path.read_bytes() == new


def test_truncated_cached_file_is_fetched_again(tmp_path):
    cache = ImageCache(tmp_path)
    path = cache.fetch("img", os_hash_value=sha(DATA), size=len(DATA),
                       open_stream=lambda: [DATA])
    path.write_bytes(DATA[:10])
    opened = []
    cache.fetch("img", os_hash_value=sha(DATA), size=len(DATA),
                open_stream=lambda: opened.append(1) or [DATA])
    assert opened == [1] and path.read_bytes() == DATA


@pytest.mark.parametrize("image_id", ["../etc", ".hidden", "", "a/b", "x" * 200])
def test_bad_ids_are_refused(tmp_path, image_id):
    cache = ImageCache(tmp_path)
    with pytest.raises(ImageFetchError):
        cache.fetch(image_id, os_hash_value=sha(DATA), size=None, open_stream=lambda: [DATA])


def test_missing_hash_is_refused(tmp_path):
    with pytest.raises(ImageFetchError, match="sha512"):
        ImageCache(tmp_path).fetch("img", os_hash_value="", size=None,
                                   open_stream=lambda: [DATA])


def test_prune_keeps_what_is_in_use(tmp_path):
    cache = ImageCache(tmp_path)
    for name in ("a", "b", "c"):
        cache.fetch(name, os_hash_value=sha(name.encode()), size=1,
                    open_stream=lambda n=name: [n.encode()])
    stale = tmp_path / ".part-dead"
    stale.write_bytes(b"half")
    fresh = tmp_path / ".part-live"
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 3600
    import os
    os.utime(stale, (old, old))
    assert sorted(cache.prune({"b"})) == ["a", "c"]
    assert cache.list() == ["b"]
    assert not stale.exists() and fresh.exists()
    assert not (tmp_path / ".a.json").exists() and not (tmp_path / ".a.lock").exists()


def test_prune_skips_an_image_being_fetched(tmp_path):
    cache = ImageCache(tmp_path)
    cache.fetch("a", os_hash_value=sha(b"a"), size=1, open_stream=lambda: [b"a"])
    with cache._lock("a"):
        assert cache.prune(set()) == []
    assert cache.prune(set()) == ["a"]
