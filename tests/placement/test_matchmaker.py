"""The matchmaker against the store: placement, retries, needs and retirement.

Fixture (the legacy matchmaker tests'): engine1 slots 1, engine2 slots 2, engine3 slots 2
replicas 2, engine4 slots 1 spare_slots 1, all maximum_vms 100; default engine1;
``my.engine2`` maps to engine2; no throttling; retry 30 s; run type
``fake_run_type``. Time is a hand-moved clock; launches are recorded.
"""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.engines import EngineRegistry
from dispatcher.matchmaker import Matchmaker
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.needs import NeedRegistrar, RecordingNeedSink
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState, ProcessState
from tests.support.clock import FakeClock
from tests.support.wiring import make_core, make_matchmaker

NOW = 1_700_000_000.0
RUN_TYPE = "fake_run_type"


def make_engines() -> EngineRegistry:
    return EngineRegistry(
        {
            "engine1": EngineSettings(slots=1, maximum_vms=100),
            "engine2": EngineSettings(slots=2, maximum_vms=100),
            "engine3": EngineSettings(slots=2, replicas=2, maximum_vms=100),
            "engine4": EngineSettings(slots=1, spare_slots=1, maximum_vms=100),
        },
        default_engine="engine1",
        process_engines={"my.engine2": "engine2"},
    )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def sink() -> RecordingNeedSink:
    return RecordingNeedSink()


def build(
    store: MemoryStore,
    messenger: RecordingMessenger,
    clock: FakeClock,
    sink: RecordingNeedSink | None = None,
    **kwargs: Any,
) -> Matchmaker:
    kwargs.setdefault("dispatch_retry_seconds", 30)
    registrar = NeedRegistrar(store, sink) if sink is not None else None
    return make_matchmaker(
        store,
        messenger,
        make_engines(),
        run_type=RUN_TYPE,
        registrar=registrar,
        clock=clock,
        **kwargs,
    )


@pytest.fixture
def matchmaker(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock, sink: RecordingNeedSink
) -> Matchmaker:
    mm = build(store, messenger, clock, sink)
    mm.initialize()
    return mm


def add_resource(
    store: MemoryStore,
    resource_id: str,
    node_id: str = "n1",
    *,
    slots: int = 1,
    engine: str = "engine1",
    state: str = ExecutionResourceState.OK,
    state_time: float = NOW,
    **properties: Any,
) -> None:
    node = store.get_node(node_id)
    if node is None:
        store.add_node(
            Node(
                node_id=node_id,
                domain_id=f"pd_domain_{engine}",
                properties=dict(properties),
                state_time=state_time,
            )
        )
        node = store.get_node(node_id)
        assert node is not None
    node.resources.append(resource_id)
    store.update_node(node)
    store.add_resource(
        Resource(
            resource_id=resource_id,
            node_id=node_id,
            slot_count=slots,
            state=state,
            properties={**properties, "engine": engine, "resource_id": resource_id},
        )
    )


def queue(
    store: MemoryStore,
    upid: str,
    *,
    state: str = ProcessState.REQUESTED,
    times: int = 1,
    definition: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    store.add_process(
        Process(
            upid=upid,
            definition=definition
            or {"definition_id": "D", "executable": {"exec": "/bin/true", "argv": []}},
            state=state,
            **fields,
        )
    )
    for _ in range(times):
        store.enqueue(upid, 0)


def proc(store: MemoryStore, upid: str) -> Process:
    found = store.get_process(upid)
    assert found is not None
    return found


def res(store: MemoryStore, resource_id: str) -> Resource:
    found = store.get_resource(resource_id)
    assert found is not None
    return found


def launches(messenger: RecordingMessenger) -> list[tuple[str, str, int]]:
    return [
        (m.target, m.args["u_pid"], m.args["round"])
        for m in messenger.messages
        if m.op == "launch_process"
    ]


# -- basic placement ------------------------------------------------------------------------


def test_basic_match_assigns_launches_and_dequeues(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    # Given r1 (1 slot, engine1) and a queued REQUESTED p1
    add_resource(store, "r1")
    queue(store, "p1")
    # When a pass runs
    result = matchmaker.matchmake()
    # Then r1 lists p1, one launch went to r1, and p1 is ASSIGNED to r1
    assert result.complete
    assert res(store, "r1").assigned == [("p1", 0)]
    assert launches(messenger) == [("r1", "p1", 0)]
    message = messenger.sent_to("r1", "launch_process")[0]
    assert message.args["run_type"] == RUN_TYPE
    p1 = proc(store, "p1")
    assert (p1.state, p1.assigned, p1.dispatches) == (ProcessState.ASSIGNED, "r1", 1)
    assert p1.dispatch_times == [NOW]
    assert store.list_queued() == []


def test_hostname_is_copied_from_the_resource(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "r1", hostname="vm123")
    queue(store, "p1")
    matchmaker.matchmake()
    assert proc(store, "p1").hostname == "vm123"


def test_subscribers_hear_of_the_assignment(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    add_resource(store, "r1")
    queue(store, "p1", subscribers=[["sub", "process_state"]])
    matchmaker.matchmake()
    states = [m.args["process"]["state"] for m in messenger.sent_to("sub", "process_state")]
    assert states == [ProcessState.ASSIGNED]


def test_no_resources_means_waiting_then_placed_when_one_appears(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    queue(store, "p1")
    matchmaker.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    assert store.list_queued() == [("p1", 0)]
    add_resource(store, "r1")
    matchmaker.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED
    assert launches(messenger) == [("r1", "p1", 0)]


def test_queueing_mode_never_rejects_and_dequeues(
    store: MemoryStore, matchmaker: Matchmaker
) -> None:
    queue(store, "p1", queueing_mode="NEVER")
    matchmaker.matchmake()
    assert proc(store, "p1").state == ProcessState.REJECTED
    assert store.list_queued() == []


def test_duplicate_queue_entries_are_harmless(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    add_resource(store, "r1")
    add_resource(store, "r2")
    queue(store, "p1", times=3)
    queue(store, "p2")
    matchmaker.matchmake()
    assigned = {proc(store, "p1").assigned, proc(store, "p2").assigned}
    assert assigned == {"r1", "r2"}
    assert sorted(t for t, _, _ in launches(messenger)) == ["r1", "r2"]
    assert store.list_queued() == []


class TerminatingStore(MemoryStore):
    """Terminates ``victim`` out of band just before the matchmaker assigns it."""

    victim = "p1"

    def update_process(self, process: Process) -> None:
        if process.upid == self.victim and process.state == ProcessState.ASSIGNED:
            current = self.get_process(process.upid)
            assert current is not None
            current.state = ProcessState.TERMINATED
            super().update_process(current)
        super().update_process(process)


def test_a_process_terminated_during_the_match_is_backed_out(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    store = TerminatingStore()
    mm = build(store, messenger, clock)
    add_resource(store, "r1")
    queue(store, "p1")
    result = mm.matchmake()
    assert result.backed_out == [("p1", 0)]
    assert res(store, "r1").assigned == []
    assert launches(messenger) == []
    assert proc(store, "p1").state == ProcessState.TERMINATED


class ConflictingStore(MemoryStore):
    """A resource write by the matchmaker meets a concurrent change (or deletion)."""

    mode = "conflict"
    armed = True

    def update_resource(self, resource: Resource) -> None:
        if self.armed and resource.assigned:
            self.armed = False
            if self.mode == "conflict":
                current = self.get_resource(resource.resource_id)
                assert current is not None
                current.last_heartbeat = "2023-11-14T22:13:20+00:00"
                super().update_resource(current)
            else:
                self.remove_resource(resource.resource_id)
        super().update_resource(resource)


@pytest.mark.parametrize("mode", ["conflict", "deleted"])
def test_a_resource_changed_during_the_pass_abandons_it(
    mode: str, messenger: RecordingMessenger, clock: FakeClock, sink: RecordingNeedSink
) -> None:
    store = ConflictingStore()
    store.mode = mode
    mm = build(store, messenger, clock, sink)
    add_resource(store, "r1")
    queue(store, "p1")
    result = mm.matchmake()
    # the pass is incomplete: nothing launched, no needs registered, p1 still queued
    assert not result.complete
    assert launches(messenger) == []
    assert sink.registrations == []
    assert store.list_queued() == [("p1", 0)]
    assert proc(store, "p1").state == ProcessState.REQUESTED
    if mode == "conflict":
        # the concurrent write was not overwritten, and the next pass places p1
        assert res(store, "r1").last_heartbeat == "2023-11-14T22:13:20+00:00"
        assert mm.matchmake().complete
        assert proc(store, "p1").assigned == "r1"
    else:
        assert store.get_resource("r1") is None


def test_a_half_finished_assignment_is_recovered(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    add_resource(store, "r1")
    queue(store, "p1")
    r1 = res(store, "r1")
    r1.assigned.append(("p1", 0))
    store.update_resource(r1)
    matchmaker.matchmake()
    assert proc(store, "p1").state == ProcessState.ASSIGNED
    assert res(store, "r1").assigned == [("p1", 0)]
    assert res(store, "r1").available_slots == 0
    assert launches(messenger) == [("r1", "p1", 0)]


def test_assigned_processes_are_not_rematched_but_their_launch_is_retried(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given p1 ASSIGNED to r1 and still queued (a previous leader's work)
    add_resource(store, "r1", slots=2)
    queue(store, "p1", state=ProcessState.ASSIGNED, assigned="r1")
    r1 = res(store, "r1")
    r1.assigned.append(("p1", 0))
    store.update_resource(r1)
    mm = build(store, messenger, clock)
    mm.initialize()
    # When a new matchmaker (no retry tracking) runs twice
    mm.matchmake()
    mm.matchmake()
    # Then p1 is not re-matched, but its launch was re-sent once and is tracked
    assert res(store, "r1").assigned == [("p1", 0)]
    assert launches(messenger) == [("r1", "p1", 0)]
    assert len(mm.retries) == 1


def test_disabled_resources_are_ignored(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "r1", state=ExecutionResourceState.DISABLED)
    queue(store, "p1")
    matchmaker.matchmake()
    assert proc(store, "p1").state == ProcessState.WAITING


def test_engine_constraint_keeps_a_process_off_other_engines(
    store: MemoryStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    add_resource(store, "r1", "n1", engine="engine1")
    queue(store, "p1", constraints={"engine": "engine2"})
    matchmaker.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    add_resource(store, "r2", "n2", engine="engine2", slots=2)
    matchmaker.run_once()
    assert proc(store, "p1").assigned == "r2"
    assert launches(messenger) == [("r2", "p1", 0)]
    # the derived engine is never written into the stored constraints
    # (docs/architecture.md, decision 5)
    queue(store, "p2")
    matchmaker.run_once()
    assert proc(store, "p2").assigned == "r1"
    assert proc(store, "p2").constraints == {}


def test_process_engines_mapping_chooses_the_engine(
    store: MemoryStore, matchmaker: Matchmaker
) -> None:
    add_resource(store, "r1", "n1", engine="engine1")
    add_resource(store, "r2", "n2", engine="engine2", slots=2)
    queue(
        store,
        "p1",
        definition={"definition_id": "D", "executable": {"module": "my.engine2", "class": "C"}},
    )
    matchmaker.matchmake()
    assert proc(store, "p1").assigned == "r2"


def test_constraints_match_node_properties(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "r1", "n1", hat_type="fedora")
    queue(store, "p1", constraints={"hat_type": "bowler"})
    queue(store, "p2", constraints={"hat_type": ["fedora", "bowler"]})
    matchmaker.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    assert proc(store, "p2").assigned == "r1"
    add_resource(store, "r2", "n2", hat_type="bowler")
    matchmaker.run_once()
    assert proc(store, "p1").assigned == "r2"


def test_fifo_order_and_needs_follow_the_queue(
    store: MemoryStore,
    matchmaker: Matchmaker,
    messenger: RecordingMessenger,
    sink: RecordingNeedSink,
) -> None:
    for i in range(10):
        queue(store, f"proc{i}")
        matchmaker.run_once()
        assert proc(store, f"proc{i}").state == ProcessState.WAITING
        assert sink.current("engine1") == i + 1
        assert sink.for_engine("engine1")[-1].retirable_nodes == []
    for i in range(10):
        add_resource(store, f"res{i}", f"node{i}", state_time=NOW + i)
        matchmaker.run_once()
        assert proc(store, f"proc{i}").assigned == f"res{i}"
    assert launches(messenger) == [(f"res{i}", f"proc{i}", 0) for i in range(10)]


def test_fill_the_fullest_node_first_but_spread_within_it(
    store: MemoryStore, matchmaker: Matchmaker
) -> None:
    for n in range(4):
        for a in range(2):
            add_resource(store, f"n{n}_r{a}", f"n{n}", slots=4, state_time=NOW + n)

    def counts() -> list[int]:
        return sorted((len(r.assigned) for r in store.list_resources() if r.assigned), reverse=True)

    for i in range(5):
        queue(store, f"p{i}")
    matchmaker.run_once()
    assert counts() == [3, 2]
    for i in range(5, 8):
        queue(store, f"p{i}")
    matchmaker.run_once()
    assert counts() == [4, 4]
    for i in range(8, 10):
        queue(store, f"p{i}")
    matchmaker.run_once()
    assert counts() == [4, 4, 1, 1]


def test_node_exclusive_basics(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "n1_r1", "n1", slots=2)
    add_resource(store, "n1_r2", "n1", slots=2)
    queue(store, "p1", node_exclusive="port5000")
    matchmaker.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED
    node = store.get_node("n1")
    assert node is not None and node.node_exclusive == ["port5000"]
    queue(store, "p2", node_exclusive="port5000")
    matchmaker.run_once()
    assert proc(store, "p2").state == ProcessState.WAITING
    add_resource(store, "n2_r1", "n2", slots=2)
    add_resource(store, "n2_r2", "n2", slots=2)
    matchmaker.run_once()
    assert res(store, proc(store, "p2").assigned or "").node_id == "n2"
    queue(store, "p3", node_exclusive="port5001")
    matchmaker.run_once()
    queue(store, "p4", node_exclusive="port5001")
    matchmaker.run_once()
    p3_node = res(store, proc(store, "p3").assigned or "").node_id
    p4_node = res(store, proc(store, "p4").assigned or "").node_id
    assert p3_node != p4_node


def test_node_exclusive_in_one_pass(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "r1", "n1", slots=2)
    add_resource(store, "r2", "n2", slots=2)
    queue(store, "p1", node_exclusive="port5000")
    queue(store, "p2", node_exclusive="port5000")
    matchmaker.matchmake()
    assert {proc(store, "p1").assigned, proc(store, "p2").assigned} == {"r1", "r2"}


def test_filo_retirement_disables_the_newest_empty_node(
    store: MemoryStore, matchmaker: Matchmaker, sink: RecordingNeedSink
) -> None:
    add_resource(store, "n1_r", "n1", slots=2, engine="engine4", state_time=NOW)
    add_resource(store, "n2_r", "n2", slots=2, engine="engine4", state_time=NOW + 10)
    # a queued engine4 process that no slot fits (a constraint nobody has)
    queue(store, "p1", constraints={"engine": "engine4", "hat": "none"})
    matchmaker.run_once()
    assert sink.current("engine4") == 2
    store.remove_queued("p1", 0)
    matchmaker.run_once()
    last = sink.for_engine("engine4")[-1]
    assert (last.need, last.retirable_nodes) == (1, ["n2"])
    assert res(store, "n2_r").state == ExecutionResourceState.DISABLED
    assert res(store, "n1_r").state == ExecutionResourceState.OK


def test_maximum_vms_caps_the_need(
    store: MemoryStore, matchmaker: Matchmaker, sink: RecordingNeedSink
) -> None:
    for i in range(10):
        queue(store, f"a{i}")
        queue(store, f"b{i}", constraints={"engine": "engine2"})
    matchmaker.run_once()
    assert (sink.current("engine1"), sink.current("engine2")) == (10, 5)
    for i in range(10, 1010):
        queue(store, f"a{i}")
        queue(store, f"b{i}", constraints={"engine": "engine2"})
    matchmaker.run_once()
    assert (sink.current("engine1"), sink.current("engine2")) == (100, 100)


def test_a_requeued_round_is_not_counted_twice(
    store: MemoryStore, matchmaker: Matchmaker, sink: RecordingNeedSink
) -> None:
    for i in range(10):
        add_resource(store, f"r{i}", f"n{i}")
        queue(store, f"p{i}")
    matchmaker.run_once()
    assert sink.current("engine1") == 10
    before = len(sink.registrations)
    # p0 requeued in round 1 while its round-0 assignment still exists
    p0 = proc(store, "p0")
    p0.round, p0.state = 1, ProcessState.DIED_REQUESTED
    store.update_process(p0)
    store.enqueue("p0", 1)
    matchmaker.run_once()
    assert len(sink.registrations) == before


def test_waiting_processes_are_stale_until_a_resource_changes(
    store: MemoryStore, matchmaker: Matchmaker
) -> None:
    queue(store, "p1")
    first = matchmaker.run_once()
    assert first is not None and first.waiting == [("p1", 0)]
    # nothing changed: no pass at all
    assert matchmaker.run_once() is None
    # a new process is examined, the stale one is not
    queue(store, "p2")
    second = matchmaker.run_once()
    assert second is not None and second.waiting == [("p2", 0)]
    # a resource appears: both are examined again
    add_resource(store, "r1", slots=2)
    third = matchmaker.run_once()
    assert third is not None and {a[0] for a in third.assigned} == {"p1", "p2"}


def test_a_pass_does_not_wake_itself(store: MemoryStore, matchmaker: Matchmaker) -> None:
    add_resource(store, "r1")
    queue(store, "p1")
    assert matchmaker.run_once() is not None
    assert matchmaker.run_once() is None


# -- throttling and retries -------------------------------------------------------------------


def test_restart_throttling_holds_the_second_restart(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    mm = build(
        store, messenger, clock, restart_throttling_config={"minimum_time_between_starts": 2}
    )
    mm.initialize()
    add_resource(store, "r1")
    # two earlier dispatches, the last one just now
    queue(
        store,
        "p1",
        state=ProcessState.DIED_REQUESTED,
        dispatches=2,
        dispatch_times=[NOW - 10, NOW],
        starts=2,
    )
    result = mm.run_once()
    assert result is not None and result.waiting == [("p1", 0)]
    assert proc(store, "p1").state == ProcessState.WAITING
    assert mm.next_deadline() <= NOW + 2
    clock.now += 1.5
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    clock.now += 1.0
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED


def test_a_per_process_throttle_overrides_the_global_one(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    mm = build(
        store, messenger, clock, restart_throttling_config={"minimum_time_between_starts": 2}
    )
    mm.initialize()
    add_resource(store, "r1")
    queue(
        store,
        "p1",
        state=ProcessState.DIED_REQUESTED,
        dispatch_times=[NOW - 10, NOW],
        configuration={"process": {"minimum_time_between_starts": 10}},
    )
    mm.run_once()
    clock.now += 5
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    clock.now += 6
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED


def test_the_first_restart_is_immediate(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    mm = build(
        store, messenger, clock, restart_throttling_config={"minimum_time_between_starts": 2}
    )
    add_resource(store, "r1")
    queue(store, "p1", state=ProcessState.DIED_REQUESTED, dispatch_times=[NOW])
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED


def test_launches_are_retried_every_period_while_assigned(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    from dashi.errors import TransportError

    mm = build(store, messenger, clock, dispatch_retry_seconds=0.5)
    mm.initialize()
    add_resource(store, "r1", slots=4)
    queue(store, "p1")
    queue(store, "p2")
    messenger.error = TransportError("broker down")
    mm.run_once()
    assert {proc(store, u).state for u in ("p1", "p2")} == {ProcessState.ASSIGNED}
    messenger.error = None
    for _ in range(3):
        clock.now += 0.5
        mm.run_once()
    # first launch + one retry per period (every period, not twice that:
    # docs/architecture.md, decision 6)
    assert [u for _, u, _ in launches(messenger)].count("p1") == 4
    # once the agent reports p1 RUNNING, its retries stop
    p1 = proc(store, "p1")
    p1.state = ProcessState.RUNNING
    store.update_process(p1)
    clock.now += 0.5
    mm.run_once()
    assert [u for _, u, _ in launches(messenger)].count("p1") == 4
    assert [u for _, u, _ in launches(messenger)].count("p2") == 5


def test_without_retries_a_launch_is_sent_once(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    mm = build(store, messenger, clock, dispatch_retry_seconds=0)
    add_resource(store, "r1")
    queue(store, "p1")
    mm.run_once()
    clock.now += 100
    mm.run_once()
    assert launches(messenger) == [("r1", "p1", 0)]


def terminates(messenger: RecordingMessenger) -> list[tuple[str, str, int]]:
    return [
        (m.target, m.args["u_pid"], m.args["round"])
        for m in messenger.messages
        if m.op == "terminate_process"
    ]


def test_terminates_are_retried_every_period_while_terminating(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:

    # Given p1 assigned to r1 by the matchmaker, then terminated
    core = make_core(store, messenger, clock=clock)
    mm = build(store, messenger, clock, dispatch_retry_seconds=0.5)
    mm.initialize()
    add_resource(store, "r1")
    core.create_definition("D", "supd", {"exec": "/bin/true", "argv": []})
    core.schedule_process("p1", "D")
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.ASSIGNED
    core.terminate_process("p1")
    assert terminates(messenger) == [("r1", "p1", 0)]
    # When it stays TERMINATING (its terminate lost, or ahead of its launch)
    sent = []
    for _ in range(8):
        assert mm.next_deadline() <= clock.now + 0.25
        clock.now += 0.25
        mm.run_once()
        sent.append(len(terminates(messenger)) - 1)
    # Then the terminate is re-sent within a period, then every period
    assert sent == [0, 1, 1, 2, 2, 3, 3, 4]
    # And once the agent reports it terminated, the retries stop
    p1 = proc(store, "p1")
    p1.state = ProcessState.TERMINATED
    store.update_process(p1)
    for _ in range(4):
        clock.now += 0.25
        mm.run_once()
    assert len(terminates(messenger)) == 5


def test_a_new_term_retries_the_terminates_of_processes_already_terminating(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    from dashi.errors import TransportError

    # Given processes a previous leader left TERMINATING, and one not assigned
    add_resource(store, "r1", slots=4)
    queue(store, "p1", state=ProcessState.TERMINATING, assigned="r1", round=2)
    queue(store, "p2", state=ProcessState.TERMINATING)
    mm = build(store, messenger, clock, dispatch_retry_seconds=30)
    mm.initialize()
    # When the new leader's matchmaker runs, with the broker down at first
    messenger.error = TransportError("broker down")
    mm.run_once()
    assert terminates(messenger) == []
    clock.now += 15
    mm.run_once()
    # Then the terminate of the assigned one is tried half a period later
    assert terminates(messenger) == [("r1", "p1", 2)]
    # And again every period while it stays TERMINATING
    messenger.error = None
    clock.now += 30
    mm.run_once()
    assert terminates(messenger) == [("r1", "p1", 2)] * 2
    # And after a new round of the same process, the old round is not re-sent
    p1 = proc(store, "p1")
    p1.state, p1.round = ProcessState.REQUESTED, 3
    store.update_process(p1)
    clock.now += 30
    mm.run_once()
    assert terminates(messenger) == [("r1", "p1", 2)] * 2


def test_without_retries_a_terminate_is_not_re_sent(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    add_resource(store, "r1")
    queue(store, "p1", state=ProcessState.TERMINATING, assigned="r1")
    mm = build(store, messenger, clock, dispatch_retry_seconds=0)
    mm.initialize()
    for _ in range(3):
        mm.run_once()
        clock.now += 100
    assert terminates(messenger) == []


def test_on_sqlite_the_pass_writes_in_batches(
    tmp_path: Any, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    from dispatcher.store.sql import SqlStore

    store = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    try:
        mm = build(store, messenger, clock)  # type: ignore[arg-type]
        for i in range(3):
            add_resource(store, f"r{i}", f"n{i}", slots=2)  # type: ignore[arg-type]
        for i in range(7):
            queue(store, f"p{i}")  # type: ignore[arg-type]
        result = mm.matchmake()
        assert len(result.assigned) == 6
        assert sum(len(r.assigned) for r in store.list_resources()) == 6
        assert [p.state for p in store.list_processes()].count(ProcessState.ASSIGNED) == 6
        assert store.list_queued() == [("p6", 0)]
    finally:
        store.close()


class ForeignWriteStore(MemoryStore):
    """Frees ``x``'s slot on r1 while the pass writes p0 (as another instance would:
    the write happens in the pass's own thread, so the matchmaker hears no event)."""

    def update_process(self, process: Process) -> None:
        super().update_process(process)
        if process.upid == "p0" and process.state == ProcessState.ASSIGNED:
            r1 = self.get_resource("r1")
            assert r1 is not None
            r1.assigned.remove(("x", 0))
            super().update_resource(r1)


def test_a_slot_freed_elsewhere_during_a_pass_is_not_missed(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    store = ForeignWriteStore()
    mm = build(store, messenger, clock)
    add_resource(store, "r1", "n1")
    add_resource(store, "r2", "n2")
    r1 = res(store, "r1")
    r1.assigned.append(("x", 0))
    store.update_resource(r1)
    queue(store, "p0")
    queue(store, "p1")
    # the pass places p0 on r2 and finds no slot for p1 (r1 is full when read)
    mm.run_once()
    assert proc(store, "p1").state == ProcessState.WAITING
    # the slot freed meanwhile is noticed: p1 is not left stale
    mm.run_once()
    assert proc(store, "p1").assigned == "r1"
