"""read_ahead: a blocking chunk iterator served to the event loop one chunk
ahead, closing the source at the end, on errors and on early exit."""

from __future__ import annotations

import asyncio

import pytest

from stackbox.objectstore.streams import read_ahead


def _collect(gen, limit=None):
    async def run():
        out = []
        agen = gen
        try:
            async for chunk in agen:
                out.append(chunk)
                if limit is not None and len(out) >= limit:
                    break
        finally:
            await agen.aclose()
        return out
    return asyncio.run(run())


def test_yields_every_chunk_in_order_and_closes():
    closed = []
    assert _collect(read_ahead(iter([b"a", b"b", b"c"]), close=lambda: closed.append(1))) \
        == [b"a", b"b", b"c"]
    assert closed == [1]


def test_error_after_the_last_chunk_is_raised_and_still_closes():
    closed = []

    def chunks():
        yield b"data"
        raise RuntimeError("etag mismatch")
    with pytest.raises(RuntimeError, match="etag"):
        _collect(read_ahead(chunks(), close=lambda: closed.append(1)))
    assert closed == [1]


def test_consumer_leaving_early_waits_for_the_read_in_flight_then_closes():
    events = []

    def chunks():
        for i in range(100):
            events.append(i)
            yield bytes([i])
    got = _collect(read_ahead(chunks(), close=lambda: events.append("closed")), limit=2)
    assert got == [b"\x00", b"\x01"]
    assert events[-1] == "closed" and len(events) <= 4     # at most one chunk read ahead
