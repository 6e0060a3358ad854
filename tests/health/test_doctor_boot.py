"""The doctor's initialisation and system boot, by stored dispatcher state."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dispatcher.doctor import Doctor
from dispatcher.engines import EngineRegistry
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.states import ProcessDispatcherState, ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    SUBSCRIBERS,
    FakeClock,
    bring_up,
    make_engines,
    notified,
    process,
    put_process,
    snapshot,
)
from tests.support.waiting import waiter
from tests.support.wiring import make_doctor, make_heartbeats

S = ProcessState
PD = ProcessDispatcherState
OMIT = {"process": {"omit_from_system_restart": True}}


wait_for = waiter(5.0)


def states(store: Store, *upids: str) -> dict[str, str]:
    return {upid: process(store, upid).state for upid in upids}


# -- uninitialised start in system boot, with processes --------------------------------


@BOTH_STORES
def test_an_uninitialised_start_in_system_boot_holds_every_process_back(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, messenger: RecordingMessenger
) -> None:
    # Given the boot flag set, eeagent_1 on node1 holding p0-p4, and p5-p7 not placed
    store.set_system_boot(True)
    bring_up(handler)
    on = {"assigned": "eeagent_1"}
    put_process(store, "p0", S.RUNNING, restart_mode="ALWAYS", configuration=OMIT, **on)
    put_process(store, "p1", S.RUNNING, subscribers=SUBSCRIBERS, **on)
    put_process(store, "p2", S.PENDING, **on)
    put_process(store, "p3", S.TERMINATING, **on)
    put_process(store, "p4", S.RUNNING, restart_mode="ABNORMAL", configuration=OMIT, **on)
    put_process(store, "p5", S.WAITING)
    store.enqueue("p5", 0)
    put_process(store, "p6", S.REQUESTED)
    put_process(store, "p7", S.REQUESTED, restart_mode="ALWAYS", configuration=OMIT)
    store.enqueue("p7", 0)
    # When the doctor initialises
    doctor.initialize()
    # Then the dispatcher is initialised in SYSTEM_BOOTING with no queue, nodes or agents
    assert store.is_initialized()
    assert store.get_pd_state() == PD.SYSTEM_BOOTING
    assert store.list_queued() == []
    assert store.list_nodes() == [] and store.list_resources() == []
    # And restartable processes are held back in a new round; the others TERMINATED
    held = ("p1", "p2", "p5", "p6")
    assert states(store, *held) == dict.fromkeys(held, S.UNSCHEDULED_PENDING)
    assert {process(store, u).round for u in held} == {1}
    ended = ("p0", "p3", "p4", "p7")
    assert states(store, *ended) == dict.fromkeys(ended, S.TERMINATED)
    assert all(process(store, u).assigned is None for u in held + ended)
    assert notified(messenger) == [("p1", S.UNSCHEDULED_PENDING, 1)]
    # When the boot ends
    store.set_system_boot(False)
    assert doctor.check_system_boot() is False
    # Then the dispatcher is OK and the held-back processes are REQUESTED and queued
    assert store.get_pd_state() == PD.OK
    assert sorted(store.list_queued()) == [(u, 1) for u in held]
    assert states(store, *held) == dict.fromkeys(held, S.REQUESTED)
    assert notified(messenger)[-1] == ("p1", S.REQUESTED, 1)


# -- uninitialised start in system boot, empty -----------------------------------------


def test_an_uninitialised_empty_system_boot_becomes_ok_when_boot_ends(
    store: Store, doctor: Doctor
) -> None:
    # Given an empty dispatcher with the boot flag set
    store.set_system_boot(True)
    # When the doctor initialises
    doctor.initialize()
    # Then it is SYSTEM_BOOTING, and still is while the flag stays set
    assert store.get_pd_state() == PD.SYSTEM_BOOTING
    assert doctor.check_system_boot() is True
    # When the flag is cleared, Then it is OK
    store.set_system_boot(False)
    doctor.check_system_boot()
    assert store.get_pd_state() == PD.OK


# -- uninitialised start, not booting --------------------------------------------------


@BOTH_STORES
def test_an_uninitialised_start_schedules_held_back_processes(store: Store, doctor: Doctor) -> None:
    # Given three UNSCHEDULED_PENDING processes and no boot flag
    for upid in ("p1", "p2", "p3"):
        put_process(store, upid, S.UNSCHEDULED_PENDING, round_=2)
    # When the doctor initialises
    doctor.initialize()
    # Then the dispatcher is OK with the three queued, REQUESTED, same round
    assert store.get_pd_state() == PD.OK and store.is_initialized()
    assert store.list_queued() == [("p1", 2), ("p2", 2), ("p3", 2)]
    assert states(store, "p1", "p2", "p3") == dict.fromkeys(("p1", "p2", "p3"), S.REQUESTED)


def test_an_uninitialised_empty_start_is_ok(store: Store, doctor: Doctor) -> None:
    # Given an empty dispatcher, When the doctor initialises, Then it is OK
    doctor.initialize()
    assert store.get_pd_state() == PD.OK and store.is_initialized()


def test_an_uninitialised_start_without_boot_leaves_agents_alone(
    handler: HeartbeatHandler, store: Store, doctor: Doctor
) -> None:
    # Given an agent running a process and no boot flag
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    before = snapshot(store)
    # When the doctor initialises
    doctor.initialize()
    # Then only the dispatcher state changed
    after = snapshot(store)
    assert after["state"] == (PD.OK, False, True)
    assert {k: v for k, v in after.items() if k != "state"} == {
        k: v for k, v in before.items() if k != "state"
    }


# -- a doctor restarted during a system boot -------------------------------------------


@pytest.mark.parametrize("count", [3, 0])
def test_a_doctor_restarted_mid_boot_ends_the_boot(
    store: Store, doctor: Doctor, count: int
) -> None:
    # Given an initialised dispatcher in SYSTEM_BOOTING with `count` held-back processes
    store.set_system_boot(True)
    store.set_pd_state(PD.SYSTEM_BOOTING)
    store.set_initialized()
    upids = [f"p{i}" for i in range(count)]
    for upid in upids:
        put_process(store, upid, S.UNSCHEDULED_PENDING, round_=1)
    # When the doctor runs, nothing is evacuated or scheduled while the flag is set
    doctor.initialize()
    assert store.get_pd_state() == PD.SYSTEM_BOOTING and store.list_queued() == []
    # When the flag is cleared
    store.set_system_boot(False)
    doctor.check_system_boot()
    # Then the dispatcher is OK and the processes are REQUESTED and queued
    assert store.get_pd_state() == PD.OK
    assert store.list_queued() == [(u, 1) for u in upids]
    assert states(store, *upids) == dict.fromkeys(upids, S.REQUESTED)


def test_the_running_doctor_ends_the_boot_when_the_flag_is_cleared(
    store: Store, doctor: Doctor
) -> None:
    # Given a doctor running in SYSTEM_BOOTING with a held-back process
    store.set_system_boot(True)
    put_process(store, "p1", S.UNSCHEDULED_PENDING)
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: store.get_pd_state() == PD.SYSTEM_BOOTING)
        # When set_system_boot(False) is stored
        store.set_system_boot(False)
        # Then the doctor ends the boot
        wait_for(lambda: store.get_pd_state() == PD.OK)
        assert store.list_queued() == [("p1", 0)]
    finally:
        stop.set()
        doctor.wake()
        thread.join(5)
    assert not thread.is_alive()


def test_a_boot_ended_through_another_instance_is_noticed(
    tmp_path: Path, messenger: RecordingMessenger
) -> None:
    # Given two dispatcher instances sharing one SQLite database, the doctor in the first
    from dispatcher.store.sql import SqlStore

    url = f"sqlite:///{tmp_path}/shared.db"
    leader, other = SqlStore(url, create=True), SqlStore(url)
    try:
        engines = make_engines()
        heartbeats = make_heartbeats(leader, messenger, engines)
        doctor = make_doctor(leader, messenger, engines, heartbeats, boot_poll_interval=0.05)
        leader.set_system_boot(True)
        stop = threading.Event()
        thread = threading.Thread(target=doctor.run, args=(stop,))
        thread.start()
        try:
            wait_for(lambda: leader.get_pd_state() == PD.SYSTEM_BOOTING)
            # When the other instance clears the flag (no local store event)
            other.set_system_boot(False)
            # Then the doctor notices by polling and ends the boot
            wait_for(lambda: leader.get_pd_state() == PD.OK)
        finally:
            stop.set()
            thread.join(5)
    finally:
        leader.close()
        other.close()


# -- a doctor restarted in OK ----------------------------------------------------------


def test_a_doctor_restarted_in_ok_changes_nothing_and_stops_cleanly(
    handler: HeartbeatHandler, store: Store, doctor: Doctor
) -> None:
    # Given an initialised dispatcher in OK with the boot flag set (stale) and a
    # process held back
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    put_process(store, "p2", S.UNSCHEDULED_PENDING)
    store.set_system_boot(True)
    store.set_pd_state(PD.OK)
    store.set_initialized()
    before = snapshot(store)
    # When the doctor leads for a while, then is cancelled
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    thread.start()
    time.sleep(0.2)
    stop.set()
    thread.join(2)
    # Then it stopped promptly without waking it, and nothing changed
    assert not thread.is_alive()
    assert snapshot(store) == before


def test_the_monitor_runs_only_while_the_doctor_leads(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, clock: FakeClock
) -> None:
    # Given an OK dispatcher with an agent whose heartbeat is 15 s old
    bring_up(handler)
    store.set_pd_state(PD.OK)
    store.set_initialized()
    clock.advance(15)
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    thread.start()
    # When the doctor leads, Then the agent is marked WARNING
    try:
        wait_for(lambda: store.get_resource("eeagent_1").state == "WARNING")  # type: ignore[union-attr]
    finally:
        stop.set()
        doctor.wake()
        thread.join(2)
    assert not thread.is_alive()
    # When the term is over and time passes beyond the missing threshold
    clock.advance(60)
    time.sleep(0.2)
    # Then nothing acts on it any more
    assert store.get_resource("eeagent_1").state == "WARNING"  # type: ignore[union-attr]


def test_a_doctor_without_monitoring_never_judges_agents(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    engines: EngineRegistry,
    clock: FakeClock,
) -> None:
    # Given a doctor built with monitoring off and an agent silent for a minute
    doctor = make_doctor(store, messenger, engines, handler, monitor=False, clock=clock)
    bring_up(handler)
    clock.advance(60)
    stop = threading.Event()
    thread = threading.Thread(target=doctor.run, args=(stop,))
    # When it leads for a while
    thread.start()
    wait_for(lambda: store.get_pd_state() == PD.OK)
    time.sleep(0.1)
    stop.set()
    thread.join(2)
    # Then the agent is still OK
    assert store.get_resource("eeagent_1").state == "OK"  # type: ignore[union-attr]


# -- a system boot begun offline on an initialised database ------------------------------


@BOTH_STORES
def test_a_boot_begun_offline_reinitialises_once_in_system_boot(
    handler: HeartbeatHandler, store: Store, doctor: Doctor, messenger: RecordingMessenger
) -> None:
    # Given an initialised dispatcher in OK with processes on eeagent_1 and queued
    store.set_pd_state(PD.OK)
    store.set_initialized()
    bring_up(handler)
    on = {"assigned": "eeagent_1"}
    put_process(store, "p1", S.RUNNING, subscribers=SUBSCRIBERS, **on)
    put_process(store, "p3", S.RUNNING, restart_mode="NEVER", subscribers=SUBSCRIBERS, **on)
    put_process(store, "p5", S.WAITING)
    store.enqueue("p5", 0)
    # When a system boot is begun offline and the doctor initialises
    store.begin_system_boot()
    doctor.initialize()
    # Then the system-boot initialisation ran: held back, ended, nothing pending
    assert store.get_pd_state() == PD.SYSTEM_BOOTING
    assert not store.is_boot_init_pending()
    assert states(store, "p1", "p5") == dict.fromkeys(("p1", "p5"), S.UNSCHEDULED_PENDING)
    assert states(store, "p3") == {"p3": S.TERMINATED}
    assert store.list_nodes() == [] and store.list_queued() == []
    assert sorted(notified(messenger)) == [
        ("p1", S.UNSCHEDULED_PENDING, 1),
        ("p3", S.TERMINATED, 0),
    ]
    # When a process is placed meanwhile and a new leader's doctor initialises
    bring_up(handler)
    put_process(store, "p7", S.RUNNING, **on)
    doctor.initialize()
    # Then nothing is taken back again
    assert states(store, "p7") == {"p7": S.RUNNING}
    assert len(notified(messenger)) == 2


@BOTH_STORES
def test_a_boot_begun_and_ended_offline_starts_without_a_system_boot(
    handler: HeartbeatHandler, store: Store, doctor: Doctor
) -> None:
    # Given a running process on an initialised dispatcher
    store.set_pd_state(PD.OK)
    store.set_initialized()
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    # When a boot is begun, then ended, before the next start
    store.begin_system_boot()
    store.set_system_boot(False)
    doctor.initialize()
    # Then the start is an ordinary one: OK, the process and its agent kept
    assert store.get_pd_state() == PD.OK
    assert not store.is_boot_init_pending()
    assert states(store, "p1") == {"p1": S.RUNNING}
    assert [r.resource_id for r in store.list_resources()] == ["eeagent_1"]
