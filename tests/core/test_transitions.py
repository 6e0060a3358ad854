"""The shared state machine: guarded transitions, restart policy and queueing
decisions."""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import TransportError, WriteConflictError
from dispatcher.messaging import FiredMessage, RecordingMessenger
from dispatcher.model import Process
from dispatcher.store.memory import MemoryStore
from dispatcher.transitions import (
    Assignment,
    ProcessStateMachine,
    get_queueing_decision,
    process_should_restart,
)
from pdcommon.states import ProcessState
from tests.core.conftest import NOW, FakeClock, put_process

S = ProcessState
SUBSCRIBERS = [["sub", "process_state"]]
OMIT = {"process": {"omit_from_system_restart": True}}


@pytest.fixture
def transitions(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> ProcessStateMachine:
    return ProcessStateMachine(store, messenger, clock=clock)


# -- the restart-policy matrix -------------------------------------------------------------

# (restart_mode, configuration, exit_state, is_system_restart, should_restart)
RESTART_MATRIX: list[tuple[str | None, Any, str, bool, bool]] = []
for _system in (False, True):
    for _exit, _abnormal in (
        (S.TERMINATED, True),
        (S.TERMINATING, True),
        (S.FAILED, True),
        (S.EXITED, False),
    ):
        RESTART_MATRIX += [
            (None, {}, _exit, _system, _abnormal),
            ("ABNORMAL", {}, _exit, _system, _abnormal),
            ("NEVER", {}, _exit, _system, False),
            ("ALWAYS", {}, _exit, _system, True),
            ("ALWAYS", OMIT, _exit, _system, not _system),
            ("ABNORMAL", OMIT, _exit, _system, _abnormal and not _system),
            ("ALWAYS", {"process": ["a", "list"]}, _exit, _system, True),
            ("ALWAYS", None, _exit, _system, True),
            ("ALWAYS", {"process": {"omit_from_system_restart": False}}, _exit, _system, True),
            ("SOMETIMES", {}, _exit, _system, False),  # legacy: unknown mode never restarts
        ]


@pytest.mark.parametrize(
    ("restart_mode", "configuration", "exit_state", "is_system_restart", "expected"),
    RESTART_MATRIX,
)
def test_the_restart_policy_follows_mode_exit_state_and_system_restart(
    restart_mode: str | None,
    configuration: Any,
    exit_state: str,
    is_system_restart: bool,
    expected: bool,
) -> None:
    # Given a process with a restart mode and configuration
    process = Process("p", {}, restart_mode=restart_mode, configuration=configuration)
    # When it ends in exit_state, Then it restarts exactly as the matrix says
    assert process_should_restart(process, exit_state, is_system_restart) is expected


# -- queueing decisions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "never_started", "started"),
    [
        ("NEVER", S.REJECTED, S.REJECTED),
        ("ALWAYS", S.WAITING, S.WAITING),
        ("START_ONLY", S.WAITING, S.REJECTED),
        ("RESTART_ONLY", S.REJECTED, S.WAITING),
        (None, S.WAITING, S.WAITING),
        ("UNKNOWN", S.WAITING, S.WAITING),
    ],
)
def test_an_unplaceable_process_waits_or_is_rejected_by_queueing_mode_and_starts(
    mode: str | None, never_started: str, started: str
) -> None:
    # Given a process that cannot be placed
    # When it has never started, or has started, Then the queueing-mode table decides
    assert get_queueing_decision(mode, 0) == never_started
    assert get_queueing_decision(mode, 1) == started
    assert get_queueing_decision(mode, 7) == started


# -- process_change_state --------------------------------------------------------------------


def test_change_state_moves_forward_updates_fields_and_notifies(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a REQUESTED process with a subscriber
    process = put_process(store, "p1", S.REQUESTED, round_=2, subscribers=SUBSCRIBERS)
    # When it changes to ASSIGNED with an assignment
    written, changed = transitions.process_change_state(process, S.ASSIGNED, assigned="r1")
    # Then it is written, returned and notified with the process dict
    assert changed
    stored = store.get_process("p1")
    assert stored is not None
    assert (stored.state, stored.assigned, stored.round) == (S.ASSIGNED, "r1", 2)
    assert written.version == stored.version
    assert messenger.messages == [
        FiredMessage(
            "sub",
            "process_state",
            {"process": {"upid": "p1", "round": 2, "state": S.ASSIGNED, "assigned": "r1"}},
        )
    ]
    # And the caller's record is not modified
    assert process.state == S.REQUESTED


def test_change_state_to_running_counts_a_start_at_the_clock_time(
    transitions: ProcessStateMachine, store: MemoryStore
) -> None:
    # Given a PENDING process
    process = put_process(store, "p1", S.PENDING, assigned="r1")
    # When it changes to RUNNING
    written, _ = transitions.process_change_state(process, S.RUNNING)
    # Then starts is 1 and the start time is the clock's
    assert (written.starts, written.start_times) == (1, [NOW])


@pytest.mark.parametrize("current", [S.RUNNING, S.TERMINATING, S.TERMINATED])
@pytest.mark.parametrize("late", [S.PENDING, S.RUNNING])
def test_change_state_never_moves_backwards_or_sideways(
    transitions: ProcessStateMachine,
    store: MemoryStore,
    messenger: RecordingMessenger,
    current: str,
    late: str,
) -> None:
    # Given a process already at or past RUNNING
    process = put_process(store, "p1", current, assigned="r1", subscribers=SUBSCRIBERS)
    # When a late report changes it to an earlier or equal state
    result, changed = transitions.process_change_state(process, late)
    # Then nothing is written or notified
    assert not changed
    assert result.state == current
    assert store.get_process("p1").version == 1  # type: ignore[union-attr]
    assert messenger.messages == []


def test_change_state_rechecks_its_guard_after_a_write_conflict(
    store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a PENDING process read by a heartbeat, then moved on to TERMINATING by someone else
    process = put_process(store, "p1", S.PENDING, assigned="r1", subscribers=SUBSCRIBERS)
    moved = store.get_process("p1")
    assert moved is not None
    moved.state = S.TERMINATING
    store.update_process(moved)
    transitions = ProcessStateMachine(store, messenger)
    # When the heartbeat applies RUNNING with its stale copy
    result, changed = transitions.process_change_state(process, S.RUNNING)
    # Then the conflict is resolved by re-reading, and the guard stops the write
    assert not changed
    assert result.state == S.TERMINATING
    assert store.get_process("p1").state == S.TERMINATING  # type: ignore[union-attr]
    assert messenger.messages == []


def test_change_state_is_not_applied_once_the_round_has_changed(
    transitions: ProcessStateMachine, store: MemoryStore
) -> None:
    # Given a stale copy of a process (round 0) that is now DIED_REQUESTED in round 1
    process = put_process(store, "p1", S.RUNNING, assigned="r1")
    fresh = store.get_process("p1")
    assert fresh is not None
    fresh.state, fresh.round, fresh.assigned = S.DIED_REQUESTED, 1, None
    store.update_process(fresh)
    # When FAILED is applied from the stale round-0 copy
    result, changed = transitions.process_change_state(process, S.FAILED)
    # Then nothing is written: the round changed
    assert not changed
    assert (result.state, result.round) == (S.DIED_REQUESTED, 1)


def test_change_state_retries_a_conflict_that_leaves_its_guard_true(
    store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a REQUESTED process whose record is rewritten (same state) after it was read
    process = put_process(store, "p1", S.REQUESTED)
    other = store.get_process("p1")
    assert other is not None
    other.hostname = "elsewhere"
    store.update_process(other)
    transitions = ProcessStateMachine(store, messenger)
    # When WAITING is applied from the stale copy
    result, changed = transitions.process_change_state(process, S.WAITING)
    # Then it is written on the re-read record, keeping the other writer's change
    assert changed
    assert (result.state, result.hostname) == (S.WAITING, "elsewhere")


def test_change_state_refuses_unknown_or_protected_fields(
    transitions: ProcessStateMachine, store: MemoryStore
) -> None:
    # Given a process
    process = put_process(store, "p1", S.REQUESTED)
    # When a transition names an unknown or protected field, Then TypeError
    with pytest.raises(TypeError, match="unknown"):
        transitions.process_change_state(process, S.WAITING, colour="blue")
    with pytest.raises(TypeError, match="sets these itself"):
        transitions.process_change_state(process, S.WAITING, round=3)


# -- process_next_round --------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.REQUESTED, S.WAITING, S.ASSIGNED, S.PENDING, S.RUNNING])
def test_next_round_requeues_a_dead_process_unassigned_in_round_plus_one(
    transitions: ProcessStateMachine,
    store: MemoryStore,
    messenger: RecordingMessenger,
    state: str,
) -> None:
    # Given a process below TERMINATING in round 2, on r1
    process = put_process(store, "p1", state, round_=2, assigned="r1", subscribers=SUBSCRIBERS)
    # When it goes to the next round
    result, changed = transitions.process_next_round(process)
    # Then it is DIED_REQUESTED, round 3, unassigned, queued at the tail and notified
    assert changed
    assert (result.state, result.round, result.assigned) == (S.DIED_REQUESTED, 3, None)
    assert store.list_queued() == [("p1", 3)]
    assert [m.args["process"] for m in messenger.messages] == [
        {"upid": "p1", "round": 3, "state": S.DIED_REQUESTED, "assigned": None}
    ]


def test_next_round_at_system_boot_holds_the_process_back_without_queueing(
    transitions: ProcessStateMachine, store: MemoryStore
) -> None:
    # Given a RUNNING process
    process = put_process(store, "p1", S.RUNNING, assigned="r1")
    # When the doctor sends it to the next round as UNSCHEDULED_PENDING without enqueueing
    result, changed = transitions.process_next_round(
        process, newstate=S.UNSCHEDULED_PENDING, enqueue=False
    )
    # Then it is held back in round 1 and not queued
    assert changed
    assert (result.state, result.round) == (S.UNSCHEDULED_PENDING, 1)
    assert store.list_queued() == []


@pytest.mark.parametrize("state", [S.TERMINATING, S.TERMINATED, S.EXITED, S.FAILED, S.REJECTED])
def test_next_round_leaves_terminating_and_finished_processes_alone(
    transitions: ProcessStateMachine,
    store: MemoryStore,
    messenger: RecordingMessenger,
    state: str,
) -> None:
    # Given a process at or past TERMINATING
    process = put_process(store, "p1", state, subscribers=SUBSCRIBERS)
    # When it is sent to the next round, Then nothing happens
    result, changed = transitions.process_next_round(process)
    assert not changed
    assert (result.state, result.round) == (state, 0)
    assert store.list_queued() == []
    assert messenger.messages == []


def test_next_round_happens_once_when_two_actors_race(
    store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given two actors holding the same RUNNING round-0 record (heartbeat and evacuation)
    process = put_process(store, "p1", S.RUNNING, assigned="r1")
    transitions = ProcessStateMachine(store, messenger)
    # When both send it to the next round
    _, first_changed = transitions.process_next_round(process)
    second, second_changed = transitions.process_next_round(process)
    # Then only the first wins: round 1, queued once
    assert (first_changed, second_changed) == (True, False)
    assert second.round == 1
    assert store.list_queued() == [("p1", 1)]


# -- notifications -------------------------------------------------------------------------


def test_notifications_go_to_every_subscriber_pair(
    transitions: ProcessStateMachine, messenger: RecordingMessenger
) -> None:
    # Given a process with two subscribers (and one malformed entry)
    process = Process(
        "p1",
        {},
        state=S.RUNNING,
        round=4,
        assigned="r1",
        subscribers=[["a", "op_a"], ["b", "op_b"], ["malformed"]],
    )
    # When it is notified
    transitions.notify_process(process)
    # Then each well-formed pair gets the process dict
    payload = {"upid": "p1", "round": 4, "state": S.RUNNING, "assigned": "r1"}
    assert messenger.messages == [
        FiredMessage("a", "op_a", {"process": payload}),
        FiredMessage("b", "op_b", {"process": payload}),
    ]


@pytest.mark.parametrize("subscribers", [None, []])
def test_a_process_without_subscribers_notifies_nobody(
    transitions: ProcessStateMachine, messenger: RecordingMessenger, subscribers: Any
) -> None:
    # Given a process without subscribers, When it is notified, Then nothing is sent
    transitions.notify_process(Process("p1", {}, subscribers=subscribers))
    assert messenger.messages == []


def test_a_notification_that_cannot_be_delivered_does_not_fail_the_transition(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a broker that cannot be reached
    messenger.error = TransportError("down")
    process = put_process(store, "p1", S.PENDING, assigned="r1", subscribers=SUBSCRIBERS)
    # When the process changes state, Then the write stands and no error escapes
    _, changed = transitions.process_change_state(process, S.RUNNING)
    assert changed
    assert store.get_process("p1").state == S.RUNNING  # type: ignore[union-attr]


def test_dequeue_all_removes_every_duplicate_of_one_round(
    transitions: ProcessStateMachine, store: MemoryStore
) -> None:
    # Given duplicate queue entries of p1 round 1, and others
    for entry in [("p1", 1), ("p1", 0), ("p2", 1), ("p1", 1)]:
        store.enqueue(*entry)
    # When p1 round 1 is dequeued, Then only its entries go
    assert transitions.dequeue_all("p1", 1) == 2
    assert store.list_queued() == [("p1", 0), ("p2", 1)]


# -- new records and single attempts -----------------------------------------------------------


def test_a_new_process_is_unscheduled_or_requested_at_round_zero_and_unassigned() -> None:
    # Given/When new records are made for create_process and schedule_process
    created = ProcessStateMachine.new_process("p1", {"definition_id": "D"}, name="n")
    requested = ProcessStateMachine.new_process("p2", {}, requested=True, restart_mode="NEVER")
    # Then they start where the legacy state table starts them
    assert (created.state, created.round, created.assigned, created.name) == (
        S.UNSCHEDULED,
        0,
        None,
        "n",
    )
    assert (requested.state, requested.round, requested.restart_mode) == (S.REQUESTED, 0, "NEVER")


@pytest.mark.parametrize(
    "fields", [{"state": S.RUNNING}, {"round": 3}, {"assigned": "r1"}, {"colour": "blue"}]
)
def test_a_new_process_cannot_be_made_in_another_state_round_or_assignment(
    fields: dict[str, Any],
) -> None:
    # Given/When a new record names a field the state machine owns, Then it is refused
    with pytest.raises(TypeError):
        ProcessStateMachine.new_process("p1", {}, **fields)


@pytest.mark.parametrize(("ended", "round_"), [(S.UNSCHEDULED, 2), (S.EXITED, 3), (S.FAILED, 3)])
def test_rescheduling_requests_an_ended_process_in_the_round_the_legacy_table_says(
    transitions: ProcessStateMachine, store: MemoryStore, ended: str, round_: int
) -> None:
    # Given an ended process at round 2
    process = put_process(store, "p1", ended, round_=2)
    # When it is scheduled again with new fields
    written = transitions.reschedule(process, {"restart_mode": "ALWAYS"})
    # Then it is REQUESTED, in the same round only if it was never scheduled
    stored = store.get_process("p1")
    assert stored is not None
    assert (stored.state, stored.round, stored.restart_mode) == (S.REQUESTED, round_, "ALWAYS")
    assert written.version == stored.version
    assert process.state == ended  # the caller's record is not modified


def test_restarting_in_place_keeps_the_assignment_under_a_new_round(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a RUNNING process with a subscriber
    process = put_process(store, "p1", S.RUNNING, assigned="r1", subscribers=SUBSCRIBERS)
    # When it is restarted in place
    transitions.restart_in_place(process)
    # Then it is PENDING at round 1, still on r1, and nobody is told (legacy)
    stored = store.get_process("p1")
    assert stored is not None
    assert (stored.state, stored.round, stored.assigned) == (S.PENDING, 1, "r1")
    assert messenger.messages == []


def test_terminating_writes_terminated_or_terminating_and_notifies(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a queued process and a running one, each with a subscriber
    waiting = put_process(store, "p1", S.WAITING, subscribers=SUBSCRIBERS)
    running = put_process(store, "p2", S.RUNNING, assigned="r1", subscribers=SUBSCRIBERS)
    # When each is terminated
    transitions.terminate_unassigned(waiting)
    transitions.begin_terminating(running)
    # Then the unassigned one is TERMINATED, the assigned one TERMINATING, both notified
    stored = [store.get_process(upid) for upid in ("p1", "p2")]
    assert [p.state if p is not None else None for p in stored] == [S.TERMINATED, S.TERMINATING]
    assert [m.args["process"]["state"] for m in messenger.messages] == [
        S.TERMINATED,
        S.TERMINATING,
    ]


def test_a_single_attempt_on_a_stale_record_raises_a_write_conflict_and_writes_nothing(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a record read before another writer changed the process
    stale = put_process(store, "p1", S.RUNNING, assigned="r1", subscribers=SUBSCRIBERS)
    transitions.process_change_state(stale, S.TERMINATING)
    before = store.get_process("p1")
    sent = len(messenger.messages)
    # When each single attempt is made with the stale record
    for attempt in (
        lambda: transitions.restart_in_place(stale),
        lambda: transitions.begin_terminating(stale),
        lambda: transitions.assign(Assignment(stale, "r2", None, NOW)),
    ):
        # Then it raises WriteConflictError, and nothing is written or notified
        with pytest.raises(WriteConflictError):
            attempt()
    assert store.get_process("p1") == before
    assert len(messenger.messages) == sent


def test_assignments_are_written_in_one_batch_and_a_stale_one_is_reported_not_written(
    transitions: ProcessStateMachine, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given two queued processes, one of which another writer changed after it was read
    fresh = put_process(store, "p1", S.REQUESTED, subscribers=SUBSCRIBERS)
    stale = put_process(store, "p2", S.WAITING)
    transitions.process_change_state(stale, S.TERMINATED)
    # When both are assigned in one batch
    outcomes = transitions.assign_many(
        [Assignment(fresh, "r1", "host1", NOW), Assignment(stale, "r2", None, NOW)]
    )
    # Then the fresh one is ASSIGNED with its dispatch recorded, the stale one untouched
    assert [ok for _, ok in outcomes] == [True, False]
    p1, p2 = store.get_process("p1"), store.get_process("p2")
    assert p1 is not None and p2 is not None
    assert (p1.state, p1.assigned, p1.hostname, p1.dispatches, p1.dispatch_times) == (
        S.ASSIGNED,
        "r1",
        "host1",
        1,
        [NOW],
    )
    assert (p2.state, p2.assigned) == (S.TERMINATED, None)
    # And nobody is told yet: the matchmaker notifies once the launch is on its way
    assert messenger.messages == []
    assert transitions.assign_many([]) == []
