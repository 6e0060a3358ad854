"""What one process in an eeagent's heartbeat means: a pure decision.

:func:`decide` reads the stored process (or ``None``), the agent that sent the
heartbeat and the reported ``(round, state)``, and returns a
:class:`HeartbeatDecision`: the command to send back, the write to make, and
whether the agent's slot stays held. It reads no store and no clock, so the whole
table in :mod:`dispatcher.heartbeats` is tested case by case
(``tests/health/test_heartbeat_decision.py``); the handler applies the decision
through the state machine (:mod:`dispatcher.transitions`).

:func:`ending` is the part of the table that decides how an ended round is
recorded; the handler asks it again when a write conflict brings a fresher record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from dispatcher.model import Process
from dispatcher.transitions import process_should_restart
from pdcommon.states import ProcessState

__all__ = ["Action", "HeartbeatDecision", "Reason", "decide", "ending"]

#: States the agent runs the process in (an ending is recorded from these).
_IN_PLAY: Final = frozenset({ProcessState.ASSIGNED, ProcessState.PENDING, ProcessState.RUNNING})
#: Process states a PENDING/RUNNING report moves forward.
_STARTED: Final = frozenset({ProcessState.ASSIGNED, ProcessState.PENDING})
_ALIVE_REPORTS: Final = frozenset({ProcessState.PENDING, ProcessState.RUNNING})
_END_REPORTS: Final = frozenset({ProcessState.TERMINATED, ProcessState.FAILED, ProcessState.EXITED})

TERMINATE: Final = "terminate_process"
CLEANUP: Final = "cleanup"


class Action(enum.Enum):
    """The process write a report calls for."""

    #: Nothing to write.
    NONE = "none"
    #: Move forward to the reported state (PENDING or RUNNING); drop queue entries.
    ADVANCE = "advance"
    #: ``700-TERMINATED``, unassigned (the process was TERMINATING).
    TERMINATED = "terminated"
    #: Next round, re-queued (the restart mode says so for the reported exit).
    NEXT_ROUND = "next_round"
    #: The reported end state, unassigned.
    ENDED = "ended"


class Reason(enum.Enum):
    """Which row of the table applied (for logs and tests)."""

    UNKNOWN = "unknown process or round never issued"
    RESTARTING = "older round still reported during its restart"
    STALE_ROUND = "older round"
    ENDED_REPEAT = "terminal state reported again"
    OTHER_AGENT = "current round on another agent"
    SAME_STATE = "state unchanged"
    END = "round ended"
    TERMINATING = "alive while terminating or ended"
    STARTED = "pending or running"
    IGNORED = "nothing to do"


@dataclass(frozen=True, slots=True)
class HeartbeatDecision:
    """The answer to one reported process.

    Attributes:
        reason: the table row that applied.
        order: the command to send the agent for the reported ``(upid, round)``
            (``terminate_process`` or ``cleanup``), or None.
        action: the process write to make.
        known: the report is about the process's current or an older round of a
            stored process (the handler keeps its record for the slot rebuild).
        holds_slot: the agent keeps a slot for the reported round while the
            process, as stored after the write, is still in that round and below
            ``700-TERMINATED``.
    """

    reason: Reason
    order: str | None = None
    action: Action = Action.NONE
    known: bool = True
    holds_slot: bool = False


def ending(process: Process, reported: str) -> Action:
    """How to record that the agent says ``process``'s current round ended.

    Args:
        process: the stored record.
        reported: ``700-TERMINATED``, ``850-FAILED`` or ``800-EXITED``.

    Returns:
        ``TERMINATED`` for a TERMINATING process; for ASSIGNED, PENDING or RUNNING
        ``NEXT_ROUND`` when the restart mode restarts on ``reported``, else
        ``ENDED``; ``NONE`` for anything else (already ended or never started).
    """
    if process.state == ProcessState.TERMINATING:
        return Action.TERMINATED
    if process.state in _IN_PLAY:
        return Action.NEXT_ROUND if process_should_restart(process, reported) else Action.ENDED
    return Action.NONE


def decide(process: Process | None, resource_id: str, round_: int, state: str) -> HeartbeatDecision:
    """What the report ``(round_, state)`` from agent ``resource_id`` means.

    The rows, in order (see the table in :mod:`dispatcher.heartbeats`); *alive*
    means ``state`` is below ``700-TERMINATED`` and *answer* is
    ``terminate_process`` if alive, else ``cleanup``.

    Args:
        process: the stored process, or None when the upid is unknown.
        resource_id: the agent that sent the heartbeat.
        round_: the reported round.
        state: the reported state.

    Returns:
        The decision.
    """
    alive = state < ProcessState.TERMINATED
    answer = TERMINATE if alive else CLEANUP
    if process is None or round_ > process.round:
        return HeartbeatDecision(Reason.UNKNOWN, answer, known=False)
    if round_ < process.round:
        if alive and process.state == ProcessState.PENDING and process.assigned == resource_id:
            return HeartbeatDecision(Reason.RESTARTING)
        return HeartbeatDecision(Reason.STALE_ROUND, answer)
    if state == process.state and not alive:
        return HeartbeatDecision(Reason.ENDED_REPEAT, CLEANUP)
    if process.assigned != resource_id:
        return HeartbeatDecision(Reason.OTHER_AGENT, answer)
    if state == process.state:
        return HeartbeatDecision(Reason.SAME_STATE, holds_slot=True)
    if state in _END_REPORTS:
        return HeartbeatDecision(Reason.END, CLEANUP, ending(process, state))
    if state in _ALIVE_REPORTS and process.state >= ProcessState.TERMINATING:
        return HeartbeatDecision(Reason.TERMINATING, TERMINATE, holds_slot=True)
    if state in _ALIVE_REPORTS and process.state in _STARTED:
        return HeartbeatDecision(Reason.STARTED, action=Action.ADVANCE, holds_slot=True)
    return HeartbeatDecision(Reason.IGNORED, holds_slot=True)
