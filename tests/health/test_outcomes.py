"""Why a round ended: the exit code, reason and output an agent reports are kept on
the record and in its events; the restart policy backs off and gives up; the culler
ends rounds that run too long."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.culler import Culler
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.settings import RestartPolicySettings
from pdcommon.states import ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    NOW,
    FakeClock,
    beat,
    bring_up,
    orders,
    process,
    put_process,
    report,
)
from tests.support.wiring import Health, make_heartbeats

S = ProcessState


def ended(upid: str, round_: int, state: str, msg: str, **extra: Any) -> dict[str, Any]:
    return {**report(upid, round_, state), "msg": msg, **extra}


def send(handler: HeartbeatHandler, *entries: dict[str, Any], at: float) -> None:
    handler.heartbeat(beat(list(entries), at=at), sender="sys.eeagent_1")


@pytest.fixture
def policy_handler(
    store: Store,
    messenger: RecordingMessenger,
    engines: Any,
    clock: FakeClock,
    parts: Health,
) -> HeartbeatHandler:
    """A handler whose restart policy is 1 s doubling to 8 s, giving up at the 4th end
    within 100 s, without jitter."""
    policy = RestartPolicySettings(
        initial_delay=1, max_delay=8, failure_limit=4, interval=100, jitter=0
    )
    handler = make_heartbeats(
        store, messenger, engines, clock=clock, parts=parts, restart_policy=policy
    )
    bring_up(handler)
    return handler


@BOTH_STORES
def test_an_exit_is_kept_with_its_code_reason_output_and_event(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock, parts: Health
) -> None:
    # Given a RUNNING process that is never restarted
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    # When its agent reports it exited 3, with the end of its stderr
    clock.advance(5)
    output = {"stdout": "", "stderr": "bad config\n"}
    send(
        policy_handler,
        ended("p1", 0, "850-FAILED", "exited with code 3", exit_code=3, output=output),
        at=clock.now,
    )
    # Then the record says how and when it ended
    record = process(store, "p1")
    assert (record.state, record.exit_code, record.reason) == (
        S.FAILED,
        3,
        "exited with code 3",
    )
    assert record.ended_at == clock.now and record.assigned is None
    # And its last event keeps the output, the agent and its node
    last = parts.transitions.events.list("p1", 1)[0]
    assert last["state"] == S.FAILED and last["output"] == output
    assert (last["agent"], last["node"], last["exit_code"]) == ("eeagent_1", "node1", 3)


@BOTH_STORES
def test_a_kill_by_a_signal_is_kept_with_the_signal_and_no_exit_code(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock, parts: Health
) -> None:
    # Given a RUNNING process that is never restarted
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    # When its agent reports it was killed by SIGKILL
    clock.advance(5)
    reason = "killed by signal SIGKILL (9)"
    send(policy_handler, ended("p1", 0, "850-FAILED", reason, signal=9), at=clock.now)
    # Then the record and its last event say so
    record = process(store, "p1")
    assert (record.state, record.exit_code, record.signal, record.reason) == (
        S.FAILED,
        None,
        9,
        reason,
    )
    last = parts.transitions.events.list("p1", 1)[0]
    assert (last["state"], last["exit_code"], last["signal"], last["reason"]) == (
        S.FAILED,
        None,
        9,
        reason,
    )


@BOTH_STORES
def test_a_crash_loop_backs_off_with_growing_delays_then_gives_up(
    store: Store,
    policy_handler: HeartbeatHandler,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a RUNNING process with the default restart mode (ABNORMAL)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    delays = []
    for round_ in range(3):
        # When its round fails
        clock.advance(2)
        send(policy_handler, ended("p1", round_, "850-FAILED", "exited with code 1"), at=clock.now)
        record = process(store, "p1")
        # Then it goes round again, backing off
        assert (record.state, record.round, record.restarts) == (
            S.DIED_REQUESTED,
            round_ + 1,
            round_ + 1,
        )
        assert record.next_restart_at is not None
        delays.append(record.next_restart_at - clock.now)
        # (it comes back on the agent)
        record.state, record.assigned = S.RUNNING, "eeagent_1"
        store.update_process(record)
        resource = store.get_resource("eeagent_1")
        assert resource is not None
        resource.assigned = [("p1", round_ + 1)]
        store.update_resource(resource)
    assert delays == [1.0, 2.0, 4.0]
    # When the 4th failure within the interval comes
    clock.advance(2)
    with caplog.at_level("WARNING"):
        send(policy_handler, ended("p1", 3, "850-FAILED", "exited with code 1"), at=clock.now)
    # Then it is FAILED for good, with the reason, logged at WARNING
    record = process(store, "p1")
    assert (record.state, record.round) == (S.FAILED, 3)
    assert record.reason == "restart limit reached: 4 failures in 100 s"
    assert "restart limit reached" in caplog.text


def test_the_backoff_holds_the_next_round_until_its_time(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock, parts: Health
) -> None:
    from dispatcher.placement import Wait, plan
    from tests.health.conftest import make_engines

    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    send(policy_handler, ended("p1", 0, "850-FAILED", "exited with code 1"), at=clock.now)
    record = process(store, "p1")
    assert record.next_restart_at == clock.now + 1
    decided = plan(
        [("p1", 1)],
        {"p1": record},
        store.list_resources(),
        {n.node_id: n for n in store.list_nodes()},
        make_engines(),
        now=clock.now,
    )
    assert decided.decisions[0] == Wait("p1", 1, S.WAITING, clock.now + 1)
    assert decided.throttle_expiry == clock.now + 1


def test_the_legacy_policy_restarts_for_ever_at_once(
    store: Store, messenger: RecordingMessenger, engines: Any, clock: FakeClock, parts: Health
) -> None:
    legacy = RestartPolicySettings(initial_delay=0, failure_limit=0)
    handler = make_heartbeats(
        store, messenger, engines, clock=clock, parts=parts, restart_policy=legacy
    )
    bring_up(handler)
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1")
    for round_ in range(30):
        record = process(store, "p1")
        record.state, record.assigned = S.RUNNING, "eeagent_1"
        store.update_process(record)
        send(handler, ended("p1", round_, "850-FAILED", "exited with code 1"), at=clock.now)
        assert process(store, "p1").state == S.DIED_REQUESTED
        assert process(store, "p1").next_restart_at == clock.now
    assert process(store, "p1").restarts == 30


def test_a_process_policy_overrides_the_default(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock
) -> None:
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", restart_policy={"failure_limit": 1})
    send(policy_handler, ended("p1", 0, "850-FAILED", "exited with code 1"), at=clock.now)
    record = process(store, "p1")
    assert record.state == S.FAILED
    assert record.reason == "restart limit reached: 1 failures in 100 s"


def test_the_culler_terminates_a_round_past_its_limit_and_it_is_not_restarted(
    store: Store,
    policy_handler: HeartbeatHandler,
    messenger: RecordingMessenger,
    clock: FakeClock,
    parts: Health,
) -> None:
    # Given two processes RUNNING since NOW, one limited to 10 s
    put_process(
        store, "p1", S.RUNNING, assigned="eeagent_1", max_runtime_seconds=10, started_at=NOW
    )
    put_process(store, "p2", S.RUNNING, assigned="eeagent_1", started_at=NOW)
    culler = Culler(store, messenger, parts.transitions, clock=clock)
    # When the culler looks before the limit, Then nothing happens, and it looks again then
    clock.now = NOW + 5
    assert culler.run(clock.now) == 0
    assert culler.next_due() == NOW + 7  # its regular look comes first
    # When it looks after the limit
    clock.now = NOW + 11
    assert culler.run(clock.now) == 1
    # Then p1 is TERMINATING with the reason, and its agent told to terminate it
    record = process(store, "p1")
    assert record.state == S.TERMINATING
    assert record.reason == "max runtime exceeded: ran 11 s (limit 10 s)"
    assert ("terminate_process", "p1", 0) in orders(messenger)
    assert process(store, "p2").state == S.RUNNING
    # When the agent reports it terminated, Then it stays TERMINATED with the reason
    send(policy_handler, ended("p1", 0, "700-TERMINATED", "None"), at=clock.now)
    record = process(store, "p1")
    assert (record.state, record.reason) == (
        S.TERMINATED,
        "max runtime exceeded: ran 11 s (limit 10 s)",
    )


def test_the_global_max_process_age_applies_to_every_process(
    store: Store, messenger: RecordingMessenger, clock: FakeClock, parts: Health
) -> None:
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", started_at=NOW)
    put_process(
        store, "p2", S.RUNNING, assigned="eeagent_1", started_at=NOW, max_runtime_seconds=100
    )
    culler = Culler(store, messenger, parts.transitions, clock=clock, max_process_age=50)
    assert culler.run(NOW + 60) == 2
    assert process(store, "p2").reason == "max runtime exceeded: ran 60 s (limit 50 s)"


def test_a_backoff_waits_even_with_queueing_mode_never(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock
) -> None:
    from dispatcher.placement import Wait, plan
    from tests.health.conftest import make_engines

    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", queueing_mode="NEVER", starts=1)
    send(policy_handler, ended("p1", 0, "850-FAILED", "exited with code 1"), at=clock.now)
    record = process(store, "p1")
    decided = plan(
        [("p1", 1)],
        {"p1": record},
        store.list_resources(),
        {n.node_id: n for n in store.list_nodes()},
        make_engines(),
        now=clock.now,
    )
    assert decided.decisions[0] == Wait("p1", 1, S.WAITING, clock.now + 1)


@BOTH_STORES
@pytest.mark.parametrize(
    ("sent", "kept"),
    [(NOW + 2, NOW + 2), (None, None), ("yesterday", None), (float("nan"), None), (True, None)],
    ids=["reported", "absent", "a-string", "nan", "a-bool"],
)
def test_a_round_ending_before_it_was_seen_running_takes_the_agents_start_time(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock, sent: Any, kept: Any
) -> None:
    # Given a process its agent has not yet reported running
    put_process(store, "p1", S.PENDING, assigned="eeagent_1", restart_mode="NEVER")
    # When the agent reports it already exited 3, saying when it began
    clock.advance(5)
    extra = {} if sent is None else {"started_at": sent}
    send(
        policy_handler,
        ended("p1", 0, "850-FAILED", "exited with code 3", exit_code=3, **extra),
        at=clock.now,
    )
    # Then the record keeps that start (a bad or missing value is no start)
    record = process(store, "p1")
    assert (record.state, record.exit_code) == (S.FAILED, 3)
    assert record.started_at == kept
    assert record.ended_at == clock.now


@BOTH_STORES
def test_a_round_seen_running_keeps_its_own_start_time(
    store: Store, policy_handler: HeartbeatHandler, clock: FakeClock
) -> None:
    put_process(store, "p1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER", started_at=NOW)
    clock.advance(5)
    send(
        policy_handler,
        ended("p1", 0, "850-FAILED", "exited with code 3", exit_code=3, started_at=NOW + 1),
        at=clock.now,
    )
    assert process(store, "p1").started_at == NOW
