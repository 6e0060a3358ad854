"""A process-wide pause of the cyclic garbage collector, shared by concurrent users.

Large listings (``describe_processes`` and ``dump`` of 100,000 processes and more)
are built, encoded and decoded as millions of new objects without cycles; the
collections their allocation triggers cost more than the work itself. Several
threads may do such work at once (RPC workers, the store, the client), and the
collector is one per process, so a pause is reference-counted: the collector is
disabled when the first user enters, enabled again only when the last one leaves,
and left disabled if it was disabled before the first user entered (by the
embedding program, or by a test).

This module imports nothing of the project, so the wire code can use it wherever
it lives.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["collector_paused"]


class _CollectorPause:
    """The count of users pausing the collector, and whether to resume it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._resume = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._resume:
                    gc.enable()


#: One per process, as the collector is: a second count would resume it under
#: the first one's users.
_PAUSE = _CollectorPause()


def collector_paused() -> contextlib.AbstractContextManager[None]:
    """Pause the cyclic garbage collector for the ``with`` block (thread-safe).

    The collector is enabled again when the last concurrent block ends, whether
    by return or by exception, and only if it was enabled when the first began.
    """
    return _PAUSE.paused()
