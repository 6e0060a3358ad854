"""Schedule rules of issue "why did my process fail": a changed definition, the new
optional arguments, the event history, and the restart policy's arithmetic."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError, NotFoundError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.restart_policy import decide_restart, effective_policy
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import RestartPolicySettings
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process

S = ProcessState


@pytest.fixture
def other(core: ProcessDispatcherCore) -> str:
    core.create_definition("other", "supd", {"exec": "/bin/echo", "argv": ["other"]})
    return "other"


# -- definitions on schedule -------------------------------------------------------------


@pytest.mark.parametrize("state", [S.TERMINATED, S.EXITED, S.FAILED, S.REJECTED])
def test_scheduling_an_ended_process_with_another_definition_runs_the_new_one(
    core: ProcessDispatcherCore, store: MemoryStore, other: str, state: str
) -> None:
    put_process(store, "p1", state, round_=2)
    result = core.schedule_process("p1", other)
    assert (result["state"], result["round"]) == (S.REQUESTED, 3)
    record = core.describe_process("p1")
    assert record is not None and record["definition"]["definition_id"] == other
    assert record["definition"]["executable"] == {"exec": "/bin/echo", "argv": ["other"]}
    events = core.describe_process_events("p1")
    assert events[-1]["reason"] == f"definition changed from {DEFINITION_ID} to {other}"
    assert (events[-1]["state"], events[-1]["round"]) == (S.REQUESTED, 3)


def test_an_unknown_new_definition_is_not_found_and_writes_nothing(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    put_process(store, "p1", S.TERMINATED, round_=2)
    before = store.get_process("p1")
    with pytest.raises(NotFoundError):
        core.schedule_process("p1", "nope")
    assert store.get_process("p1") == before


@pytest.mark.parametrize("state", [S.REQUESTED, S.WAITING, S.RUNNING])
def test_an_in_play_process_refuses_another_definition(
    core: ProcessDispatcherCore, store: MemoryStore, other: str, state: str
) -> None:
    put_process(store, "p1", state, round_=1, configuration=None)
    before = store.get_process("p1")
    with pytest.raises(BadRequestError, match="definition_id parameter value doesn't match"):
        core.schedule_process("p1", other)
    assert store.get_process("p1") == before
    # the same definition (or none) is still an idempotent repeat
    assert core.schedule_process("p1", DEFINITION_ID)["state"] == state
    assert core.schedule_process("p1")["state"] == state


# -- new arguments and keys --------------------------------------------------------------


def test_schedule_stores_the_policy_and_runtime_and_describe_shows_the_mode(
    core: ProcessDispatcherCore,
) -> None:
    core.schedule_process(
        "p1", DEFINITION_ID, restart_policy={"failure_limit": 3}, max_runtime_seconds=30
    )
    record = core.describe_process("p1")
    assert record is not None
    assert record["restart_policy"] == {"failure_limit": 3}
    assert record["max_runtime_seconds"] == 30
    assert record["restart_mode"] is None  # the legacy key is unchanged
    assert record["effective_restart_mode"] == "ABNORMAL"
    assert (record["restarts"], record["exit_code"], record["reason"]) == (0, None, None)
    # a repeat with another policy is refused like any differing parameter
    with pytest.raises(BadRequestError, match="restart_policy"):
        core.schedule_process("p1", DEFINITION_ID, restart_policy={"failure_limit": 4})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"restart_policy": {"bogus": 1}}, "unknown key"),
        ({"restart_policy": {"failure_limit": -1}}, "failure_limit"),
        ({"restart_policy": [1]}, "must be an object"),
        ({"max_runtime_seconds": 0}, "max_runtime_seconds"),
        ({"max_runtime_seconds": "10"}, "max_runtime_seconds"),
    ],
)
def test_bad_new_arguments_are_refused_and_write_nothing(
    core: ProcessDispatcherCore, store: MemoryStore, arguments: dict, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        core.schedule_process("p1", DEFINITION_ID, **arguments)
    assert store.get_process("p1") is None


def test_events_record_each_state_change_and_respect_the_limit(
    core: ProcessDispatcherCore,
) -> None:
    core.schedule_process("p1", DEFINITION_ID)
    core.terminate_process("p1")
    core.schedule_process("p1", DEFINITION_ID)
    events = core.describe_process_events("p1")
    assert [(e["state"], e["round"], e["reason"]) for e in events] == [
        (S.REQUESTED, 0, "scheduled"),
        (S.TERMINATED, 0, "terminated by terminate_process"),
        (S.REQUESTED, 1, None),
    ]
    assert [e["state"] for e in core.describe_process_events("p1", limit=1)] == [S.REQUESTED]
    with pytest.raises(NotFoundError):
        core.describe_process_events("nobody")
    with pytest.raises(BadRequestError, match="limit"):
        core.describe_process_events("p1", limit=0)


# -- the policy's arithmetic -------------------------------------------------------------


def test_delays_double_up_to_the_maximum_and_the_limit_counts_within_the_interval() -> None:
    policy = RestartPolicySettings(
        initial_delay=1, max_delay=5, failure_limit=5, interval=60, jitter=0
    )
    times: list[float] = []
    delays = []
    for n in range(4):
        decision = decide_restart(policy, times, 100.0 + n)
        assert not decision.give_up
        delays.append(decision.delay)
        times = decision.failure_times
    assert delays == [1, 2, 4, 5]
    # the 5th within 60 s gives up
    final = decide_restart(policy, times, 104.0)
    assert final.give_up and final.reason == "restart limit reached: 5 failures in 60 s"
    # but failures older than the interval no longer count
    later = decide_restart(policy, times, 170.0)
    assert not later.give_up and later.delay == 1 and later.failure_times == [170.0]


def test_jitter_stays_within_its_fraction() -> None:
    policy = RestartPolicySettings(initial_delay=10, jitter=0.2)
    assert decide_restart(policy, [], 0.0, lambda: 0.0).delay == 8.0
    assert decide_restart(policy, [], 0.0, lambda: 0.999999).delay == pytest.approx(12.0)


def test_the_process_policy_overrides_the_engine_which_overrides_the_default() -> None:
    default = RestartPolicySettings()
    engine = RestartPolicySettings(failure_limit=3)
    assert effective_policy(default).failure_limit == default.failure_limit
    assert effective_policy(default, engine).failure_limit == 3
    own = effective_policy(default, engine, {"max_delay": 7})
    assert (own.failure_limit, own.max_delay) == (3, 7)
