"""settle_threadsafe: a worker thread's results reach the futures awaiting
them, one loop wake-up per loop, skipping cancelled futures and closed loops."""

import asyncio
import threading

import pytest

from stackbox.common.handoff import settle_threadsafe


def test_results_and_errors_reach_their_futures_with_one_call_per_loop():
    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        real = loop.call_soon_threadsafe

        def counting(cb, *args):
            calls.append(cb)
            return real(cb, *args)

        loop.call_soon_threadsafe = counting
        ok, bad, gone = (loop.create_future() for _ in range(3))
        gone.cancel()
        error = ValueError("disk said no")
        t = threading.Thread(target=settle_threadsafe,
                             args=([(loop, ok, 7), (loop, bad, error), (loop, gone, 1)],))
        t.start()
        t.join()
        assert await ok == 7
        with pytest.raises(ValueError, match="disk said no"):
            await bad
        assert gone.cancelled()
        assert len(calls) == 1

    asyncio.run(main())


def test_a_closed_loop_is_skipped_and_other_loops_still_get_theirs():
    closed = asyncio.new_event_loop()
    orphan = closed.create_future()
    closed.close()

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        t = threading.Thread(target=settle_threadsafe,
                             args=([(closed, orphan, 1), (loop, fut, "done")],))
        t.start()
        t.join()
        assert await asyncio.wait_for(fut, 5) == "done"

    asyncio.run(main())
    assert not orphan.done()
