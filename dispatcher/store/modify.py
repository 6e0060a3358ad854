"""Optimistic writes retried while another writer wins, a bounded number of times.

Optimistic concurrency (see :mod:`dispatcher.store.base`) makes every change of a
versioned record the same loop: read the record, decide, write it back with the
version read, and start again from a fresh read on ``WriteConflictError``.
:func:`retry_conflicts` is that loop, for any attempt; :func:`modify` is the common
case of one record changed in place.

The loop is bounded by :data:`WRITE_ATTEMPTS`: a conflict means another writer
changed the record meanwhile, so a record that changes under every attempt is
contended, and more attempts only add database round trips. When the attempts run
out, :class:`~dashi.errors.WriteRetriesExhaustedError` (a
``WriteConflictError``) names the record and the count; nothing was written by the
last attempt, and the caller's next pass, heartbeat or call starts again from a
fresh read. An attempt that itself fails with ``WriteRetriesExhaustedError`` (an
inner loop gave up) is not retried: its attempts were spent already, and repeating
the outer attempt would multiply them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from dashi.errors import NotFoundError, WriteConflictError, WriteRetriesExhaustedError

__all__ = ["WRITE_ATTEMPTS", "modify", "retry_conflicts"]

T = TypeVar("T")

#: Attempts of one optimistic write before giving up: the legacy dispatcher's
#: ``_WRITE_CONFLICT_RETRIES``, which its RPC operations (and ours) always used.
WRITE_ATTEMPTS: Final = 5


def retry_conflicts(record: str, attempt: Callable[[], T], attempts: int = WRITE_ATTEMPTS) -> T:
    """Call ``attempt`` again while it fails with ``WriteConflictError``.

    Each attempt must read what it decides on afresh (or have refreshed it before
    raising), and write with the version it read.

    Args:
        record: names the record written, for the error (e.g. ``"process 'p1'"``).
        attempt: one read-decide-write; raises ``WriteConflictError`` when its write
            lost a race.
        attempts: the most attempts made.

    Raises:
        WriteRetriesExhaustedError: every attempt lost its race, or an inner loop
            of the attempt gave up (passed on unchanged).
        Exception: any other error of an attempt, at once (not retried).

    Returns:
        What the first attempt that did not conflict returned.
    """
    for _ in range(attempts):
        try:
            return attempt()
        except WriteRetriesExhaustedError:
            raise
        except WriteConflictError:
            continue
    raise WriteRetriesExhaustedError(
        f"{record} kept changing: {attempts} write attempts lost a race",
        record=record,
        attempts=attempts,
    )


def modify(
    get: Callable[[], T | None],
    write: Callable[[T], None],
    change: Callable[[T], bool],
    *,
    record: str,
) -> T | None:
    """Apply ``change`` to the stored record until the write succeeds.

    Args:
        get: reads the record (``None`` when it does not exist).
        write: the store's versioned ``update_*`` for it.
        change: changes the record in place; returns False when nothing needs
            writing (the record already is as wanted).
        record: names the record, for the error (e.g. ``"node 'n1'"``).

    Raises:
        WriteRetriesExhaustedError: every one of :data:`WRITE_ATTEMPTS` writes lost
            its race (nothing was written).

    Returns:
        The record as written, or ``None`` when it is missing (or disappeared
        during the write) or ``change`` found nothing to do.
    """

    def attempt() -> T | None:
        current = get()
        if current is None or not change(current):
            return None
        try:
            write(current)
        except NotFoundError:
            return None
        return current

    return retry_conflicts(record, attempt)
