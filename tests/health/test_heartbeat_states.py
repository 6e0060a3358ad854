"""Heartbeats of a known agent drive the process state machine.

With the restart rule and the termination of unknown processes of
docs/architecture.md, decisions 4 and 7.
"""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import TransportError
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    DOMAIN1,
    NOW,
    SUBSCRIBERS,
    FakeClock,
    beat,
    bring_up,
    iso,
    make_engines,
    notified,
    orders,
    process,
    put_process,
    report,
    resource,
)
from tests.support.wiring import make_core, make_heartbeats

S = ProcessState


def send(handler: HeartbeatHandler, *entries: dict[str, Any], at: float = NOW + 1) -> None:
    """A heartbeat from eeagent_1 (sysname-prefixed sender) listing ``entries``."""
    handler.heartbeat(beat(list(entries), at=at), sender="sys.eeagent_1")


@pytest.fixture
def agent(handler: HeartbeatHandler) -> str:
    """eeagent_1 registered on node1 (engine1, 4 slots)."""
    bring_up(handler)
    return "eeagent_1"


# -- forward progress ------------------------------------------------------------------


@BOTH_STORES
@pytest.mark.parametrize(
    ("current", "reported", "expected", "starts"),
    [
        (S.ASSIGNED, S.PENDING, S.PENDING, 0),
        (S.ASSIGNED, S.RUNNING, S.RUNNING, 1),
        (S.PENDING, S.RUNNING, S.RUNNING, 1),
        (S.RUNNING, S.PENDING, S.RUNNING, 0),
        (S.RUNNING, S.RUNNING, S.RUNNING, 0),
    ],
)
def test_pending_and_running_reports_only_move_a_process_forward(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    current: str,
    reported: str,
    expected: str,
    starts: int,
) -> None:
    # Given a process in `current` on eeagent_1, round 0, with a duplicate queue entry
    put_process(store, "proc1", current, assigned=agent)
    store.enqueue("proc1", 0)
    # When the agent reports it `reported` (the real agent's list form, round as text)
    code, name = reported.split("-")
    send(handler, report("proc1", "0", [int(code), name]))
    # Then it moves forward only, counting a start on entering RUNNING
    p = process(store, "proc1")
    assert (p.state, p.round, p.assigned, p.starts) == (expected, 0, agent, starts)
    if starts:
        assert p.start_times == [NOW]
    # And it keeps its slot, and the agent is told nothing
    assert resource(store).assigned == [("proc1", 0)]
    assert messenger.sent_to(agent) == []
    # And a process that moved on from ASSIGNED/PENDING is no longer queued
    if expected != current:
        assert store.list_queued() == []


@BOTH_STORES
@pytest.mark.parametrize("reported", [S.PENDING, S.RUNNING])
def test_a_process_reported_alive_while_terminating_is_sent_its_terminate_again(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    reported: str,
) -> None:
    # Given a TERMINATING process whose terminate reached eeagent_1 before its launch
    put_process(store, "proc1", S.TERMINATING, round_=2, assigned=agent)
    before = process(store, "proc1")
    # When the agent, which started it since, reports it alive
    code, name = reported.split("-")
    send(handler, report("proc1", "2", [int(code), name]))
    # Then the agent is told to terminate it again
    assert orders(messenger) == [("terminate_process", "proc1", 2)]
    # And the process stays TERMINATING, holding its slot, until the agent says it ended
    assert process(store, "proc1") == before
    assert resource(store).assigned == [("proc1", 2)]
    # And once the agent reports it terminated, it is TERMINATED and cleaned up
    messenger.clear()
    send(handler, report("proc1", "2", [700, "TERMINATED"]), at=NOW + 2)
    assert process(store, "proc1").state == S.TERMINATED
    assert orders(messenger) == [("cleanup", "proc1", 2)]
    assert resource(store).assigned == []


def test_a_process_still_reported_running_after_it_ended_here_is_terminated(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given a process TERMINATED by an evacuation that left it assigned to eeagent_1
    put_process(store, "proc1", S.TERMINATED, assigned=agent)
    # When the agent reports it running, then it is told to terminate it
    send(handler, report("proc1", 0, [500, "RUNNING"]))
    assert orders(messenger) == [("terminate_process", "proc1", 0)]
    assert resource(store).assigned == []


@pytest.mark.parametrize("reported", ["600-TERMINATING", "900-REJECTED", "999-INVALID"])
@pytest.mark.parametrize("current", [S.ASSIGNED, S.PENDING, S.RUNNING])
def test_other_reports_are_ignored(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    current: str,
    reported: str,
) -> None:
    # Given a process on eeagent_1
    put_process(store, "proc1", current, assigned=agent, subscribers=SUBSCRIBERS)
    before = process(store, "proc1")
    # When the agent reports a state the machine does not act on
    send(handler, report("proc1", 0, reported))
    # Then nothing changes: same record, slot held, no message at all
    assert process(store, "proc1") == before
    assert resource(store).assigned == [("proc1", 0)]
    assert messenger.messages == []


# -- endings ---------------------------------------------------------------------------


def _restarts(mode: str | None, reported: str) -> bool:
    if mode == "ALWAYS":
        return True
    if mode in (None, "ABNORMAL"):
        return reported != S.EXITED
    return False


@BOTH_STORES
@pytest.mark.parametrize("mode", [None, "ABNORMAL", "ALWAYS", "NEVER"])
@pytest.mark.parametrize("reported", [S.TERMINATED, S.FAILED, S.EXITED])
@pytest.mark.parametrize("current", [S.ASSIGNED, S.PENDING, S.RUNNING])
def test_a_process_that_ended_is_restarted_or_ended_by_restart_mode(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    current: str,
    reported: str,
    mode: str | None,
) -> None:
    # Given a process in `current` on eeagent_1 with restart mode `mode`
    put_process(store, "proc1", current, assigned=agent, restart_mode=mode, subscribers=SUBSCRIBERS)
    # When the agent reports that it ended with `reported`
    send(handler, report("proc1", "0", reported))
    p = process(store, "proc1")
    # Then it is restarted in a new round (queued) or takes the reported state
    if _restarts(mode, reported):
        assert (p.state, p.round, p.assigned) == (S.DIED_REQUESTED, 1, None)
        assert store.list_queued() == [("proc1", 1)]
        assert notified(messenger) == [("proc1", S.DIED_REQUESTED, 1)]
    else:
        assert (p.state, p.round, p.assigned) == (reported, 0, None)
        assert store.list_queued() == []
        assert notified(messenger) == [("proc1", reported, 0)]
    # And the agent is told to clean it up, and its slot is free
    assert orders(messenger) == [("cleanup", "proc1", 0)]
    assert resource(store).assigned == []


@pytest.mark.parametrize("reported", [S.TERMINATED, S.FAILED, S.EXITED])
def test_a_terminating_process_that_ended_is_terminated(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    reported: str,
) -> None:
    # Given a TERMINATING process on eeagent_1 (restart mode ALWAYS does not matter)
    put_process(
        store,
        "proc1",
        S.TERMINATING,
        assigned=agent,
        restart_mode="ALWAYS",
        subscribers=SUBSCRIBERS,
    )
    # When the agent reports it ended
    send(handler, report("proc1", 0, reported))
    # Then it is TERMINATED, unassigned, cleaned up, and its slot freed
    p = process(store, "proc1")
    assert (p.state, p.round, p.assigned) == (S.TERMINATED, 0, None)
    assert notified(messenger) == [("proc1", S.TERMINATED, 0)]
    assert orders(messenger) == [("cleanup", "proc1", 0)]
    assert resource(store).assigned == []


@pytest.mark.parametrize("state", [S.TERMINATED, S.EXITED, S.FAILED])
def test_a_repeated_final_report_is_answered_with_cleanup(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    state: str,
) -> None:
    # Given a process already recorded in its final state (unassigned)
    put_process(store, "proc1", state)
    before = process(store, "proc1")
    # When the agent reports that same state again (it was not cleaned up yet)
    send(handler, report("proc1", 0, state))
    # Then the cleanup is repeated and nothing else happens
    assert orders(messenger) == [("cleanup", "proc1", 0)]
    assert process(store, "proc1") == before


def test_a_run_to_exit_then_repeat_sequence(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given an ASSIGNED process with the default restart mode
    put_process(store, "proc1", S.ASSIGNED, assigned=agent, subscribers=SUBSCRIBERS)
    # When the agent reports it PENDING, RUNNING, then EXITED twice
    for state in ("400-PENDING", "500-RUNNING", "800-EXITED", "800-EXITED"):
        send(handler, report("proc1", 0, state))
    # Then the subscriber saw PENDING, RUNNING, EXITED and the agent got two cleanups
    assert notified(messenger) == [
        ("proc1", S.PENDING, 0),
        ("proc1", S.RUNNING, 0),
        ("proc1", S.EXITED, 0),
    ]
    assert orders(messenger) == [("cleanup", "proc1", 0), ("cleanup", "proc1", 0)]
    assert resource(store).assigned == []


# -- stale rounds and unknown processes ------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "answer"),
    [
        (S.PENDING, "terminate_process"),
        (S.RUNNING, "terminate_process"),
        (S.TERMINATING, "terminate_process"),
        (S.TERMINATED, "cleanup"),
        (S.EXITED, "cleanup"),
        (S.FAILED, "cleanup"),
        (S.REJECTED, "cleanup"),
    ],
)
@pytest.mark.parametrize("current", [S.DIED_REQUESTED, S.WAITING, S.RUNNING, S.EXITED])
def test_a_stale_round_is_terminated_or_cleaned_up(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    current: str,
    reported: str,
    answer: str,
) -> None:
    # Given a process in round 2 (placed on eeagent_2 when running)
    assigned = "eeagent_2" if current == S.RUNNING else None
    put_process(store, "proc1", current, round_=2, assigned=assigned)
    before = process(store, "proc1")
    # When eeagent_1 reports round 1
    send(handler, report("proc1", "1", reported))
    # Then that old round is terminated (alive) or cleaned up (ended); nothing else
    assert orders(messenger) == [(answer, "proc1", 1)]
    assert process(store, "proc1") == before


@pytest.mark.parametrize(
    ("reported", "answer"),
    [
        (S.PENDING, "terminate_process"),
        (S.RUNNING, "terminate_process"),
        (S.TERMINATING, "terminate_process"),
        (S.TERMINATED, "cleanup"),
        (S.EXITED, "cleanup"),
        (S.FAILED, "cleanup"),
        ("999-INVALID", "cleanup"),
    ],
)
def test_an_unknown_process_reported_by_an_agent_is_terminated_or_cleaned_up(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    reported: str,
    answer: str,
) -> None:
    # Given the dispatcher knows no process "ghost" (docs/architecture.md, decision 7)
    before = store.list_processes()
    # When eeagent_1 reports it
    send(handler, report("ghost", "3", reported))
    # Then the agent is told to terminate it (alive) or clean it up (ended)
    assert orders(messenger) == [(answer, "ghost", 3)]
    assert store.list_processes() == before
    assert resource(store).assigned == []


def test_a_round_the_dispatcher_never_issued_is_terminated(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given an ASSIGNED process in round 0 on eeagent_1
    put_process(store, "proc1", S.ASSIGNED, assigned=agent)
    # When the agent reports round 5 RUNNING
    send(handler, report("proc1", 5, S.RUNNING))
    # Then round 5 is terminated and round 0 is not taken for running
    assert orders(messenger) == [("terminate_process", "proc1", 5)]
    assert process(store, "proc1").state == S.ASSIGNED
    assert resource(store).assigned == [("proc1", 0)]


@pytest.mark.parametrize(
    ("reported", "answer"),
    [(S.RUNNING, "terminate_process"), (S.EXITED, "cleanup")],
)
@pytest.mark.parametrize("current", [S.ASSIGNED, S.RUNNING])
def test_the_current_round_reported_by_another_agent_is_not_adopted(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    agent: str,
    current: str,
    reported: str,
    answer: str,
) -> None:
    # Given a process placed on eeagent_2
    put_process(store, "proc1", current, assigned="eeagent_2")
    before = process(store, "proc1")
    # When eeagent_1 reports its current round
    send(handler, report("proc1", 0, reported))
    # Then eeagent_1 is told to drop its copy and the process is unchanged
    assert orders(messenger) == [(answer, "proc1", 0)]
    assert process(store, "proc1") == before


def test_an_evacuated_process_still_running_on_its_returning_agent_is_terminated(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given a NEVER-restart process that evacuation marked FAILED in round 0
    put_process(store, "proc1", S.FAILED, restart_mode="NEVER")
    # When its agent comes back and reports it RUNNING in round 0
    send(handler, report("proc1", 0, S.RUNNING))
    # Then the agent is told to terminate it; the process stays FAILED
    assert orders(messenger) == [("terminate_process", "proc1", 0)]
    assert process(store, "proc1").state == S.FAILED


# -- slots -----------------------------------------------------------------------------


def test_slots_follow_the_processes_current_rounds(
    handler: HeartbeatHandler, store: Store, agent: str
) -> None:
    # Given slots for: an ASSIGNED process the agent does not report yet, a process
    # that moved on to round 1, a process that ended, and an unknown process
    put_process(store, "waiting_ack", S.ASSIGNED, assigned=agent)
    put_process(store, "moved_on", S.DIED_REQUESTED, round_=1)
    put_process(store, "ended", S.EXITED)
    agent_record = resource(store)
    agent_record.assigned += [("moved_on", 0), ("ended", 0), ("ghost", 0)]
    store.update_resource(agent_record)
    # When the agent sends an empty heartbeat
    send(handler)
    # Then only the ASSIGNED process keeps its slot
    assert resource(store).assigned == [("waiting_ack", 0)]


def test_a_missing_slot_of_a_process_running_here_is_restored(
    handler: HeartbeatHandler, store: Store, agent: str
) -> None:
    # Given a process PENDING in round 1 on eeagent_1 whose slot is still listed
    # under round 0 (restart_process had not moved it yet)
    put_process(store, "proc1", S.PENDING, round_=1, assigned=agent)
    agent_record = resource(store)
    agent_record.assigned = [("proc1", 0)]
    store.update_resource(agent_record)
    # When the agent reports round 1 RUNNING
    send(handler, report("proc1", 1, S.RUNNING))
    # Then the slot is held under round 1 only
    assert resource(store).assigned == [("proc1", 1)]
    assert process(store, "proc1").state == S.RUNNING


def test_node_exclusive_tags_are_released_before_the_slot(
    store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given a store that records the order of node and resource writes
    class OrderStore(MemoryStore):
        writes: list[str] = []

        def update_node(self, node: Node) -> None:
            super().update_node(node)
            self.writes.append("node")

        def update_resource(self, resource: Resource) -> None:
            super().update_resource(resource)
            self.writes.append("resource")

    store = OrderStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", node_exclusive="port5000")
    put_process(store, "proc2", S.RUNNING, assigned="eeagent_1", node_exclusive="port5001")
    node = store.get_node("node1")
    assert node is not None
    node.node_exclusive = ["port5000", "port5001"]
    store.update_node(node)
    store.writes.clear()
    # When the agent reports proc1 EXITED
    send(handler, report("proc1", 0, S.EXITED), report("proc2", 0, S.RUNNING))
    # Then its tag is gone from the node (the other stays), written before the resource
    node = store.get_node("node1")
    assert node is not None and node.node_exclusive == ["port5001"]
    assert store.writes == ["node", "resource"]
    assert resource(store).assigned == [("proc2", 0)]


# -- restart_process interplay (docs/architecture.md, decision 4) ----------------------


@BOTH_STORES
def test_an_old_round_report_after_a_restart_does_not_kill_the_new_round(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    clock: FakeClock,
    agent: str,
) -> None:
    # Given proc1 RUNNING (one start) on eeagent_1, restarted with restart_process
    put_process(store, "proc1", S.RUNNING, assigned=agent, starts=1, start_times=[NOW - 9])
    core = make_core(store, messenger, clock=clock)
    assert core.restart_process("proc1")["round"] == 1
    assert orders(messenger) == [("restart_process", "proc1", 1)]
    # When a heartbeat built before the agent restarted still reports round 0 RUNNING
    send(handler, report("proc1", "0", [500, "RUNNING"]))
    # Then round 0 is not terminated, and the slot stays held under round 1
    assert orders(messenger) == [("restart_process", "proc1", 1)]
    p = process(store, "proc1")
    assert (p.state, p.round, p.assigned) == (S.PENDING, 1, agent)
    assert resource(store).assigned == [("proc1", 1)]
    # When the agent reports round 1 RUNNING
    clock.advance(2)
    send(handler, report("proc1", "1", [500, "RUNNING"]), at=NOW + 2)
    # Then the process is RUNNING again with a second start, on the same slot
    p = process(store, "proc1")
    assert (p.state, p.round, p.starts) == (S.RUNNING, 1, 2)
    assert p.start_times == [NOW - 9, NOW + 2]
    assert resource(store).assigned == [("proc1", 1)]
    assert orders(messenger) == [("restart_process", "proc1", 1)]


def test_an_old_round_is_terminated_once_the_restarted_process_is_terminating(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    clock: FakeClock,
    agent: str,
) -> None:
    # Given proc1 restarted into round 1, then terminated before it ran again
    put_process(store, "proc1", S.RUNNING, assigned=agent, starts=1)
    core = make_core(store, messenger, clock=clock)
    core.restart_process("proc1")
    core.terminate_process("proc1")
    messenger.clear()
    # When the agent still reports round 0 RUNNING (it never restarted it)
    send(handler, report("proc1", 0, S.RUNNING))
    # Then round 0 is terminated
    assert orders(messenger) == [("terminate_process", "proc1", 0)]


def test_an_old_round_on_an_agent_that_no_longer_holds_the_process_is_terminated(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given proc1 PENDING in round 1 on eeagent_2
    put_process(store, "proc1", S.PENDING, round_=1, assigned="eeagent_2")
    # When eeagent_1 reports round 0 RUNNING
    send(handler, report("proc1", 0, S.RUNNING))
    # Then eeagent_1 is told to terminate round 0
    assert orders(messenger) == [("terminate_process", "proc1", 0)]


# -- timestamps: last_heartbeat only moves forward -------------------------------------


@BOTH_STORES
def test_the_last_heartbeat_only_moves_forward(handler: HeartbeatHandler, store: Store) -> None:
    # Given node1, and heartbeats of eeagent_1 stamped d1 (its first), d3, then d2
    handler.node_state("node1", "pd_domain_engine1", "600-RUNNING")
    d1, d2, d3 = (
        "2013-10-21T19:37:57Z",
        "2013-10-21T19:38:57Z",
        "2013-10-21T19:39:57Z",
    )
    seen = []
    for stamp in (d1, d3, d2):
        # When each arrives
        message = {"node_id": "node1", "timestamp": stamp, "processes": []}
        handler.heartbeat(message, sender="eeagent_1")
        seen.append(resource(store).last_heartbeat)
    # Then the last heartbeat reads d1, d3, and stays d3
    assert seen == [
        "2013-10-21T19:37:57+00:00",
        "2013-10-21T19:39:57+00:00",
        "2013-10-21T19:39:57+00:00",
    ]


def test_a_future_timestamp_counts_as_now(
    handler: HeartbeatHandler, store: Store, agent: str
) -> None:
    # Given an agent whose clock runs an hour ahead
    # When it heartbeats
    send(handler, at=NOW + 3600)
    # Then its last heartbeat is the dispatcher's now
    assert resource(store).last_heartbeat == iso(NOW)


def test_timestamps_with_other_offsets_are_stored_in_utc(
    handler: HeartbeatHandler, store: Store, clock: FakeClock, agent: str
) -> None:
    # Given/When a heartbeat stamped with a +02:00 offset
    handler.heartbeat(
        {"timestamp": "2023-11-14T23:13:25+02:00", "processes": []}, sender="eeagent_1"
    )
    # Then it is compared and stored as UTC (older than the first heartbeat at NOW: kept)
    assert resource(store).last_heartbeat == iso(NOW)
    clock.advance(10)
    handler.heartbeat(
        {"timestamp": "2023-11-15T00:13:25+02:00", "processes": []}, sender="eeagent_1"
    )
    assert resource(store).last_heartbeat == "2023-11-14T22:13:25+00:00"


@pytest.mark.parametrize("stamp", ["0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00+23:59"])
def test_a_timestamp_before_year_one_in_utc_counts_as_the_earliest_time(
    handler: HeartbeatHandler, store: Store, agent: str, stamp: str
) -> None:
    # Given a known agent, and a heartbeat whose time in UTC falls before year 1
    put_process(store, "proc1", S.PENDING, assigned=agent)
    # When it arrives
    handler.heartbeat(
        {"timestamp": stamp, "processes": [report("proc1", 0, S.RUNNING)]}, sender=agent
    )
    # Then it is taken like any other old heartbeat: the reported state is applied
    # and the last heartbeat does not move back
    assert process(store, "proc1").state == S.RUNNING
    assert resource(store).last_heartbeat == iso(NOW)


def test_a_first_heartbeat_before_year_one_in_utc_registers_at_the_earliest_time(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given a running node, when an unknown agent's first heartbeat is stamped
    # before year 1 in UTC
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    handler.heartbeat(
        {"node_id": "node1", "timestamp": "0001-01-01T00:30:00+01:00", "processes": []},
        sender="eeagent_9",
    )
    # Then the agent is registered, last seen at the earliest time there is
    stored = store.get_resource("eeagent_9")
    assert stored is not None
    assert stored.last_heartbeat == "0001-01-01T00:00:00+00:00"


def test_an_unchanged_heartbeat_writes_nothing(
    handler: HeartbeatHandler, store: Store, agent: str
) -> None:
    # Given a RUNNING process whose state the agent repeats with an old timestamp
    put_process(store, "proc1", S.RUNNING, assigned=agent)
    before = resource(store).version
    # When the heartbeat changes nothing
    send(handler, report("proc1", 0, S.RUNNING), at=NOW - 100)
    # Then the resource is not rewritten
    assert resource(store).version == before


# -- robustness ------------------------------------------------------------------------


def test_commands_are_sent_after_the_state_they_follow_is_stored(
    store: Store, clock: FakeClock
) -> None:
    # Given a messenger that notes the stored state of each process it is told about
    class Witness(RecordingMessenger):
        seen: list[tuple[str, str | None]] = []

        def fire(self, target: str, op: str, **args: Any) -> None:
            found = store.get_process(args.get("u_pid", ""))
            self.seen.append((op, None if found is None else found.state))
            super().fire(target, op, **args)

    witness = Witness()
    handler = make_heartbeats(store, witness, make_engines(), clock=clock)
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    # When the agent reports proc1 FAILED
    send(handler, report("proc1", 0, S.FAILED))
    # Then the cleanup went out once FAILED was stored
    assert witness.seen == [("cleanup", S.FAILED)]


def test_an_unreachable_agent_does_not_stop_the_heartbeat(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, agent: str
) -> None:
    # Given a broker that refuses every message
    put_process(store, "proc1", S.RUNNING, assigned=agent, restart_mode="NEVER")
    messenger.error = TransportError("broker down")
    # When the agent reports one process FAILED and an unknown one RUNNING
    send(handler, report("proc1", 0, S.FAILED), report("ghost", 0, S.RUNNING))
    # Then the state is recorded and both answers were attempted
    assert process(store, "proc1").state == S.FAILED
    assert orders(messenger) == [("cleanup", "proc1", 0), ("terminate_process", "ghost", 0)]


def test_an_ending_racing_with_terminate_process_still_settles(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given a store in which terminate_process lands just before the heartbeat's write
    class RaceStore(MemoryStore):
        hook: Any = None

        def update_process(self, process: Process) -> None:
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
            super().update_process(process)

    store = RaceStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    core = make_core(store, messenger, transitions=handler.transitions)
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1")
    store.hook = lambda: core.terminate_process("proc1")
    # When the agent reports proc1 FAILED (default mode: it would restart)
    send(handler, report("proc1", 0, S.FAILED))
    # Then the process ends TERMINATED, unassigned, and the slot is freed
    p = process(store, "proc1")
    assert (p.state, p.round, p.assigned) == (S.TERMINATED, 0, None)
    assert resource(store).assigned == []


def test_a_slot_taken_while_the_heartbeat_is_handled_is_kept(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given a store in which the matchmaker places proc2 on eeagent_1 just before the
    # heartbeat writes the resource
    class RaceStore(MemoryStore):
        hook: Any = None

        def update_resource(self, resource: Resource) -> None:
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
            super().update_resource(resource)

    store = RaceStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    put_process(store, "proc2", S.REQUESTED)

    def place_proc2() -> None:
        agent = resource(store)
        agent.assigned.append(("proc2", 0))
        store.update_resource(agent)

    store.hook = place_proc2
    # When the agent reports proc1 EXITED
    send(handler, report("proc1", 0, S.EXITED))
    # Then proc1's slot is freed, proc2's reservation survives, the time moved on
    agent = resource(store)
    assert agent.assigned == [("proc2", 0)]
    assert agent.last_heartbeat == iso(NOW)


def test_a_cleanup_is_not_resent_on_every_heartbeat_only_after_the_resend_period(
    store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given a dispatcher that resends cleanups after 30 s (dispatch_retry_seconds)
    handler = make_heartbeats(
        store, messenger, make_engines(), clock=clock, cleanup_resend_seconds=30
    )
    bring_up(handler)
    put_process(store, "proc1", S.EXITED)
    # When the agent, slow to clean up, reports the ended process on every beat for 25 s
    for _ in range(6):
        send(handler, report("proc1", 0, S.EXITED), at=clock.now)
        clock.advance(5)
    # Then it got one cleanup, not one per beat
    assert orders(messenger) == [("cleanup", "proc1", 0)]
    # When it still reports the process after the resend period
    clock.advance(5)
    send(handler, report("proc1", 0, S.EXITED), at=clock.now)
    # Then the cleanup is sent again
    assert orders(messenger) == [("cleanup", "proc1", 0)] * 2
