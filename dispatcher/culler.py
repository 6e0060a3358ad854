"""The culler: processes that run longer than they may are terminated, not restarted.

A round may run ``max_runtime_seconds`` (the process's own limit) and at most
``processdispatcher.max_process_age`` (a limit for every process, like Hydroplane's
culler); the smaller applies. The process's own limit is fixed when it is
scheduled (:func:`scheduled_max_runtime`): the ``schedule_process`` argument, else
its definition's ``max_runtime_seconds`` default, else none. So a definition
default never lifts ``max_process_age``, and an argument may be longer or shorter
than the definition's default. Once
a RUNNING round is past its limit (counted from ``started_at``), it becomes
``600-TERMINATING`` with the reason ``max runtime exceeded: ran N s (limit S s)``
and its agent is told to terminate it; its end is then recorded
``700-TERMINATED`` with that reason, and a terminated process is never restarted.

A group may carry a time to live (``set_group_ttl(group, ttl_seconds)``): its
deadline, ``ttl_seconds`` after the call, is kept in the store
(:meth:`~dispatcher.store.base.Store.set_group_expiry`). At each look past a
group's deadline, every process of the group still in play is terminated as
``terminate_process`` terminates it (:meth:`ProcessStateMachine.terminate`), with
the reason ``group time to live exceeded`` (so it is not restarted); its agent is
told. The deadline stays until it is cleared or replaced (``set_group_ttl(group,
None)``), so a process scheduled into an expired group is terminated at the next
look too.

Driven by the matchmaker's loop (a leader singleton) like the terminate retries:
:meth:`Culler.run` at each step, :meth:`Culler.next_due` for its sleep. Each look
lists the RUNNING processes; looks are :data:`LOOK_INTERVAL` apart, or further
when a listing is slow (at most about 5 % of the leader's time goes to them), and
the next look is brought forward to the earliest deadline it saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.messaging import Messenger
from dispatcher.model import Process
from dispatcher.selectors import ProcessFilter
from dispatcher.store.base import Store
from dispatcher.terminates import fire_terminate
from dispatcher.transitions import ProcessStateMachine
from pdcommon.states import ProcessState

__all__ = [
    "GROUP_TTL_REASON",
    "LOOK_INTERVAL",
    "Culler",
    "runtime_limit",
    "scheduled_max_runtime",
]

log = logging.getLogger(__name__)

#: Seconds between looks at the running processes (at least).
LOOK_INTERVAL: Final = 2.0
#: The reason of a process terminated because its group's time to live ran out.
GROUP_TTL_REASON: Final = "group time to live exceeded"
#: The states a group deadline terminates: in play, and not terminating already (the
#: terminate retries re-send those).
_IN_PLAY: Final = tuple(
    s
    for s in ProcessState.ALL
    if s not in ProcessState.TERMINAL_STATES and s != ProcessState.TERMINATING
)
#: A look may take at most this share of the time between looks.
_LOOK_SHARE: Final = 0.05


def scheduled_max_runtime(requested: float | None, definition: Mapping[str, Any]) -> float | None:
    """The ``max_runtime_seconds`` a process is scheduled with.

    Args:
        requested: the ``schedule_process`` argument (``None``: not given).
        definition: the process's copy of its definition (``Definition.to_dict()``),
            whose ``max_runtime_seconds`` key, when present, is the default.

    Returns:
        ``requested`` if given, else the definition's default, else ``None``.
    """
    if requested is not None:
        return requested
    default = definition.get("max_runtime_seconds")
    if isinstance(default, bool) or not isinstance(default, int | float):
        return None
    return float(default)


def runtime_limit(process: Process, max_process_age: float | None) -> float | None:
    """The seconds ``process``'s round may run: the smaller of its own and the global limit."""
    limits = [x for x in (process.max_runtime_seconds, max_process_age) if x is not None]
    return min(limits) if limits else None


class Culler:
    """Terminates rounds that ran past their limit (see the module docstring).

    Args:
        store: where the processes live.
        messenger: fires the terminates.
        transitions: the state machine (writes ``600-TERMINATING``).
        max_process_age: the global limit in seconds, or ``None``.
        clock: returns the current time in epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        transitions: ProcessStateMachine,
        *,
        max_process_age: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.transitions = transitions
        self.max_process_age = max_process_age
        self.clock = clock
        self._next_look: float | None = None

    def clear(self) -> None:
        """Look at once on the next :meth:`run` (a new term)."""
        self._next_look = None

    def next_due(self) -> float | None:
        """Epoch seconds of the next look."""
        return self._next_look

    def run(self, now: float) -> int:
        """Terminate every RUNNING round past its limit, if a look is due.

        Returns:
            How many rounds were told to terminate.
        """
        if self._next_look is not None and now < self._next_look:
            return 0
        started = time.monotonic()
        running = self.store.list_processes([ProcessState.RUNNING])
        took = time.monotonic() - started
        next_look = now + max(LOOK_INTERVAL, took / _LOOK_SHARE)
        culled = 0
        for process in running:
            limit = runtime_limit(process, self.max_process_age)
            if limit is None or process.started_at is None:
                continue
            deadline = process.started_at + limit
            if deadline > now:
                next_look = min(next_look, max(deadline, now + 0.1))
                continue
            if self._cull(process, now - process.started_at, limit):
                culled += 1
        for group, expires_at in self.store.list_group_expiries().items():
            if expires_at > now:
                next_look = min(next_look, max(expires_at, now + 0.1))
                continue
            culled += self._expire_group(group)
        self._next_look = next_look
        return culled

    def _expire_group(self, group: str) -> int:
        """Terminate every process of ``group`` in play; how many were."""
        selected = ProcessFilter(states=_IN_PLAY, group=group)
        ended = 0
        for record in self.store.list_process_dicts(selected):
            process = self.store.get_process(record["upid"])
            if process is None or process.group != group:
                continue  # pragma: no cover - processes are never removed
            try:
                terminated = self.transitions.terminate(process, reason=GROUP_TTL_REASON)
            except (WriteConflictError, NotFoundError):
                continue  # it changed meanwhile: the next look decides again
            log.warning("process %s of group %s: %s", process.upid, group, GROUP_TTL_REASON)
            if terminated.assigned and terminated.state == ProcessState.TERMINATING:
                fire_terminate(
                    self.messenger, terminated.assigned, terminated.upid, terminated.round
                )
            ended += 1
        return ended

    def _cull(self, process: Process, ran: float, limit: float) -> bool:
        reason = f"max runtime exceeded: ran {ran:.0f} s (limit {limit:g} s)"
        try:
            ended = self.transitions.begin_terminating(process, reason=reason)
        except (WriteConflictError, NotFoundError):
            return False  # it changed meanwhile: the next look decides again
        log.warning("process %s round %d: %s: terminating it", process.upid, process.round, reason)
        if ended.assigned:
            fire_terminate(self.messenger, ended.assigned, ended.upid, ended.round)
        return True
