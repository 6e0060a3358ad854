"""Property test: random sequences of RPCs, placements and agent reports keep the invariants.

The state machine below drives the core with schedule/create/terminate/restart calls
interleaved with what the matchmaker and an eeagent's heartbeats do (written with the
shared transition helpers, as the later placement work will). After every step:

* a process's round never decreases;
* within a round, its state never moves backwards;
* queue entries name existing processes and are never ahead of the process's round;
* every placed process (ASSIGNED..TERMINATING) holds a slot under its current round
  (docs/architecture.md, decision 4: no slot leak on restart);
* after terminate_process ends a process, none of its queue entries for that round remain.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dashi.errors import BadRequestError, NotFoundError
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Process, Resource
from dispatcher.store.memory import MemoryStore
from dispatcher.transitions import get_queueing_decision, process_should_restart
from pdcommon.states import ProcessState as S
from tests.support.hypothesis_profiles import examples
from tests.support.wiring import make_core

UPIDS = st.sampled_from(["p0", "p1"])
RESOURCES = ("r1", "r2")
PLACED = (S.ASSIGNED, S.PENDING, S.RUNNING, S.TERMINATING)
UNPLACED = (S.REQUESTED, S.DIED_REQUESTED, S.WAITING)
TERMINAL = frozenset(S.TERMINAL_STATES)


class DispatcherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.messenger = RecordingMessenger()
        self.core = make_core(self.store, self.messenger, clock=lambda: 1.0)
        self.core.create_definition("d", "supd", {"exec": "/bin/true"})
        for resource_id in RESOURCES:
            self.store.add_resource(Resource(resource_id, "node1", slot_count=100))
        self.seen: dict[str, tuple[int, str]] = {}

    # -- helpers ------------------------------------------------------------------------

    def get(self, upid: str) -> Process | None:
        return self.store.get_process(upid)

    def upids_in(self, states: Any) -> list[str]:
        return [p.upid for p in self.store.list_processes() if p.state in states]

    def queued_unplaced(self) -> list[str]:
        queued = set(self.store.list_queued())
        return [
            p.upid
            for p in self.store.list_processes()
            if p.state in UNPLACED and (p.upid, p.round) in queued
        ]

    def remove_slot(self, resource_id: str, key: tuple[str, int]) -> None:
        resource = self.store.get_resource(resource_id)
        assert resource is not None
        if key in resource.assigned:
            resource.assigned.remove(key)
            self.store.update_resource(resource)

    # -- RPCs ---------------------------------------------------------------------------

    @rule(
        upid=UPIDS,
        with_definition=st.booleans(),
        restart_mode=st.sampled_from([None, "NEVER", "ALWAYS", "ABNORMAL"]),
        queueing_mode=st.sampled_from([None, "NEVER", "ALWAYS", "START_ONLY"]),
    )
    def schedule(
        self,
        upid: str,
        with_definition: bool,
        restart_mode: str | None,
        queueing_mode: str | None,
    ) -> None:
        before = self.get(upid)
        try:
            result = self.core.schedule_process(
                upid,
                "d" if with_definition else None,
                restart_mode=restart_mode,
                queueing_mode=queueing_mode,
            )
        except NotFoundError:
            assert before is None and not with_definition
            return
        except BadRequestError as exc:
            assert before is not None and before.state not in TERMINAL
            assert "parameter value doesn't match request" in str(exc)
            return
        after = self.get(upid)
        assert after is not None and result == after.summary()
        assert (upid, after.round) in self.store.list_queued()

    @rule(upid=UPIDS)
    def create(self, upid: str) -> None:
        before = self.get(upid)
        result = self.core.create_process(upid, "d")
        if before is None:
            assert result["state"] == S.UNSCHEDULED
        else:
            assert result == before.summary()

    @rule(upid=UPIDS)
    def terminate(self, upid: str) -> None:
        before = self.get(upid)
        try:
            result = self.core.terminate_process(upid)
        except NotFoundError:
            assert before is None
            return
        assert before is not None
        after = self.get(upid)
        assert after is not None and result == after.summary()
        if before.state in TERMINAL:
            assert after == before
        elif before.assigned is None:
            assert after.state == S.TERMINATED
            assert (upid, after.round) not in self.store.list_queued()
        else:
            assert after.state == S.TERMINATING
            sent = self.messenger.messages[-1]
            assert (sent.target, sent.op) == (before.assigned, "terminate_process")

    @rule(upid=UPIDS)
    def restart(self, upid: str) -> None:
        before = self.get(upid)
        try:
            result = self.core.restart_process(upid)
        except NotFoundError:
            assert before is None
            return
        assert before is not None
        if before.state == S.RUNNING:
            assert (result["state"], result["round"]) == (S.PENDING, before.round + 1)
        else:
            assert result == before.summary()

    @precondition(lambda self: bool(self.upids_in([S.RUNNING])))
    @rule(data=st.data())
    def restart_a_running_process(self, data: st.DataObject) -> None:
        self.restart(data.draw(st.sampled_from(self.upids_in([S.RUNNING]))))

    # -- the matchmaker -------------------------------------------------------------------

    @precondition(lambda self: bool(self.queued_unplaced()))
    @rule(data=st.data(), resource_id=st.sampled_from(RESOURCES), slot_free=st.booleans())
    def matchmake(self, data: st.DataObject, resource_id: str, slot_free: bool) -> None:
        process = self.get(data.draw(st.sampled_from(self.queued_unplaced())))
        assert process is not None
        key = (process.upid, process.round)
        if slot_free:
            resource = self.store.get_resource(resource_id)
            assert resource is not None
            resource.assigned.append(key)
            self.store.update_resource(resource)
            _, written = self.core.transitions.process_change_state(
                process, S.ASSIGNED, assigned=resource_id
            )
            assert written
            self.store.remove_queued(*key)
        elif process.state < S.WAITING:
            decision = get_queueing_decision(process.queueing_mode, process.starts)
            self.core.transitions.process_change_state(process, decision)
            if decision == S.REJECTED:
                self.store.remove_queued(*key)

    @rule()
    def drop_stale_queue_entries(self) -> None:
        for upid, round_ in self.store.list_queued():
            process = self.get(upid)
            if process is None or process.round != round_ or process.state >= S.PENDING:
                self.store.remove_queued(upid, round_)

    # -- the eeagent's heartbeats ---------------------------------------------------------

    @precondition(lambda self: bool(self.upids_in(PLACED)))
    @rule(
        data=st.data(),
        reported=st.sampled_from([S.PENDING, S.RUNNING, S.TERMINATED, S.EXITED, S.FAILED]),
    )
    def agent_reports(self, data: st.DataObject, reported: str) -> None:
        process = self.get(data.draw(st.sampled_from(self.upids_in(PLACED))))
        assert process is not None and process.assigned is not None
        transitions = self.core.transitions
        key = (process.upid, process.round)
        resource_id = process.assigned
        if reported in (S.PENDING, S.RUNNING):
            if process.state in (S.ASSIGNED, S.PENDING):
                transitions.process_change_state(process, reported)
            return
        if process.state == S.TERMINATING:
            transitions.process_change_state(process, S.TERMINATED, assigned=None)
        elif process_should_restart(process, reported):
            transitions.process_next_round(process)
        else:
            transitions.process_change_state(process, reported, assigned=None)
        self.remove_slot(resource_id, key)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def rounds_and_states_only_move_forward(self) -> None:
        for process in self.store.list_processes():
            previous = self.seen.get(process.upid)
            if previous is not None:
                round_, state = previous
                assert process.round >= round_, (process.upid, previous, process.round)
                if process.round == round_:
                    assert process.state >= state, (process.upid, previous, process.state)
            self.seen[process.upid] = (process.round, process.state)

    @invariant()
    def queue_entries_are_never_ahead_of_their_process(self) -> None:
        for upid, round_ in self.store.list_queued():
            process = self.get(upid)
            assert process is not None
            assert round_ <= process.round

    @invariant()
    def placed_processes_hold_a_slot_in_their_current_round(self) -> None:
        held: dict[str, Any] = {r.resource_id: r.assigned for r in self.store.list_resources()}
        for process in self.store.list_processes():
            if process.state in PLACED:
                assert process.assigned in held
                assert (process.upid, process.round) in held[process.assigned]

    @invariant()
    def upids_are_unique(self) -> None:
        upids = [p.upid for p in self.store.list_processes()]
        assert len(upids) == len(set(upids))


DispatcherMachine.TestCase.settings = settings(
    max_examples=examples(200),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_rpc_sequences_keep_the_process_invariants = DispatcherMachine.TestCase
