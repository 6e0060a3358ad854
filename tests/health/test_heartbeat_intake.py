"""The heartbeat intake: fired heartbeats validated at once, coalesced per agent, applied apart.

A recording ``apply`` stands in for the health handler, except where the outcome
in the store is the point (then the real :class:`HeartbeatHandler` on a memory store).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from dispatcher.heartbeat_intake import REJECT_LOG_SECONDS, HeartbeatIntake
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.store.base import Store
from pdcommon.states import ProcessState
from tests.health.conftest import NOW, FakeClock, beat, bring_up, iso, put_process, report
from tests.support.waiting import waiter


class Recorder:
    """Records ``(sender, timestamp)`` of each heartbeat applied."""

    def __init__(self) -> None:
        self.applied: list[tuple[Any, str]] = []

    def __call__(self, message: Any, sender: Any) -> None:
        self.applied.append((sender, message["timestamp"]))


def test_the_latest_heartbeat_of_an_agent_replaces_its_pending_one_and_keeps_its_place() -> None:
    # Given an intake that is not applying yet
    recorder = Recorder()
    intake = HeartbeatIntake(recorder)
    # When agent a beats three times, b once in between, and a again (sysname or not)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    intake.heartbeat(beat(at=NOW + 1), sender="sys.b")
    intake.heartbeat(beat(at=NOW + 2), sender="sys.a")
    intake.heartbeat(beat(at=NOW + 3), sender="a")
    # Then one heartbeat per agent is pending, a's latest first (a arrived first)
    assert intake.pending == 2
    assert intake.drain() == 2
    assert recorder.applied == [("a", iso(NOW + 3)), ("sys.b", iso(NOW + 1))]
    assert intake.counts.accepted == 4
    assert intake.counts.coalesced == 2
    assert intake.counts.applied == 2


def test_a_heartbeat_stamped_before_the_pending_one_does_not_replace_it() -> None:
    # Given agent a's heartbeat stamped NOW + 5 is pending
    recorder = Recorder()
    intake = HeartbeatIntake(recorder)
    intake.heartbeat(beat(at=NOW + 5), sender="sys.a")
    # When one stamped earlier arrives after it (another connection, say)
    intake.heartbeat(beat(at=NOW + 1), sender="sys.a")
    # Then the later snapshot is the one applied
    intake.drain()
    assert recorder.applied == [("sys.a", iso(NOW + 5))]


@pytest.mark.parametrize(
    ("message", "sender"),
    [
        ({"timestamp": "yesterday", "processes": []}, "sys.a"),
        ({"timestamp": iso(NOW + 9), "processes": "all"}, "sys.a"),
        (beat([report("p", "x", "500-RUNNING")], at=NOW + 9), "sys.a"),
        ("not a heartbeat", "sys.a"),
        (beat(at=NOW + 9), "sys."),
        (beat(at=NOW + 9), ["sys.a"]),
    ],
)
def test_an_invalid_heartbeat_is_dropped_and_never_replaces_a_valid_pending_one(
    message: Any, sender: Any
) -> None:
    # Given agent a's valid heartbeat is pending
    recorder = Recorder()
    intake = HeartbeatIntake(recorder)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    # When an invalid one arrives (under a's name, or naming no agent)
    intake.heartbeat(message, sender)
    # Then it is counted as rejected and the valid one is applied
    assert intake.counts.rejected == 1
    intake.drain()
    assert recorder.applied == [("sys.a", iso(NOW))]


def test_rejections_are_logged_once_per_interval_with_a_count_of_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an intake with a fake clock
    clock = FakeClock(0.0)
    intake = HeartbeatIntake(Recorder(), clock=clock)
    junk = {"timestamp": "yesterday", "processes": []}
    # When 1,000 invalid heartbeats arrive at once, and one more an interval later
    with caplog.at_level(logging.WARNING, logger="dispatcher.heartbeat_intake"):
        for _ in range(1000):
            intake.heartbeat(junk, "sys.junk")
        clock.advance(REJECT_LOG_SECONDS)
        intake.heartbeat(junk, "sys.junk")
    # Then two warnings were logged, the second counting the 999 not logged
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "dropping heartbeat from 'sys.junk'" in lines[0]
    assert "and 999 more" in lines[1]
    assert intake.counts.rejected == 1001


def test_a_full_buffer_drops_heartbeats_of_new_agents_but_coalesces_pending_ones() -> None:
    # Given an intake that holds two agents, both pending
    recorder = Recorder()
    intake = HeartbeatIntake(recorder, capacity=2)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    intake.heartbeat(beat(at=NOW), sender="sys.b")
    # When a third agent beats, and a beats again
    intake.heartbeat(beat(at=NOW), sender="sys.c")
    intake.heartbeat(beat(at=NOW + 1), sender="sys.a")
    # Then c's heartbeat is dropped and a's latest is kept
    assert intake.counts.overflowed == 1
    intake.drain()
    assert recorder.applied == [("sys.a", iso(NOW + 1)), ("sys.b", iso(NOW))]


def test_an_agent_is_never_applied_concurrently_and_its_next_heartbeat_waits_its_turn() -> None:
    # Given two applier threads, the first heartbeat of a held inside apply
    entered, release = threading.Event(), threading.Event()
    applied: list[tuple[Any, str]] = []
    active: set[Any] = set()
    overlaps: list[Any] = []
    lock = threading.Lock()

    def apply(message: Any, sender: Any) -> None:
        with lock:
            if sender in active:
                overlaps.append(sender)
            active.add(sender)
        if message["timestamp"] == iso(NOW):
            entered.set()
            release.wait(30)
        with lock:
            active.discard(sender)
            applied.append((sender, message["timestamp"]))

    intake = HeartbeatIntake(apply, workers=2)
    intake.start()
    try:
        intake.heartbeat(beat(at=NOW), sender="sys.a")
        assert entered.wait(30)
        # When a beats again and b beats while a's first is being applied
        intake.heartbeat(beat(at=NOW + 1), sender="sys.a")
        intake.heartbeat(beat(at=NOW + 1), sender="sys.b")
        # Then b is applied by the other thread; a's second waits for its first
        wait_for(lambda: ("sys.b", iso(NOW + 1)) in applied)
        assert ("sys.a", iso(NOW + 1)) not in applied
        release.set()
        wait_for(lambda: intake.idle and len(applied) == 3)
    finally:
        release.set()
        intake.stop()
    assert overlaps == []
    assert applied[-1] == ("sys.a", iso(NOW + 1))


def test_a_failing_heartbeat_is_logged_and_the_next_one_is_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an apply that fails for agent a
    recorder = Recorder()

    def apply(message: Any, sender: Any) -> None:
        if sender == "sys.a":
            raise RuntimeError("store exploded")
        recorder(message, sender)

    intake = HeartbeatIntake(apply)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    intake.heartbeat(beat(at=NOW), sender="sys.b")
    # When both are applied
    with caplog.at_level(logging.ERROR, logger="dispatcher.heartbeat_intake"):
        assert intake.drain() == 2
    # Then a's failure is logged and b's heartbeat applied
    assert "could not apply the heartbeat of a" in caplog.text
    assert recorder.applied == [("sys.b", iso(NOW))]


def test_heartbeats_pending_at_stop_are_dropped() -> None:
    # Given a pending heartbeat
    recorder = Recorder()
    intake = HeartbeatIntake(recorder)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    # When the intake stops, Then nothing is pending and nothing was applied
    intake.stop()
    assert intake.pending == 0
    assert intake.drain() == 0
    assert recorder.applied == []


def test_the_coalesced_heartbeat_leaves_the_state_of_the_latest_snapshot(
    handler: HeartbeatHandler, store: Store, clock: FakeClock
) -> None:
    # Given eeagent_1 holding p1 PENDING and p2 RUNNING, a few seconds ago
    bring_up(handler)
    clock.advance(5)
    put_process(store, "p1", ProcessState.PENDING, assigned="eeagent_1")
    put_process(store, "p2", ProcessState.RUNNING, assigned="eeagent_1")
    intake = HeartbeatIntake(handler.heartbeat)
    # When three snapshots are fired before any is applied: p1 starts, then p2 exits
    intake.heartbeat(
        beat(
            [report("p1", "0", [500, "RUNNING"]), report("p2", "0", [500, "RUNNING"])], at=NOW + 1
        ),
        "sys.eeagent_1",
    )
    intake.heartbeat({"timestamp": "junk", "processes": []}, "sys.eeagent_1")
    intake.heartbeat(
        beat([report("p1", "0", [500, "RUNNING"]), report("p2", "0", [800, "EXITED"])], at=NOW + 2),
        "sys.eeagent_1",
    )
    assert intake.drain() == 1
    # Then the store holds what the latest snapshot says
    p1, p2 = store.get_process("p1"), store.get_process("p2")
    assert p1 is not None and p1.state == ProcessState.RUNNING
    assert p2 is not None and p2.state == ProcessState.EXITED
    resource = store.get_resource("eeagent_1")
    assert resource is not None
    assert resource.last_heartbeat == iso(NOW + 2)
    assert resource.assigned == [("p1", 0)]


wait_for = waiter(30.0)


def test_an_agent_beating_faster_than_it_is_applied_is_applied_once_per_pace() -> None:
    # Given an intake pacing at 0.5 s on a fake clock, a's first heartbeat applied
    clock = FakeClock(0.0)
    recorder = Recorder()
    intake = HeartbeatIntake(recorder, pace=0.5, clock=clock)
    intake.heartbeat(beat(at=NOW), sender="sys.a")
    assert intake.drain(paced=True) == 1
    # When a beats twice more at once (the second replaces the first), and b once
    intake.heartbeat(beat(at=NOW + 1), sender="sys.a")
    intake.heartbeat(beat(at=NOW + 2), sender="sys.a")
    intake.heartbeat(beat(at=NOW), sender="sys.b")
    # Then b is due at once, a only once the pace has passed since its last one
    assert intake.drain(paced=True) == 1
    assert recorder.applied[-1] == ("sys.b", iso(NOW))
    clock.advance(0.4)
    assert intake.drain(paced=True) == 0
    clock.advance(0.1)
    assert intake.drain(paced=True) == 1
    assert recorder.applied[-1] == ("sys.a", iso(NOW + 2))
    # and an agent that beats no faster than it is applied is never held back
    intake.heartbeat(beat(at=NOW + 3), sender="sys.a")
    assert intake.drain(paced=True) == 1
