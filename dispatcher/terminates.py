"""Terminate requests to eeagents, and their retry schedule.

``terminate_process`` stores ``600-TERMINATING`` and fires
``terminate_process(u_pid, round)`` to the process's eeagent. Like a launch, that
message is fire-and-forget, and more can go wrong with it: it can be lost, and it
can reach the agent *before* the launch it follows (the matchmaker stores
``350-ASSIGNED`` before it fires the launch, so a terminate served in between
overtakes it). Our agent remembers such a terminate and refuses the launch; a
legacy agent drops it and runs the process. The heartbeat handler answers a
pending or running report of a TERMINATING process with a terminate; and the
leader re-sends the terminate of every process that stays ``600-TERMINATING`` in
the same round, every ``dispatch_retry_seconds``, which also reaches an agent that
reports nothing about the process.

The terminate is sent by whichever dispatcher instance served the RPC, and its
store write is not an event the leader hears, so :class:`TerminateRetries` finds
the TERMINATING processes by listing them every half period. Each
``(upid, round)`` is due half a period after the listing that first found it, then
every period: the first re-send comes between half a period and a period after
the terminate. A new leadership term starts with an empty schedule and lists at
once.
"""

from __future__ import annotations

import logging
from typing import Final

from dashi.errors import TransportError
from dispatcher.launcher import DispatchRetries
from dispatcher.messaging import Messenger
from dispatcher.store.base import Store
from pdcommon.states import ProcessState

__all__ = ["TERMINATE_OP", "TerminateRetries", "fire_terminate"]

log = logging.getLogger(__name__)

#: The eeagent operation that stops a process.
TERMINATE_OP: Final = "terminate_process"


def fire_terminate(messenger: Messenger, resource_id: str, upid: str, round_: int) -> bool:
    """Send ``terminate_process(upid, round_)`` to the eeagent ``resource_id``.

    A transport failure is logged, not raised: the retry schedule re-sends it.

    Returns:
        Whether the message was handed to the broker.
    """
    try:
        messenger.fire(resource_id, TERMINATE_OP, u_pid=upid, round=round_)
    except TransportError as exc:
        log.warning(
            "could not send the terminate of %s round %d to %s (will retry): %s",
            upid,
            round_,
            resource_id,
            exc,
        )
        return False
    return True


class TerminateRetries:
    """Re-sends the terminates of processes that stay ``600-TERMINATING``.

    Driven by the matchmaker's loop (a leader singleton): :meth:`run` at each step,
    :meth:`next_due` for its sleep, :meth:`clear` at the start of a term.

    Args:
        store: where the processes live.
        messenger: fires the terminates.
        period: ``dispatch_retry_seconds``; ``None`` or ``0`` disables retries.
    """

    def __init__(self, store: Store, messenger: Messenger, period: float | None) -> None:
        self.store = store
        self.messenger = messenger
        self.schedule = DispatchRetries(period)
        self._next_look: float | None = None

    @property
    def enabled(self) -> bool:
        return self.schedule.enabled

    def clear(self) -> None:
        """Forget the schedule; the next :meth:`run` lists the TERMINATING processes."""
        self.schedule.clear()
        self._next_look = None

    def next_due(self) -> float | None:
        """Epoch seconds of the next listing or re-send (``None``: disabled)."""
        if not self.enabled:
            return None
        dues = [due for due in (self._next_look, self.schedule.next_due()) if due is not None]
        return min(dues) if dues else None

    def run(self, now: float) -> int:
        """List the TERMINATING processes if a look is due, then re-send the due terminates.

        Returns:
            How many terminates were re-sent.
        """
        if not self.enabled:
            return 0
        if self._next_look is None or now >= self._next_look:
            self._look(now)
        sent = 0
        for upid, round_ in self.schedule.pop_due(now):
            process = self.store.get_process(upid)
            if (
                process is None
                or process.round != round_
                or process.state != ProcessState.TERMINATING
                or not process.assigned
            ):
                continue
            log.info(
                "%s round %d is still terminating: re-sending its terminate to %s",
                upid,
                round_,
                process.assigned,
            )
            fire_terminate(self.messenger, process.assigned, upid, round_)
            self.schedule.track((upid, round_), now)
            sent += 1
        return sent

    def _look(self, now: float) -> None:
        assert self.schedule.period is not None
        half = self.schedule.period / 2
        self._next_look = now + half
        terminating = {
            (process.upid, process.round)
            for process in self.store.list_processes([ProcessState.TERMINATING])
            if process.assigned
        }
        for key in self.schedule.schedule():
            if key not in terminating:
                self.schedule.forget(key)
        for key in terminating:
            if key not in self.schedule:
                self.schedule.track_at(key, now + half)
