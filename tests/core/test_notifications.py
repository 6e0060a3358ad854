"""Subscriber notifications: which changes notify, with which payload."""

from __future__ import annotations

from typing import Any

from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Process
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState as S
from tests.core.conftest import DEFINITION_ID

SUBSCRIBERS = [("destination", "process_state"), ("audit", "seen")]


def seen(messenger: RecordingMessenger, subscriber: str = "destination") -> list[dict[str, Any]]:
    return [m.args["process"] for m in messenger.sent_to(subscriber)]


def current(store: MemoryStore, upid: str = "proc1") -> Process:
    process = store.get_process(upid)
    assert process is not None
    return process


def test_a_subscriber_sees_every_state_change_the_reference_lists_and_nothing_else(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    t = core.transitions
    # Given proc1 created and scheduled with two subscribers: no notification yet
    core.create_process("proc1", DEFINITION_ID)
    core.schedule_process("proc1", subscribers=SUBSCRIBERS)
    core.schedule_process("proc1", subscribers=SUBSCRIBERS)
    assert messenger.messages == []
    # When the matchmaker assigns it and its agent reports PENDING then RUNNING
    t.process_change_state(current(store), S.ASSIGNED, assigned="hats")
    t.process_change_state(current(store), S.PENDING)
    t.process_change_state(current(store), S.RUNNING)
    t.process_change_state(current(store), S.RUNNING)  # a repeated report: no write
    # And it is restarted (no notification) and reported RUNNING in the new round
    core.restart_process("proc1")
    t.process_change_state(current(store), S.RUNNING)
    # And it is terminated twice (one notification) and reported TERMINATED
    core.terminate_process("proc1")
    core.terminate_process("proc1")
    t.process_change_state(current(store), S.TERMINATED, assigned=None)
    core.terminate_process("proc1")
    # And it is scheduled again (no notification)
    core.schedule_process("proc1")
    # Then each subscriber saw exactly these process dicts, in order
    expected = [
        {"upid": "proc1", "round": 0, "state": S.ASSIGNED, "assigned": "hats"},
        {"upid": "proc1", "round": 0, "state": S.PENDING, "assigned": "hats"},
        {"upid": "proc1", "round": 0, "state": S.RUNNING, "assigned": "hats"},
        {"upid": "proc1", "round": 1, "state": S.RUNNING, "assigned": "hats"},
        {"upid": "proc1", "round": 1, "state": S.TERMINATING, "assigned": "hats"},
        {"upid": "proc1", "round": 1, "state": S.TERMINATED, "assigned": None},
    ]
    assert seen(messenger) == expected
    assert seen(messenger, "audit") == expected
    assert {m.op for m in messenger.sent_to("audit")} == {"seen"}


def test_a_subscriber_sees_a_death_and_the_new_round(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    t = core.transitions
    # Given proc1 RUNNING on hats with a subscriber
    core.schedule_process("proc1", DEFINITION_ID, subscribers=SUBSCRIBERS)
    t.process_change_state(current(store), S.ASSIGNED, assigned="hats")
    t.process_change_state(current(store), S.RUNNING)
    messenger.clear()
    # When it dies and is sent to the next round, then is found unplaceable
    t.process_next_round(current(store))
    t.process_change_state(current(store), S.WAITING)
    # Then the subscriber sees DIED_REQUESTED (round 1, unassigned) then WAITING
    assert seen(messenger) == [
        {"upid": "proc1", "round": 1, "state": S.DIED_REQUESTED, "assigned": None},
        {"upid": "proc1", "round": 1, "state": S.WAITING, "assigned": None},
    ]


def test_terminating_an_unplaced_process_notifies_terminated(
    core: ProcessDispatcherCore, messenger: RecordingMessenger
) -> None:
    # Given a REQUESTED process with subscribers
    core.schedule_process("proc1", DEFINITION_ID, subscribers=SUBSCRIBERS)
    # When it is terminated, Then each subscriber is told TERMINATED
    core.terminate_process("proc1")
    terminated = {"upid": "proc1", "round": 0, "state": S.TERMINATED, "assigned": None}
    assert seen(messenger) == [terminated]
    assert seen(messenger, "audit") == [terminated]
