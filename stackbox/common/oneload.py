"""One load per key, however many threads miss a cache together.

The caches of token validations and EC2 credentials expire every few
seconds, and the requests in flight at that moment (16 at a time in the
object-store benchmark) all missed at once and each did the same database
reads in its own worker thread. With `OneLoad`, the first thread to miss a
key loads it while the others wait for it and then find the cache filled:

    with self._loads.hold(key):
        hit = self._cached(key)     # filled meanwhile by the thread before
        if hit is None:
            hit = self._load(key)
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class OneLoad:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict = {}

    @contextmanager
    def hold(self, key):
        """Held by one thread per key at a time."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        try:
            with lock:
                yield
        finally:
            with self._guard:
                if self._locks.get(key) is lock:
                    del self._locks[key]
