"""The shared state machine: guarded transitions, restart policy and queueing
decisions."""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import TransportError
from dispatcher.messaging import FiredMessage, RecordingMessenger
from dispatcher.model import Process
from dispatcher.store.memory import MemoryStore
from dispatcher.transitions import (
    ProcessTransitions,
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
) -> ProcessTransitions:
    return ProcessTransitions(store, messenger, clock=clock)


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
    transitions: ProcessTransitions, store: MemoryStore, messenger: RecordingMessenger
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
    transitions: ProcessTransitions, store: MemoryStore
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
    transitions: ProcessTransitions,
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
    transitions = ProcessTransitions(store, messenger)
    # When the heartbeat applies RUNNING with its stale copy
    result, changed = transitions.process_change_state(process, S.RUNNING)
    # Then the conflict is resolved by re-reading, and the guard stops the write
    assert not changed
    assert result.state == S.TERMINATING
    assert store.get_process("p1").state == S.TERMINATING  # type: ignore[union-attr]
    assert messenger.messages == []


def test_change_state_is_not_applied_once_the_round_has_changed(
    transitions: ProcessTransitions, store: MemoryStore
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
    transitions = ProcessTransitions(store, messenger)
    # When WAITING is applied from the stale copy
    result, changed = transitions.process_change_state(process, S.WAITING)
    # Then it is written on the re-read record, keeping the other writer's change
    assert changed
    assert (result.state, result.hostname) == (S.WAITING, "elsewhere")


def test_change_state_refuses_unknown_or_protected_fields(
    transitions: ProcessTransitions, store: MemoryStore
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
    transitions: ProcessTransitions,
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
    transitions: ProcessTransitions, store: MemoryStore
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
    transitions: ProcessTransitions,
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
    transitions = ProcessTransitions(store, messenger)
    # When both send it to the next round
    _, first_changed = transitions.process_next_round(process)
    second, second_changed = transitions.process_next_round(process)
    # Then only the first wins: round 1, queued once
    assert (first_changed, second_changed) == (True, False)
    assert second.round == 1
    assert store.list_queued() == [("p1", 1)]


# -- notifications -------------------------------------------------------------------------


def test_notifications_go_to_every_subscriber_pair(
    transitions: ProcessTransitions, messenger: RecordingMessenger
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
    transitions: ProcessTransitions, messenger: RecordingMessenger, subscribers: Any
) -> None:
    # Given a process without subscribers, When it is notified, Then nothing is sent
    transitions.notify_process(Process("p1", {}, subscribers=subscribers))
    assert messenger.messages == []


def test_a_notification_that_cannot_be_delivered_does_not_fail_the_transition(
    transitions: ProcessTransitions, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a broker that cannot be reached
    messenger.error = TransportError("down")
    process = put_process(store, "p1", S.PENDING, assigned="r1", subscribers=SUBSCRIBERS)
    # When the process changes state, Then the write stands and no error escapes
    _, changed = transitions.process_change_state(process, S.RUNNING)
    assert changed
    assert store.get_process("p1").state == S.RUNNING  # type: ignore[union-attr]


def test_dequeue_all_removes_every_duplicate_of_one_round(
    transitions: ProcessTransitions, store: MemoryStore
) -> None:
    # Given duplicate queue entries of p1 round 1, and others
    for entry in [("p1", 1), ("p1", 0), ("p2", 1), ("p1", 1)]:
        store.enqueue(*entry)
    # When p1 round 1 is dequeued, Then only its entries go
    assert transitions.dequeue_all("p1", 1) == 2
    assert store.list_queued() == [("p1", 0), ("p2", 1)]
