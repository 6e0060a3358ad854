"""Read-change-write of one versioned record, retried while another writer wins.

Optimistic concurrency (see :mod:`dispatcher.store.base`) makes every
single-record change the same loop: read the record, change it, write it back,
and start again on ``WriteConflictError``. :func:`modify` is that loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dashi.errors import NotFoundError, WriteConflictError

__all__ = ["modify"]

T = TypeVar("T")


def modify(
    get: Callable[[], T | None],
    write: Callable[[T], None],
    change: Callable[[T], bool],
) -> T | None:
    """Apply ``change`` to the stored record until the write succeeds.

    Args:
        get: reads the record (``None`` when it does not exist).
        write: the store's versioned ``update_*`` for it.
        change: changes the record in place; returns False when nothing needs
            writing (the record already is as wanted).

    Returns:
        The record as written, or ``None`` when it is missing (or disappeared
        during the write) or ``change`` found nothing to do.
    """
    while True:
        record = get()
        if record is None or not change(record):
            return None
        try:
            write(record)
        except WriteConflictError:
            continue
        except NotFoundError:
            return None
        return record
