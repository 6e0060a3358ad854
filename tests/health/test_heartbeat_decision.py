"""The heartbeat decision table (decisions 4 and 7 included), row by row.

:func:`dispatcher.heartbeat_decision.decide` is pure: each case is the stored
process (or none), the reporting agent and the reported ``(round, state)``, and
the expected decision. The handler's application of these decisions against a
store is covered by ``test_heartbeat_states.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dispatcher.heartbeat_decision import (
    Action,
    HeartbeatDecision,
    Reason,
    decide,
    ending,
)
from dispatcher.model import Process
from pdcommon.states import ProcessState, RestartMode

S = ProcessState
HERE = "eeagent_1"
ELSEWHERE = "eeagent_2"
TERMINATE = "terminate_process"
CLEANUP = "cleanup"


@dataclass(frozen=True)
class Stored:
    """The stored fields the decision reads."""

    state: str
    round: int = 1
    assigned: str | None = HERE
    restart_mode: str | None = None

    def process(self) -> Process:
        return Process(
            "p1",
            {},
            state=self.state,
            round=self.round,
            assigned=self.assigned,
            restart_mode=self.restart_mode,
        )


@dataclass(frozen=True)
class Case:
    """One row: the stored process, the report from agent HERE, the expected decision."""

    name: str
    stored: Stored | None
    round_: int
    state: str
    expected: HeartbeatDecision


def row(
    stored: Stored | None,
    round_: int,
    state: str,
    reason: Reason,
    order: str | None = None,
    action: Action = Action.NONE,
    *,
    known: bool = True,
    holds_slot: bool = False,
    name: str,
) -> Case:
    expected = HeartbeatDecision(reason, order, action, known, holds_slot)
    return Case(name, stored, round_, state, expected)


# (stored process, reported round, reported state, expected decision)
TABLE = [
    # -- unknown process, or a round never issued (decision 7) -----------------------------
    row(None, 0, S.RUNNING, Reason.UNKNOWN, TERMINATE, known=False, name="unknown-alive"),
    row(None, 0, S.PENDING, Reason.UNKNOWN, TERMINATE, known=False, name="unknown-pending"),
    row(None, 3, S.EXITED, Reason.UNKNOWN, CLEANUP, known=False, name="unknown-ended"),
    row(None, 0, S.TERMINATING, Reason.UNKNOWN, TERMINATE, known=False, name="unknown-terminating"),
    row(
        Stored(S.RUNNING),
        2,
        S.RUNNING,
        Reason.UNKNOWN,
        TERMINATE,
        known=False,
        name="future-round-alive",
    ),
    row(
        Stored(S.RUNNING),
        2,
        S.FAILED,
        Reason.UNKNOWN,
        CLEANUP,
        known=False,
        name="future-round-ended",
    ),
    # -- stale (older) round ---------------------------------------------------------------
    row(Stored(S.RUNNING), 0, S.RUNNING, Reason.STALE_ROUND, TERMINATE, name="stale-alive"),
    row(Stored(S.RUNNING), 0, S.TERMINATED, Reason.STALE_ROUND, CLEANUP, name="stale-ended"),
    row(
        Stored(S.DIED_REQUESTED, assigned=None),
        0,
        S.RUNNING,
        Reason.STALE_ROUND,
        TERMINATE,
        name="stale-after-next-round",
    ),
    # restart in flight (decision 4): the new round is PENDING on this same agent
    row(Stored(S.PENDING), 0, S.RUNNING, Reason.RESTARTING, name="restart-in-flight"),
    row(Stored(S.PENDING), 0, S.PENDING, Reason.RESTARTING, name="restart-in-flight-pending"),
    row(
        Stored(S.PENDING, assigned=ELSEWHERE),
        0,
        S.RUNNING,
        Reason.STALE_ROUND,
        TERMINATE,
        name="restart-on-another-agent",
    ),
    row(
        Stored(S.PENDING),
        0,
        S.EXITED,
        Reason.STALE_ROUND,
        CLEANUP,
        name="restart-old-round-ended",
    ),
    # -- terminal state reported again -----------------------------------------------------
    row(
        Stored(S.TERMINATED, assigned=None),
        1,
        S.TERMINATED,
        Reason.ENDED_REPEAT,
        CLEANUP,
        name="terminated-repeat",
    ),
    row(
        Stored(S.EXITED, assigned=None),
        1,
        S.EXITED,
        Reason.ENDED_REPEAT,
        CLEANUP,
        name="exited-repeat",
    ),
    row(Stored(S.FAILED), 1, S.FAILED, Reason.ENDED_REPEAT, CLEANUP, name="failed-repeat-here"),
    # -- current round, another agent (or none) --------------------------------------------
    row(
        Stored(S.RUNNING, assigned=ELSEWHERE),
        1,
        S.RUNNING,
        Reason.OTHER_AGENT,
        TERMINATE,
        name="other-agent-alive",
    ),
    row(
        Stored(S.RUNNING, assigned=ELSEWHERE),
        1,
        S.EXITED,
        Reason.OTHER_AGENT,
        CLEANUP,
        name="other-agent-ended",
    ),
    row(
        Stored(S.FAILED, assigned=None),
        1,
        S.RUNNING,
        Reason.OTHER_AGENT,
        TERMINATE,
        name="evacuated-still-running",
    ),
    row(
        Stored(S.TERMINATED, assigned=None),
        1,
        S.EXITED,
        Reason.OTHER_AGENT,
        CLEANUP,
        name="terminated-reported-exited",
    ),
    # -- same state --------------------------------------------------------------------------
    row(Stored(S.RUNNING), 1, S.RUNNING, Reason.SAME_STATE, holds_slot=True, name="running-again"),
    row(Stored(S.PENDING), 1, S.PENDING, Reason.SAME_STATE, holds_slot=True, name="pending-again"),
    row(
        Stored(S.TERMINATING),
        1,
        S.TERMINATING,
        Reason.SAME_STATE,
        holds_slot=True,
        name="terminating-again",
    ),
    # -- the round ended ---------------------------------------------------------------------
    row(
        Stored(S.TERMINATING),
        1,
        S.TERMINATED,
        Reason.END,
        CLEANUP,
        Action.TERMINATED,
        name="terminating-terminated",
    ),
    row(
        Stored(S.TERMINATING),
        1,
        S.EXITED,
        Reason.END,
        CLEANUP,
        Action.TERMINATED,
        name="terminating-exited",
    ),
    row(
        Stored(S.TERMINATING, restart_mode=RestartMode.ALWAYS),
        1,
        S.FAILED,
        Reason.END,
        CLEANUP,
        Action.TERMINATED,
        name="terminating-failed-always",
    ),
    # restart on failure, per restart mode (exit state = the report)
    row(
        Stored(S.RUNNING),
        1,
        S.FAILED,
        Reason.END,
        CLEANUP,
        Action.NEXT_ROUND,
        name="default-mode-failed-restarts",
    ),
    row(
        Stored(S.RUNNING),
        1,
        S.EXITED,
        Reason.END,
        CLEANUP,
        Action.ENDED,
        name="default-mode-exited-ends",
    ),
    row(
        Stored(S.RUNNING, restart_mode=RestartMode.ABNORMAL),
        1,
        S.TERMINATED,
        Reason.END,
        CLEANUP,
        Action.NEXT_ROUND,
        name="abnormal-terminated-restarts",
    ),
    row(
        Stored(S.PENDING, restart_mode=RestartMode.ABNORMAL),
        1,
        S.EXITED,
        Reason.END,
        CLEANUP,
        Action.ENDED,
        name="abnormal-exited-ends",
    ),
    row(
        Stored(S.ASSIGNED, restart_mode=RestartMode.ALWAYS),
        1,
        S.EXITED,
        Reason.END,
        CLEANUP,
        Action.NEXT_ROUND,
        name="always-exited-restarts",
    ),
    row(
        Stored(S.RUNNING, restart_mode=RestartMode.NEVER),
        1,
        S.FAILED,
        Reason.END,
        CLEANUP,
        Action.ENDED,
        name="never-failed-ends",
    ),
    # an end report for a process not started here (legacy: only a cleanup)
    row(Stored(S.WAITING), 1, S.EXITED, Reason.END, CLEANUP, name="waiting-exited"),
    row(Stored(S.REQUESTED), 1, S.FAILED, Reason.END, CLEANUP, name="requested-failed"),
    # -- alive while TERMINATING or ended ----------------------------------------------------
    row(
        Stored(S.TERMINATING),
        1,
        S.RUNNING,
        Reason.TERMINATING,
        TERMINATE,
        holds_slot=True,
        name="terminating-running",
    ),
    row(
        Stored(S.TERMINATING),
        1,
        S.PENDING,
        Reason.TERMINATING,
        TERMINATE,
        holds_slot=True,
        name="terminating-pending",
    ),
    row(
        Stored(S.FAILED),
        1,
        S.RUNNING,
        Reason.TERMINATING,
        TERMINATE,
        holds_slot=True,
        name="failed-here-running",
    ),
    # -- started: forward to PENDING / RUNNING ----------------------------------------------
    row(
        Stored(S.ASSIGNED),
        1,
        S.PENDING,
        Reason.STARTED,
        action=Action.ADVANCE,
        holds_slot=True,
        name="assigned-pending",
    ),
    row(
        Stored(S.ASSIGNED),
        1,
        S.RUNNING,
        Reason.STARTED,
        action=Action.ADVANCE,
        holds_slot=True,
        name="assigned-running",
    ),
    row(
        Stored(S.PENDING),
        1,
        S.RUNNING,
        Reason.STARTED,
        action=Action.ADVANCE,
        holds_slot=True,
        name="pending-running",
    ),
    # -- anything else is ignored (the slot stays while the process is in play) ------------
    row(Stored(S.RUNNING), 1, S.PENDING, Reason.IGNORED, holds_slot=True, name="running-pending"),
    row(
        Stored(S.RUNNING),
        1,
        S.TERMINATING,
        Reason.IGNORED,
        holds_slot=True,
        name="running-terminating-report",
    ),
    row(Stored(S.RUNNING), 1, S.REJECTED, Reason.IGNORED, holds_slot=True, name="rejected-report"),
    row(
        Stored(S.RUNNING), 1, "999-INVALID", Reason.IGNORED, holds_slot=True, name="invalid-report"
    ),
    row(Stored(S.WAITING), 1, S.RUNNING, Reason.IGNORED, holds_slot=True, name="waiting-running"),
]


@pytest.mark.parametrize("case", TABLE, ids=lambda case: case.name)
def test_each_reported_process_gets_the_decision_of_its_table_row(case: Case) -> None:
    # Given the stored process (or none), when agent HERE reports (round, state),
    # then the decision is the table's
    process = None if case.stored is None else case.stored.process()
    assert decide(process, HERE, case.round_, case.state) == case.expected


def test_the_table_covers_every_reason_and_every_action() -> None:
    # Given the table, then each row of the decision function is exercised
    decisions = [case.expected for case in TABLE]
    assert {d.reason for d in decisions} == set(Reason)
    assert {d.action for d in decisions} == set(Action)
    assert len({case.name for case in TABLE}) == len(TABLE)


def test_deciding_reads_the_process_and_changes_nothing() -> None:
    # Given a stored record, when a decision is taken, then the record is unchanged
    process = Stored(S.RUNNING).process()
    before = process.copy()
    decide(process, HERE, 1, S.FAILED)
    assert process == before


@pytest.mark.parametrize(
    ("state", "restart_mode", "reported", "expected"),
    [
        (S.TERMINATING, None, S.EXITED, Action.TERMINATED),
        (S.RUNNING, None, S.FAILED, Action.NEXT_ROUND),
        (S.RUNNING, None, S.EXITED, Action.ENDED),
        (S.RUNNING, RestartMode.NEVER, S.TERMINATED, Action.ENDED),
        (S.PENDING, RestartMode.ALWAYS, S.EXITED, Action.NEXT_ROUND),
        (S.DIED_REQUESTED, None, S.FAILED, Action.NONE),
        (S.FAILED, None, S.FAILED, Action.NONE),
    ],
)
def test_an_ended_round_is_recorded_by_state_and_restart_mode(
    state: str, restart_mode: str | None, reported: str, expected: Action
) -> None:
    # Given a process re-read after a write conflict, then its ending is re-decided
    assert ending(Stored(state, restart_mode=restart_mode).process(), reported) is expected
