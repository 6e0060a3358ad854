"""Process records the matchmaker cannot place: failed, their slot freed, the reason kept.

One bad record must not stop placement for everyone. A database written before
requests had depth limits (:mod:`pdcommon.limits`) may hold a process whose
configuration nests hundreds of levels deep, and any record may make planning or
launching raise. :class:`SetAside` takes such a record out of the way:

* :meth:`SetAside.screen` checks the JSON fields of the waiting processes against
  the depth limit before a pass plans anything;
* :meth:`SetAside.fail` writes the process ``850-FAILED`` (its subscribers are
  told), frees the slot it held, and keeps ``{"round", "reason", "time"}`` in the
  store, where ``dump`` shows it under ``set_aside``; the reason is also logged.

A failure of the infrastructure (:data:`INFRASTRUCTURE_ERRORS`: the database or
the broker, or a record that kept changing under every write attempt) is not the
record's fault: it propagates, and the whole pass is retried. Should setting a record aside itself fail otherwise, its entry is
skipped (:meth:`SetAside.skips`) until :meth:`SetAside.clear` (a new term).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from dashi import jsontree
from dashi.errors import TransportError, WriteRetriesExhaustedError
from dispatcher.model import Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.modify import modify
from dispatcher.transitions import ProcessStateMachine
from pdcommon.errors import StoreError
from pdcommon.states import ProcessState

__all__ = ["INFRASTRUCTURE_ERRORS", "SetAside", "describe_error", "release_slot"]

log = logging.getLogger(__name__)

#: Failures of the infrastructure rather than of one record (a record contended by
#: other writers for every attempt is written by a later pass, not failed).
INFRASTRUCTURE_ERRORS: Final = (StoreError, TransportError, WriteRetriesExhaustedError)
#: The JSON fields of a process record checked against the depth limit.
_SCREENED_FIELDS: Final = ("definition", "configuration", "constraints", "subscribers")
#: Longest reason text kept for a set-aside process.
_MAX_REASON: Final = 500

_Key = tuple[str, int]


def describe_error(exc: BaseException) -> str:
    """A one-line account of ``exc`` for a set-aside record."""
    return f"{type(exc).__name__}: {exc}"


def release_slot(store: Store, resource_id: str, key: _Key) -> None:
    """Free the slot ``key`` (``(upid, round)``) holds on ``resource_id``, if it still does."""

    def release(resource: Resource) -> bool:
        if key not in resource.assigned:
            return False
        resource.assigned.remove(key)
        return True

    modify(
        lambda: store.get_resource(resource_id),
        store.update_resource,
        release,
        record=f"resource {resource_id!r}",
    )


class SetAside:
    """Fails the records a matchmaker cannot place (see the module docstring).

    Args:
        store: where processes, resources and set-aside records live.
        transitions: writes the ``850-FAILED`` state and tells subscribers.
        clock: returns the current time in epoch seconds.
        max_depth: records whose JSON nests deeper are screened out.
    """

    def __init__(
        self,
        store: Store,
        transitions: ProcessStateMachine,
        *,
        clock: Callable[[], float],
        max_depth: int,
    ) -> None:
        self.store = store
        self.transitions = transitions
        self.clock = clock
        self.max_depth = max_depth
        self._skipped: set[_Key] = set()

    def clear(self) -> None:
        """Forget the skipped entries (a new leadership term tries them again)."""
        self._skipped.clear()

    def skips(self, key: _Key) -> bool:
        """Whether ``key`` could not be set aside and is skipped this term."""
        return key in self._skipped

    def screen(self, processes: dict[str, Process], into: list[_Key]) -> None:
        """Set aside (and remove from ``processes``) records nested past the depth limit.

        Skipped entries are removed too. The keys set aside are appended to ``into``.
        """
        for upid in list(processes):
            process = processes[upid]
            if (upid, process.round) in self._skipped:
                del processes[upid]
                continue
            for name in _SCREENED_FIELDS:
                if jsontree.deeper_than(getattr(process, name), self.max_depth):
                    reason = f"{name} nested more than {self.max_depth} levels deep (the limit)"
                    self.fail(processes.pop(upid), reason, into)
                    break

    def fail(self, process: Process, reason: str, into: list[_Key]) -> None:
        """Fail ``process`` (``850-FAILED``, slot freed) and keep ``reason`` for ``dump``.

        Each step is tried whatever became of the one before; if one fails (other
        than by an infrastructure error, which propagates) the entry is skipped.

        Args:
            process: the record as last read.
            reason: why it is set aside (cut to 500 characters).
            into: receives ``(upid, round)``.
        """
        key = (process.upid, process.round)
        reason = reason[:_MAX_REASON]
        log.error("matchmaker: process %s round %d set aside: %s", *key, reason)
        into.append(key)
        record = {"round": process.round, "reason": reason, "time": self.clock()}
        steps: list[Callable[[], object]] = [
            lambda: self.transitions.process_change_state(
                process, ProcessState.FAILED, reason=f"set aside by the matchmaker: {reason}"
            ),
            lambda: self.store.record_set_aside(process.upid, record),
        ]
        if process.assigned:
            assigned = process.assigned
            steps.insert(1, lambda: release_slot(self.store, assigned, key))
        for step in steps:
            try:
                step()
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception:
                log.exception("matchmaker: could not fully set aside %s round %d", *key)
                self._skipped.add(key)
