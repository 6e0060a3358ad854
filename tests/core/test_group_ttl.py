"""A group's time to live (issue 15): ``set_group_ttl(group, ttl_seconds)`` and the
culler terminating every process of the group in play once it has passed."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.culler import GROUP_TTL_REASON, Culler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot
from tests.support.clock import NOW, FakeClock

S = ProcessState


@pytest.fixture
def culler(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> Culler:
    return Culler(store, messenger, core.transitions, clock=clock)


def _state(core: ProcessDispatcherCore, upid: str) -> tuple[str, str | None]:
    record = core.describe_process(upid)
    assert record is not None
    return record["state"], record["reason"]


def test_set_group_ttl_records_the_deadline_and_clears_it(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # When a group is given 60 s, Then its deadline is 60 s from now
    assert core.set_group_ttl("exp-17", 60) == {"group": "exp-17", "expires_at": NOW + 60}
    assert store.list_group_expiries() == {"exp-17": NOW + 60}
    # And dump shows it
    assert core.dump()["group_expiries"] == {"exp-17": NOW + 60}
    # When it is cleared, Then there is none, and dump has no such key
    assert core.set_group_ttl("exp-17", None) == {"group": "exp-17", "expires_at": None}
    assert store.list_group_expiries() == {}
    assert "group_expiries" not in core.dump()


@pytest.mark.parametrize(
    ("group", "ttl", "message"),
    [
        ("exp 17", 60, "invalid group"),
        ("exp-17", 0, "invalid ttl_seconds"),
        ("exp-17", -5, "invalid ttl_seconds"),
        ("exp-17", 400 * 86400, "invalid ttl_seconds"),
        ("exp-17", "60", "invalid ttl_seconds"),
    ],
)
def test_bad_group_ttl_arguments_are_refused_and_nothing_is_stored(
    core: ProcessDispatcherCore, store: MemoryStore, group: object, ttl: object, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        core.set_group_ttl(group, ttl)
    assert store.list_group_expiries() == {}


def test_the_culler_terminates_an_expired_groups_processes_and_nothing_else(
    core: ProcessDispatcherCore,
    store: MemoryStore,
    messenger: RecordingMessenger,
    culler: Culler,
) -> None:
    # Given a group with a queued, a running and an ended process, and another group
    core.schedule_process("a-queued", DEFINITION_ID, group="exp-17", restart_mode="ALWAYS")
    put_process(
        store, "a-running", S.RUNNING, group="exp-17", assigned="agent1", restart_mode="ALWAYS"
    )
    put_process(store, "a-ended", S.EXITED, group="exp-17", reason="exited with code 0")
    put_process(store, "b-running", S.RUNNING, group="exp-18", assigned="agent1")
    core.set_group_ttl("exp-17", 30)
    # When the culler looks before the deadline, Then nothing happens
    assert culler.run(NOW + 29) == 0
    assert _state(core, "a-running")[0] == S.RUNNING
    # And its next look is due at the deadline
    assert culler.next_due() == NOW + 30
    # When it looks after the deadline
    assert culler.run(NOW + 31) == 2
    # Then the group's processes in play end with the reason, and the agent is told
    assert _state(core, "a-queued") == (S.TERMINATED, GROUP_TTL_REASON)
    assert _state(core, "a-running") == (S.TERMINATING, GROUP_TTL_REASON)
    sent = messenger.sent_to("agent1", "terminate_process")
    assert [(m.args["u_pid"], m.args["round"]) for m in sent] == [("a-running", 0)]
    assert "a-queued" not in [upid for upid, _ in store.list_queued()]
    # And the ended one and the other group are untouched
    assert _state(core, "a-ended") == (S.EXITED, "exited with code 0")
    assert _state(core, "b-running") == (S.RUNNING, None)
    # When it looks again, Then nothing more is done (the terminating one is left
    # to the terminate retries)
    before = snapshot(store)
    assert culler.run(NOW + 40) == 0
    assert snapshot(store) == before


def test_a_process_scheduled_into_an_expired_group_is_terminated_until_cleared(
    core: ProcessDispatcherCore, culler: Culler
) -> None:
    # Given an expired group
    core.set_group_ttl("exp-17", 10)
    assert culler.run(NOW + 11) == 0
    # When a process is scheduled into it, Then the next look terminates it
    core.schedule_process("late", DEFINITION_ID, group="exp-17")
    assert culler.run(NOW + 20) == 1
    assert _state(core, "late") == (S.TERMINATED, GROUP_TTL_REASON)
    # When the deadline is cleared and the process scheduled again, Then it stays
    core.set_group_ttl("exp-17", None)
    core.schedule_process("late", DEFINITION_ID, group="exp-17")
    assert culler.run(NOW + 30) == 0
    assert _state(core, "late")[0] == S.REQUESTED


def test_a_new_ttl_replaces_the_deadline(
    core: ProcessDispatcherCore, clock: FakeClock, culler: Culler
) -> None:
    # Given a group due in 10 s, extended at 5 s by 60 s
    core.schedule_process("p1", DEFINITION_ID, group="exp-17")
    core.set_group_ttl("exp-17", 10)
    clock.advance(5)
    core.set_group_ttl("exp-17", 60)
    # Then the old deadline passes without effect, and the new one ends it
    assert culler.run(NOW + 20) == 0
    assert culler.run(NOW + 66) == 1
    assert _state(core, "p1") == (S.TERMINATED, GROUP_TTL_REASON)
