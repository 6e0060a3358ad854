"""terminate_process and restart_process: terminal, unassigned and assigned processes."""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import BadRequestError, NotFoundError, TransportError, WriteConflictError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import FiredMessage, RecordingMessenger
from dispatcher.model import Process
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot
from tests.support.wiring import make_core

SUBSCRIBERS = [["sub", "process_state"]]
TERMINAL = list(ProcessState.TERMINAL_STATES)


class StoreWitnessMessenger(RecordingMessenger):
    """Records, with each message, the process state stored when it was sent."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.stored_states: list[str | None] = []

    def fire(self, target: str, op: str, **args: Any) -> None:
        upid = args.get("u_pid") or args.get("process", {}).get("upid")
        process = self.store.get_process(upid) if upid else None
        self.stored_states.append(None if process is None else process.state)
        super().fire(target, op, **args)


@pytest.fixture
def witness(store: MemoryStore) -> StoreWitnessMessenger:
    return StoreWitnessMessenger(store)


@pytest.fixture
def wcore(store: MemoryStore, witness: StoreWitnessMessenger) -> ProcessDispatcherCore:
    return make_core(store, witness)


def notifications(messenger: RecordingMessenger) -> list[FiredMessage]:
    return messenger.sent_to("sub", "process_state")


# -- terminating an unknown process ----------------------------------------------------


def test_terminating_an_unknown_process_is_not_found(core: ProcessDispatcherCore) -> None:
    # Given no process, When it is terminated, Then NotFoundError
    with pytest.raises(NotFoundError, match="process notarealprocess does not exist"):
        core.terminate_process("notarealprocess")


# -- terminating a terminal process is a no-op -----------------------------------------


@pytest.mark.parametrize("state", TERMINAL)
def test_terminating_a_terminal_process_changes_nothing_and_sends_nothing(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger, state: str
) -> None:
    # Given a process in a terminal state, with subscribers
    put_process(store, "proc1", state, round_=1, subscribers=SUBSCRIBERS)
    before = snapshot(store)
    # When it is terminated
    result = core.terminate_process("proc1")
    # Then the same state comes back, nothing is written and no message is sent
    assert result == {"upid": "proc1", "state": state, "round": 1, "assigned": None}
    assert snapshot(store) == before
    assert messenger.messages == []


# -- terminating an unassigned process -------------------------------------------------


@pytest.mark.parametrize(
    "state", [ProcessState.REQUESTED, ProcessState.DIED_REQUESTED, ProcessState.WAITING]
)
def test_terminating_an_unassigned_queued_process_terminates_it_at_once(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger, state: str
) -> None:
    # Given an unassigned process in round 1, queued (twice: a schedule nudge)
    put_process(store, "proc1", state, round_=1, subscribers=SUBSCRIBERS)
    store.enqueue("proc1", 1)
    store.enqueue("other", 0)
    store.enqueue("proc1", 1)
    # When it is terminated
    result = core.terminate_process("proc1")
    # Then it is TERMINATED, stored so, and subscribers are told
    assert result == {
        "upid": "proc1",
        "state": ProcessState.TERMINATED,
        "round": 1,
        "assigned": None,
    }
    assert store.get_process("proc1").state == ProcessState.TERMINATED  # type: ignore[union-attr]
    assert [m.args for m in notifications(messenger)] == [{"process": result}]
    # And its queue entries are gone, others kept; no agent message is sent
    assert store.list_queued() == [("other", 0)]
    assert [m.op for m in messenger.messages] == ["process_state"]


def test_terminating_an_unqueued_unassigned_process_ignores_the_missing_queue_entry(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a REQUESTED process that is not in the queue
    put_process(store, "proc1", ProcessState.REQUESTED)
    # When it is terminated, Then it is TERMINATED without error
    assert core.terminate_process("proc1")["state"] == ProcessState.TERMINATED


# -- terminating an assigned process, and terminating it again ---------------------------


@pytest.mark.parametrize(
    "state", [ProcessState.ASSIGNED, ProcessState.PENDING, ProcessState.RUNNING]
)
def test_terminating_an_assigned_process_stores_terminating_before_telling_the_agent(
    wcore: ProcessDispatcherCore, store: MemoryStore, witness: StoreWitnessMessenger, state: str
) -> None:
    # Given a process on eeagent "hats", with a subscriber
    put_process(store, "proc1", state, assigned="hats", subscribers=SUBSCRIBERS)
    store.enqueue("proc1", 0)
    # When it is terminated
    result = wcore.terminate_process("proc1")
    # Then it is TERMINATING, still assigned
    assert result == {
        "upid": "proc1",
        "state": ProcessState.TERMINATING,
        "round": 0,
        "assigned": "hats",
    }
    # And subscribers see TERMINATING, then exactly one terminate goes to hats
    assert witness.messages == [
        FiredMessage("sub", "process_state", {"process": result}),
        FiredMessage("hats", "terminate_process", {"u_pid": "proc1", "round": 0}),
    ]
    # And TERMINATING was already stored when the agent was told
    assert witness.stored_states[-1] == ProcessState.TERMINATING
    # And the queue is left to the matchmaker (legacy)
    assert store.list_queued() == [("proc1", 0)]


def test_terminating_a_terminating_process_resends_to_the_agent_without_notifying(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a process already TERMINATING on hats
    put_process(store, "proc1", ProcessState.TERMINATING, assigned="hats", subscribers=SUBSCRIBERS)
    before = snapshot(store)
    # When it is terminated again
    result = core.terminate_process("proc1")
    # Then the agent is told again, nobody is notified and nothing is written
    assert result["state"] == ProcessState.TERMINATING
    assert messenger.messages == [
        FiredMessage("hats", "terminate_process", {"u_pid": "proc1", "round": 0})
    ]
    assert snapshot(store) == before


def test_terminate_retries_when_the_matchmaker_assigns_the_process_meanwhile(
    store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a WAITING process that the matchmaker assigns to hats just as it is terminated
    put_process(store, "proc1", ProcessState.WAITING)

    class RacingStore(MemoryStore):
        raced = False

        def update_process(self, process: Process) -> None:
            if not self.raced:
                self.raced = True
                current = store.get_process("proc1")
                assert current is not None
                current.state, current.assigned = ProcessState.ASSIGNED, "hats"
                store.update_process(current)
            store.update_process(process)

        def get_process(self, upid: str) -> Process | None:
            return store.get_process(upid)

    core = make_core(RacingStore(), messenger)
    # When it is terminated
    result = core.terminate_process("proc1")
    # Then it falls through to the assigned case: TERMINATING and the agent is told
    assert result["state"] == ProcessState.TERMINATING
    assert messenger.sent_to("hats", "terminate_process") == [
        FiredMessage("hats", "terminate_process", {"u_pid": "proc1", "round": 0})
    ]


def test_terminate_gives_up_after_five_conflicting_attempts(messenger: RecordingMessenger) -> None:
    # Given a store where every process write conflicts
    class AlwaysConflicting(MemoryStore):
        def update_process(self, process: Process) -> None:
            raise WriteConflictError("simulated")

    store = AlwaysConflicting()
    put_process(store, "proc1", ProcessState.REQUESTED)
    core = make_core(store, messenger)
    # When it is terminated, Then BadRequestError
    with pytest.raises(BadRequestError, match="process proc1 could not be updated"):
        core.terminate_process("proc1")


def test_an_unreachable_agent_fails_terminate_after_terminating_is_stored(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a RUNNING process and a broker that cannot be reached
    put_process(store, "proc1", ProcessState.RUNNING, assigned="hats")
    messenger.error = TransportError("broker down")
    # When it is terminated, Then the error reaches the caller, but TERMINATING is stored
    with pytest.raises(TransportError):
        core.terminate_process("proc1")
    assert store.get_process("proc1").state == ProcessState.TERMINATING  # type: ignore[union-attr]
    # And a retry once the broker is back re-sends the terminate
    messenger.error = None
    core.terminate_process("proc1")
    assert len(messenger.sent_to("hats", "terminate_process")) == 2


# -- restart_process ---------------------------------------------------------------------


def test_restarting_an_unknown_process_is_not_found(core: ProcessDispatcherCore) -> None:
    # Given no process, When restarted, Then NotFoundError
    with pytest.raises(NotFoundError):
        core.restart_process("nothere")


@pytest.mark.parametrize("state", [s for s in ProcessState.ALL if s != ProcessState.RUNNING])
def test_restarting_a_process_that_is_not_running_returns_it_unchanged(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger, state: str
) -> None:
    # Given a process that is not RUNNING
    assigned = "hats" if ProcessState.ASSIGNED <= state <= ProcessState.TERMINATING else None
    put_process(store, "proc1", state, round_=2, assigned=assigned)
    before = snapshot(store)
    # When it is restarted, Then its dict comes back unchanged, nothing written or sent
    assert core.restart_process("proc1") == {
        "upid": "proc1",
        "state": state,
        "round": 2,
        "assigned": assigned,
    }
    assert snapshot(store) == before
    assert messenger.messages == []


def test_restarting_a_running_process_moves_it_to_pending_in_the_next_round(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given proc1 RUNNING on hats in round 0 with a subscriber, hats holding its slot
    put_process(
        store, "proc1", ProcessState.RUNNING, assigned="hats", subscribers=SUBSCRIBERS, starts=1
    )
    # When it is restarted
    result = core.restart_process("proc1")
    # Then it is PENDING in round 1, still assigned to hats
    assert result == {
        "upid": "proc1",
        "state": ProcessState.PENDING,
        "round": 1,
        "assigned": "hats",
    }
    # And hats is told to restart it in round 1; subscribers are not notified
    assert messenger.messages == [
        FiredMessage("hats", "restart_process", {"u_pid": "proc1", "round": 1})
    ]
    # And the agent's slot now belongs to round 1 (docs/architecture.md, decision 4: no slot leak)
    assert store.get_resource("hats").assigned == [("proc1", 1)]  # type: ignore[union-attr]


def test_a_restarted_process_counts_a_second_start_when_running_again(
    core: ProcessDispatcherCore, store: MemoryStore, clock: Any
) -> None:
    # Given proc1 scheduled, placed on hats and reported RUNNING once
    core.schedule_process("proc1", DEFINITION_ID)
    process = store.get_process("proc1")
    assert process is not None
    process, _ = core.transitions.process_change_state(
        process, ProcessState.ASSIGNED, assigned="hats"
    )
    process, _ = core.transitions.process_change_state(process, ProcessState.RUNNING)
    assert process.starts == 1
    # When it is restarted and the agent reports RUNNING for the new round
    core.restart_process("proc1")
    clock.now += 5
    process = store.get_process("proc1")
    assert process is not None
    process, written = core.transitions.process_change_state(process, ProcessState.RUNNING)
    # Then it is RUNNING in round 1 with two starts
    assert written
    assert (process.state, process.round, process.starts) == (ProcessState.RUNNING, 1, 2)
    assert process.start_times == [clock.now - 5, clock.now]


def test_restart_keeps_the_new_round_slot_when_the_old_key_was_already_pruned(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a RUNNING process whose agent no longer lists its key
    put_process(store, "proc1", ProcessState.RUNNING, round_=4, assigned="hats")
    resource = store.get_resource("hats")
    assert resource is not None
    resource.assigned = [("other", 0)]
    store.update_resource(resource)
    # When it is restarted, Then the agent's slot list holds the new round's key
    core.restart_process("proc1")
    assert store.get_resource("hats").assigned == [("other", 0), ("proc1", 5)]  # type: ignore[union-attr]


def test_restart_of_a_process_whose_agent_record_is_gone_still_tells_the_agent(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a RUNNING process on hats whose resource record has been removed
    put_process(store, "proc1", ProcessState.RUNNING, assigned="hats")
    store.remove_resource("hats")
    # When it is restarted, Then PENDING round 1 and the message still goes out
    assert core.restart_process("proc1")["round"] == 1
    assert [m.op for m in messenger.messages] == ["restart_process"]


def test_restart_gives_up_after_five_conflicting_attempts(messenger: RecordingMessenger) -> None:
    # Given a store where every process write conflicts
    class AlwaysConflicting(MemoryStore):
        def update_process(self, process: Process) -> None:
            raise WriteConflictError("simulated")

    store = AlwaysConflicting()
    store.add_process(Process("proc1", {}, state=ProcessState.RUNNING, assigned="hats"))
    core = make_core(store, messenger)
    # When it is restarted, Then BadRequestError and no message
    with pytest.raises(BadRequestError, match="could not be updated"):
        core.restart_process("proc1")
    assert messenger.messages == []
