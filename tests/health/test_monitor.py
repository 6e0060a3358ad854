"""The heartbeat monitor: OK → WARNING → MISSING, evacuation, recovery."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dispatcher.doctor import Doctor
from dispatcher.engines import EngineRegistry
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Resource
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState, ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    DOMAIN1,
    NOW,
    FakeClock,
    add_agent,
    beat,
    bring_up,
    make_engines,
    orders,
    process,
    put_process,
    report,
    resource,
)
from tests.support.waiting import waiter
from tests.support.wiring import make_doctor, make_heartbeats

S = ProcessState
R = ExecutionResourceState


def state(store: Store, resource_id: str = "eeagent_1") -> str:
    return resource(store, resource_id).state


def heartbeat_at(handler: HeartbeatHandler, clock: FakeClock, at: float, *entries: Any) -> None:
    """eeagent_1 heartbeats, stamped ``at``, received at ``clock``'s time."""
    handler.heartbeat(beat(list(entries), at=at), sender="eeagent_1")


# -- the state machine (engine1: warning 10 s, missing 20 s, period 5 s) ---------------


@BOTH_STORES
def test_a_silent_agent_goes_warning_then_missing_and_recovers(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    doctor: Doctor,
    clock: FakeClock,
) -> None:
    # Given eeagent_1 heartbeating at NOW, holding a default-mode and a NEVER process
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    put_process(store, "p2", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    # When the doctor looks at once, Then it is OK and due again when the warning falls
    assert doctor.monitor_once() == pytest.approx(10)
    assert state(store) == R.OK
    # When 9 s pass, Then nothing is due yet
    clock.advance(9)
    assert doctor.monitor_once() == pytest.approx(1)
    assert state(store) == R.OK
    # When 10 s have passed without a heartbeat, Then it is WARNING, due again in 10 s
    clock.advance(1)
    assert doctor.monitor_once() == pytest.approx(10)
    assert state(store) == R.WARNING
    # And its processes keep running
    assert process(store, "p1").state == S.RUNNING
    # When 10 s more pass, Then it is MISSING and evacuated by restart mode
    clock.advance(10)
    doctor.monitor_once()
    assert state(store) == R.MISSING
    p1, p2 = process(store, "p1"), process(store, "p2")
    assert (p1.state, p1.round, p1.assigned) == (S.DIED_REQUESTED, 1, None)
    assert (p2.state, p2.round, p2.assigned) == (S.FAILED, 0, None)
    assert store.list_queued() == [("p1", 1)]
    assert resource(store).assigned == []
    # When the agent comes back still reporting the old round of p1
    clock.advance(1)
    heartbeat_at(handler, clock, clock.now, report("p1", "0", [500, "RUNNING"]))
    doctor.monitor_once()
    # Then the old round is terminated, and the agent is OK again
    assert orders(messenger) == [("terminate_process", "p1", 0)]
    assert state(store) == R.OK


def test_an_old_but_new_heartbeat_restarts_the_warning_clock(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given eeagent_1 WARNING since NOW+10
    bring_up(handler)
    clock.advance(10)
    doctor.monitor_once()
    assert state(store) == R.WARNING
    # When a heartbeat stamped NOW+1 (still older than the warning) arrives at NOW+15
    clock.advance(5)
    heartbeat_at(handler, clock, NOW + 1)
    assert doctor.monitor_once() == pytest.approx(10)
    # Then it is not MISSING at NOW+20, only 10 s after that heartbeat was seen
    clock.advance(5)
    doctor.monitor_once()
    assert state(store) == R.WARNING
    clock.advance(5)
    doctor.monitor_once()
    assert state(store) == R.MISSING


def test_a_missing_agent_with_old_heartbeats_returns_to_warning(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given eeagent_1 MISSING
    bring_up(handler)
    clock.advance(10)
    doctor.monitor_once()
    clock.advance(10)
    doctor.monitor_once()
    assert state(store) == R.MISSING
    # When a heartbeat 12 s old arrives (between the thresholds)
    clock.advance(7)
    heartbeat_at(handler, clock, clock.now - 12)
    doctor.monitor_once()
    # Then it is WARNING, and MISSING again after 10 s more of silence
    assert state(store) == R.WARNING
    clock.advance(10)
    doctor.monitor_once()
    assert state(store) == R.MISSING


def test_a_warning_agent_that_heartbeats_is_ok_again(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given eeagent_1 WARNING
    bring_up(handler)
    clock.advance(12)
    doctor.monitor_once()
    assert state(store) == R.WARNING
    # When it heartbeats, Then it is OK
    heartbeat_at(handler, clock, clock.now)
    assert doctor.monitor_once() == pytest.approx(10)
    assert state(store) == R.OK


def test_a_missing_agent_still_holding_processes_is_evacuated_again(
    store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given an agent recorded MISSING (long silent) whose evacuation did not finish
    add_agent(store, state=R.MISSING, last_heartbeat=NOW - 100)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    # When the doctor looks
    doctor.monitor_once()
    # Then the process is evacuated
    assert process(store, "p1").state == S.DIED_REQUESTED
    assert resource(store).assigned == []


def test_a_missing_agent_is_rechecked_every_heartbeat_period(store: Store, doctor: Doctor) -> None:
    # Given a MISSING agent with no assignments, Then it is looked at again in 5 s
    add_agent(store, state=R.MISSING, last_heartbeat=NOW - 100)
    assert doctor.monitor_once() == pytest.approx(5)


def test_evacuation_on_missing_releases_node_exclusive_tags(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given eeagent_1 holding a process with the node's tag
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", node_exclusive="port5000")
    node = store.get_node("node1")
    assert node is not None
    node.node_exclusive = ["port5000"]
    store.update_node(node)
    # When it goes MISSING
    clock.advance(10)
    doctor.monitor_once()
    clock.advance(10)
    doctor.monitor_once()
    # Then the tag is released
    node = store.get_node("node1")
    assert node is not None and node.node_exclusive == []


@pytest.mark.parametrize("current", [R.OK, R.WARNING, R.MISSING])
def test_a_disabled_agent_is_not_monitored(store: Store, doctor: Doctor, current: str) -> None:
    # Given a DISABLED agent silent for a long time
    add_agent(store, state=R.DISABLED, last_heartbeat=NOW - 1000)
    # When the doctor looks, Then it stays DISABLED and nothing is scheduled
    assert doctor.monitor_once() is None
    assert state(store) == R.DISABLED


def test_agents_of_engines_without_thresholds_are_not_monitored(
    store: Store, doctor: Doctor
) -> None:
    # Given an engine2 agent (no warning/missing thresholds) silent for long
    add_agent(store, engine="engine2", last_heartbeat=NOW - 1000)
    # When the doctor looks, Then it stays OK and nothing is scheduled
    assert doctor.monitor_once() is None
    assert state(store) == R.OK


def test_the_next_due_check_is_the_earliest_of_all_agents(store: Store, doctor: Doctor) -> None:
    # Given agents last heard 2 s and 7 s ago
    add_agent(store, "a", last_heartbeat=NOW - 2)
    add_agent(store, "b", last_heartbeat=NOW - 7)
    # When the doctor looks, Then the next check is when b reaches the warning
    assert doctor.monitor_once() == pytest.approx(3)


def test_removed_agents_are_forgotten(store: Store, doctor: Doctor) -> None:
    # Given an agent the doctor watches
    add_agent(store)
    assert doctor.monitor_once() == pytest.approx(10)
    # When it is removed, Then nothing is scheduled
    store.remove_resource("eeagent_1")
    assert doctor.monitor_once() is None


def test_a_heartbeat_racing_with_the_warning_is_not_overwritten(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given an agent silent for 12 s, and a heartbeat that lands while the doctor
    # is about to mark it WARNING
    class RaceStore(MemoryStore):
        hook: Any = None

        def update_resource(self, resource: Resource) -> None:
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
            super().update_resource(resource)

    store = RaceStore()
    engines = make_engines()
    handler = make_heartbeats(store, messenger, engines, clock=clock)
    doctor = make_doctor(store, messenger, engines, handler, clock=clock)
    bring_up(handler)
    clock.advance(12)
    store.hook = lambda: heartbeat_at(handler, clock, clock.now)
    # When the doctor looks
    doctor.monitor_once()
    # Then the fresh heartbeat wins and the agent is judged again: OK
    assert state(store) == R.OK
    assert doctor.monitor_once() == pytest.approx(10)
    assert state(store) == R.OK


def test_engines_added_by_another_instance_are_monitored(
    store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given an agent of an engine only the store knows (added elsewhere)
    store.add_engine(
        "late", {"slots": 1, "heartbeat_period": 1, "heartbeat_warning": 2, "heartbeat_missing": 3}
    )
    engines = EngineRegistry({"engine1": EngineSettings(slots=4)}, "engine1")
    handler = make_heartbeats(store, messenger, engines, clock=clock)
    doctor = make_doctor(store, messenger, engines, handler, clock=clock)
    add_agent(store, engine="late", last_heartbeat=NOW - 2)
    # When the doctor looks, Then that engine's thresholds apply
    doctor.monitor_once()
    assert state(store) == R.WARNING


# -- the loop --------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """Counts monitor passes (each reads every resource)."""

    passes = 0

    def list_resources(self) -> list[Resource]:
        self.passes += 1
        return super().list_resources()


wait_for = waiter(5.0)


def test_the_loop_does_no_work_when_nothing_is_due_and_wakes_on_changes(
    messenger: RecordingMessenger,
) -> None:
    # Given a running doctor with one unmonitored agent (engine2)
    store = CountingStore()
    engines = make_engines()
    handler = make_heartbeats(store, messenger, engines)
    doctor = make_doctor(store, messenger, engines, handler, min_pass_interval=0)
    handler.node_state("node2", "pd_domain_engine2", "600-RUNNING")
    handler.heartbeat(beat(at=time.time(), node_id="node2", eeagent_id="a2"), sender="a2")
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: store.passes >= 1)
        time.sleep(0.1)
        idle = store.passes
        # When nothing changes for a while, Then no pass runs
        time.sleep(0.7)
        assert store.passes == idle
        # When an agent's record changes, Then a pass runs
        handler.heartbeat(beat(at=time.time(), node_id="node2", eeagent_id="a2"), sender="a2")
        wait_for(lambda: store.passes > idle)
    finally:
        stop.set()
        doctor.wake()
        thread.join(2)
    assert not thread.is_alive()


def test_the_loop_marks_a_silent_agent_missing_and_ok_again_in_real_time(
    store: Store, messenger: RecordingMessenger
) -> None:
    # Given an engine with sub-second thresholds and a running doctor on the real clock
    engines = EngineRegistry(
        {
            "fast": EngineSettings(
                slots=1, heartbeat_period=0.05, heartbeat_warning=0.3, heartbeat_missing=0.6
            )
        },
        "fast",
    )
    handler = make_heartbeats(store, messenger, engines)
    doctor = make_doctor(store, messenger, engines, handler)
    handler.node_state("node1", "pd_domain_fast", "600-RUNNING")
    handler.heartbeat(beat(at=time.time()), sender="eeagent_1")
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    thread.start()
    try:
        # When the agent stays silent, Then it goes MISSING and its process is requeued
        wait_for(lambda: state(store) == R.MISSING)
        assert process(store, "p1").state == S.DIED_REQUESTED
        # When it heartbeats again, Then it is OK

        def heartbeats_resume() -> bool:
            handler.heartbeat(beat(at=time.time()), sender="eeagent_1")
            return state(store) == R.OK

        wait_for(heartbeats_resume)
    finally:
        stop.set()
        doctor.wake()
        thread.join(2)
    assert not thread.is_alive()


def test_a_failing_pass_is_retried(
    messenger: RecordingMessenger, engines: EngineRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a store whose first resource listing fails
    class FlakyStore(MemoryStore):
        failures = 1

        def list_resources(self) -> list[Resource]:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("database down")
            return super().list_resources()

    store = FlakyStore()
    handler = make_heartbeats(store, messenger, engines)
    doctor = make_doctor(store, messenger, engines, handler, error_retry=0.05)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    handler.heartbeat(beat(at=time.time() - 15), sender="eeagent_1")
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    # When the doctor runs, Then after the error it still marks the agent WARNING
    thread.start()
    try:
        wait_for(lambda: state(store) == R.WARNING)
    finally:
        stop.set()
        doctor.wake()
        thread.join(2)
    assert "pass failed" in caplog.text
