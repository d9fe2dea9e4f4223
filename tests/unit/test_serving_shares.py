"""ConnectionShares and SharedAccept (stackbox.common.http.serving): how
processes that share a listening socket deal out its connections. Two event
loops in two threads stand in for two processes here; the real processes
are tested in tests/api/test_objectstore_workers.py."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from stackbox.common.http.serving import ConnectionShares, SharedAccept


def test_shares_are_seen_by_every_process_and_a_restart_starts_at_zero(tmp_path):
    path = tmp_path / "shares"
    first = ConnectionShares(path, 0, 2, create=True)
    second = ConnectionShares(path, 1, 2)
    first.add(1)
    first.add(1)
    second.add(1)
    assert first.counts() == second.counts() == [2, 1]
    assert first.ahead() and not second.ahead()
    second.add(1)
    assert not first.ahead() and not second.ahead()      # a tie: both accept
    first.add(-2)
    assert second.ahead()
    again = ConnectionShares(path, 1, 2)     # a worker started again
    assert first.counts() == [0, 0] and not again.ahead()
    with pytest.raises(ValueError, match="slot 2"):
        ConnectionShares(path, 2, 2)
    for s in (first, second, again):
        s.close()


class _Loop(threading.Thread):
    """An event loop in a thread, accepting on `sock` as one process would."""

    def __init__(self, sock, shares):
        super().__init__(daemon=True)
        self.sock, self.shares = sock, shares
        self.loop = asyncio.new_event_loop()
        self.made: list = []
        self.transports: list = []

    def protocol(self):
        outer = self

        class Record(asyncio.Protocol):
            def connection_made(self, transport):
                outer.made.append(transport.get_extra_info("peername"))
                outer.transports.append(transport)
        return Record()

    def run(self):
        asyncio.set_event_loop(self.loop)
        self.accepter = SharedAccept(self.sock, self.loop, self.protocol, self.shares)
        self.accepter.start()
        self.loop.run_forever()

    def stop(self):
        self.accepter.stop()
        self.accepter.join(5)
        self.loop.call_soon_threadsafe(lambda: [t.close() for t in self.transports])
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(5)
        self.loop.close()


def _burst(tmp_path, shares: bool) -> list[_Loop]:
    """Ten connections waiting before two 'processes' start accepting."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    loops = [_Loop(listener, ConnectionShares(tmp_path / "shares", i, 2, create=i == 0)
                   if shares else None) for i in range(2)]
    for lp in loops:
        lp.start()
    for _ in range(250):
        if sum(len(lp.made) for lp in loops) == 10:
            break
        threading.Event().wait(0.02)
    return loops, clients, listener


def _end(loops, clients, listener):
    for c in clients:
        c.close()
    for lp in loops:
        lp.stop()
    listener.close()


def test_a_burst_of_connections_is_dealt_out_evenly_and_closing_one_counts(tmp_path):
    loops, clients, listener = _burst(tmp_path, shares=True)
    try:
        made = sorted(len(lp.made) for lp in loops)
        assert sum(made) == 10 and made[1] - made[0] <= 2, made
        assert sorted(loops[0].shares.counts()) == made
        clients.pop().close()
        for _ in range(250):
            if sum(loops[0].shares.counts()) == 9:
                break
            threading.Event().wait(0.02)
        assert sum(loops[0].shares.counts()) == 9
    finally:
        _end(loops, clients, listener)

