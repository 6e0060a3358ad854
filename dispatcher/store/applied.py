"""Applied requests: a state-changing RPC's id, kept with its effect in one transaction.

A broker delivers a request again when the dispatcher that handled it died before
acknowledging it (after committing, even after replying). Applying it again is
wrong for the operations that are not idempotent (a ``schedule_process`` of a
terminated process starts a new round). So the effect of such a request and the
record of its id (with the result it answered) are written together: the caller
that applies a request sets :data:`pending_request` while it runs, and the first
committed write of the matching kind (``"process"`` or ``"definition"``) made in
that context also stores the :class:`AppliedRequest`, atomically, then marks the
pending request recorded. Later writes in the same context record nothing.

An id stored already makes that write fail with ``WriteConflictError`` and
changes nothing (two copies of one request applied at once: one wins).
Records are kept for a bounded time and number (``prune_applied_requests``).
See :mod:`dispatcher.replay` for the caller.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AppliedRequest", "PendingRequest", "claim", "mark_recorded", "pending_request"]


@dataclass(frozen=True)
class AppliedRequest:
    """A request whose effect is committed.

    Attributes:
        request_id: the request's id (AMQP ``message_id``/``correlation_id``, or a
            legacy call's reply queue name).
        op: the operation name.
        digest: a digest of the request (sender, op and arguments): an id reused for
            another request is not taken for a redelivery.
        result: the result answered (JSON).
        applied_at: when the effect was committed (epoch seconds).
    """

    request_id: str
    op: str
    digest: str
    result: Any
    applied_at: float


@dataclass
class PendingRequest:
    """A request being applied; the store records it with its first matching write.

    Attributes:
        request_id, op, digest, applied_at: as in :class:`AppliedRequest`.
        kind: the kind of write that is the request's effect (``"process"``,
            ``"definition"``).
        result_of: the result the request answers, from the record written (the
            record is ``None`` for a removal).
        recorded: set by the store once the record is committed.
    """

    request_id: str
    op: str
    digest: str
    applied_at: float
    kind: str
    result_of: Callable[[Any], Any]
    recorded: bool = False


#: The request the current thread is applying (set by :class:`dispatcher.replay.RequestReplay`).
pending_request: contextvars.ContextVar[PendingRequest | None] = contextvars.ContextVar(
    "pending_request", default=None
)


def claim(kind: str, record: Any) -> AppliedRequest | None:
    """The record to store with a write of ``kind`` of ``record``, if one is pending.

    The store calls this before the write and, once the write and the record are
    committed, sets the pending request's ``recorded``.
    """
    pending = pending_request.get()
    if pending is None or pending.recorded or pending.kind != kind:
        return None
    return AppliedRequest(
        request_id=pending.request_id,
        op=pending.op,
        digest=pending.digest,
        result=pending.result_of(record),
        applied_at=pending.applied_at,
    )


def mark_recorded() -> None:
    """Note that the pending request's record is committed (called by the store)."""
    pending = pending_request.get()
    if pending is not None:
        pending.recorded = True
