"""A request delivered again is answered with its first result, not applied again.

The broker redelivers a request whose delivery was not acknowledged: when the
dispatcher handling it died after committing its effect (even after replying), or
when a client sent it again after losing its connection. For the state-changing
operations in :data:`REPLAYED_OPERATIONS` a second application is wrong (a
``schedule_process`` of a process terminated meanwhile would start a new round).

:class:`RequestReplay` wraps such an operation's handler (the RPC service calls it
with the request's id, see :mod:`dashi.service`):

* if the store holds an :class:`~dispatcher.store.applied.AppliedRequest` with this
  id, for the same operation and arguments, its recorded result is the
  answer and nothing is applied;
* otherwise the handler runs with the request pending, and the store records the id
  and the result with the request's effect, in the same transaction (see
  :mod:`dispatcher.store.applied`). A request that writes nothing (an idempotent
  repeat, an error) is not recorded: applying it again is harmless;
* a request whose id is recorded for another request is applied, unrecorded.

Records are pruned at most once per :data:`PRUNE_INTERVAL`: those older than
``retention`` seconds, and all but the newest ``max_records``.

Request ids: the AMQP ``message_id`` or ``correlation_id`` (our client sets a fresh
correlation id per call and keeps it when it sends a call again), else a legacy
dashi call's ``reply-to`` queue name (a fresh uuid per call). A fire carrying none
of them is applied as it comes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from dashi.operations import operations_of
from dispatcher.core import ProcessDispatcherCore
from dispatcher.store.applied import PendingRequest, pending_request
from dispatcher.store.base import Store

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_RETENTION",
    "PRUNE_INTERVAL",
    "REPLAYED_OPERATIONS",
    "RequestReplay",
]

log = logging.getLogger(__name__)

#: Operations whose first result answers a redelivery, with the kind of record
#: their effect writes.
#: Derived from the request models' ``replay`` flag (:mod:`dispatcher.requests`).
REPLAYED_OPERATIONS: Final = {
    op.name: op.model.replay
    for op in operations_of(ProcessDispatcherCore)
    if op.model.replay is not None
}
#: Seconds an applied request is remembered: a redelivery comes within seconds of a
#: crash, or when the dispatcher restarts (an unused service queue expires in 60 s).
DEFAULT_RETENTION: Final = 3600.0
#: Most applied requests remembered (the oldest go first).
DEFAULT_MAX_RECORDS: Final = 100_000
#: Seconds between two prunings.
PRUNE_INTERVAL: Final = 60.0


def _summary(record: Any) -> Any:
    """A process operation's result: the process dict of the record written."""
    return None if record is None else record.summary()


def _nothing(record: Any) -> None:
    """A definition operation's result."""
    return None


class RequestReplay:
    """Answers a redelivered state-changing request with its first result.

    Args:
        store: where applied requests are recorded (with the requests' effects).
        clock: returns the current time in epoch seconds.
        retention: seconds an applied request is remembered.
        max_records: most applied requests remembered.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        retention: float = DEFAULT_RETENTION,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.max_records = max_records
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def __call__(
        self,
        request_id: str,
        op: str,
        args: Mapping[str, Any],
        call: Callable[[], Any],
    ) -> Any:
        """Run ``call`` (the handler) unless the request was applied already.

        Args:
            request_id: the request's id.
            op: the operation (one of :data:`REPLAYED_OPERATIONS`).
            args: its arguments as received (``sender`` included when the handler
                takes it).
            call: applies the request and returns its result.

        Returns:
            The recorded result of the request's first application, or ``call()``.
        """
        kind = REPLAYED_OPERATIONS.get(op)
        if kind is None:
            return call()
        digest = _digest(op, args)
        applied = self.store.get_applied_request(request_id)
        if applied is not None:
            if applied.op == op and applied.digest == digest:
                log.info(
                    "request %s (%s) was applied already: answering with its first result",
                    request_id,
                    op,
                )
                return applied.result
            # Another request with the same id: not a redelivery, applied as it comes.
            log.warning("request id %s reused by another %s request", request_id, op)
            return call()
        pending = PendingRequest(
            request_id=request_id,
            op=op,
            digest=digest,
            applied_at=self.clock(),
            kind=kind,
            result_of=_summary if kind == "process" else _nothing,
        )
        token = pending_request.set(pending)
        try:
            result = call()
        finally:
            pending_request.reset(token)
        if pending.recorded:
            self._prune_now_and_then(pending.applied_at)
        return result

    def _prune_now_and_then(self, now: float) -> None:
        with self._lock:
            if now < self._next_prune:
                return
            self._next_prune = now + PRUNE_INTERVAL
        removed = self.store.prune_applied_requests(now - self.retention, self.max_records)
        if removed:
            log.debug("forgot %d applied requests", removed)


def _digest(op: str, args: Mapping[str, Any]) -> str:
    """A digest of the operation and its arguments (key order does not matter)."""
    try:
        text = orjson.dumps([op, args], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # a value orjson refuses (a huge integer): its repr is stable too
        text = repr((op, sorted(args.items(), key=lambda item: str(item[0])))).encode()
    return hashlib.sha256(text).hexdigest()
