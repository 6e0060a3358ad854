"""The log budget of ended rounds: the pure plan, and the agent applying it
(against the in-memory backend, with the hand-moved clock)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.logbudget import CHECK_INTERVAL, EndedLogs, LogBudget, LogDrop, plan_drops
from eeagent.persistence import StateStore
from eeagent.records import OUTPUT_TAIL
from pdcommon.states import ProcessState
from tests.eeagent.conftest import NOW, FakeClock, sleeper

KIB = 1024
BUDGET = LogBudget(max_bytes=10 * KIB, max_age=3600.0)

# -- the plan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ended", "drops"),
    [
        # within both limits: nothing
        ([("a", NOW - 10, 4 * KIB), ("b", NOW - 5, 6 * KIB)], []),
        # over the size: the oldest end goes first, only as many as needed
        (
            [("new", NOW - 1, 4 * KIB), ("old", NOW - 30, 4 * KIB), ("mid", NOW - 20, 4 * KIB)],
            [LogDrop("old", "size", 4 * KIB)],
        ),
        # one round bigger than the whole budget goes, even if it is the newest
        (
            [("a", NOW - 30, 1 * KIB), ("big", NOW - 1, 11 * KIB)],
            [
                LogDrop("a", "size", 1 * KIB),
                LogDrop("big", "size", 11 * KIB),
            ],
        ),
        # too old: dropped whatever the size, and then no longer counted
        (
            [("aged", NOW - 3600, 9 * KIB), ("fresh", NOW - 3599, 2 * KIB)],
            [LogDrop("aged", "age", 9 * KIB)],
        ),
        # empty files free nothing: left alone, even when old
        ([("empty", NOW - 7200, 0)], []),
    ],
)
def test_the_plan_drops_aged_rounds_then_the_oldest_until_within_the_size(
    ended: list[tuple[str, float, int]], drops: list[LogDrop]
) -> None:
    assert plan_drops([EndedLogs(*item) for item in ended], NOW, BUDGET) == drops


ended_logs = st.lists(
    st.builds(
        EndedLogs,
        name=st.uuids().map(str),
        ended_at=st.floats(NOW - 10_000, NOW),
        size=st.integers(0, 20 * KIB),
    ),
    max_size=30,
)


@given(ended=ended_logs)
def test_what_the_plan_keeps_is_within_the_budget_and_it_drops_no_more_than_needed(
    ended: list[EndedLogs],
) -> None:
    drops = plan_drops(ended, NOW, BUDGET)
    dropped = {drop.name for drop in drops}
    kept = [logs for logs in ended if logs.name not in dropped and logs.size > 0]
    # Then nothing kept is too old, and the kept ones fit
    assert all(NOW - logs.ended_at < BUDGET.max_age for logs in kept)
    assert sum(logs.size for logs in kept) <= BUDGET.max_bytes
    # And the rounds dropped for size ended no later than any kept, and keeping the
    # last of them would have broken the budget
    by_size = [drop for drop in drops if drop.reason == "size"]
    if by_size:
        ends = {logs.name: logs.ended_at for logs in ended}
        newest_dropped = max(ends[drop.name] for drop in by_size)
        assert all(newest_dropped <= logs.ended_at for logs in kept)
        assert sum(logs.size for logs in kept) + by_size[-1].size > BUDGET.max_bytes


@pytest.mark.parametrize(
    ("max_bytes", "max_age", "message"),
    [
        (0, 60.0, "max_bytes must be greater than 0"),
        (True, 60.0, "max_bytes must be an integer"),
        (100, 0.0, "max_age must be a positive number"),
        (100, float("inf"), "max_age must be a positive number"),
    ],
)
def test_a_budget_with_a_bad_limit_is_refused(max_bytes: int, max_age: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LogBudget(max_bytes=max_bytes, max_age=max_age)


# -- the agent --------------------------------------------------------------------


def budget_agent(
    control: FakeProcessControl, clock: FakeClock, tmp_path: Path, budget: LogBudget = BUDGET
) -> EEAgent:
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=8,
        control=control,
        store=StateStore(tmp_path / "state.json"),
        default_directory=str(tmp_path),
        clock=clock,
        log_budget=budget,
    )
    agent.open()
    return agent


def end_round(
    agent: EEAgent, control: FakeProcessControl, upid: str, size: int, status: int = 0
) -> None:
    """Run ``upid`` round 1, give it ``size`` bytes of output, let it exit."""
    agent.launch_process(upid, 1, "supd", sleeper())
    control.write_log(f"{upid}-1", "stdout", b"o" * (size - size // 2))
    control.write_log(f"{upid}-1", "stderr", b"e" * (size // 2 - 4) + b"end\n")
    control.exit(f"{upid}-1", status)
    agent.poll()


def dropped(agent: EEAgent) -> list[str]:
    return [record.upid for record in agent.records() if record.logs_dropped]


@pytest.fixture
def agent(control: FakeProcessControl, clock: FakeClock, tmp_path: Path) -> EEAgent:
    return budget_agent(control, clock, tmp_path)


def test_an_ended_round_records_when_it_ended(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    assert agent.record("p1", 1).ended_at is None  # type: ignore[union-attr]
    clock.advance(42)
    control.exit("p1-1", 3)
    agent.poll()
    assert agent.record("p1", 1).ended_at == NOW + 42  # type: ignore[union-attr]


def test_beyond_the_size_the_oldest_ended_rounds_lose_their_logs_first(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    # Given three ended rounds of 4 KiB each, ended one after the other, within 10 KiB
    for upid in ("first", "second"):
        end_round(agent, control, upid, 4 * KIB)
        clock.advance(1)
    assert dropped(agent) == []
    # When a third one ends
    end_round(agent, control, "third", 4 * KIB)
    # Then the oldest lost its logs at once, and only it
    assert dropped(agent) == ["first"]
    assert control.log_size("first-1") == 0
    assert control.log_size("second-1") == control.log_size("third-1") == 4 * KIB
    # And its program is still registered and its record still reported
    assert control.state_of("first-1") is not None
    assert [entry["upid"] for entry in agent.heartbeat()["processes"]] == [
        "first",
        "second",
        "third",
    ]


def test_live_rounds_logs_are_neither_counted_nor_touched(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a running process with far more output than the budget
    agent.launch_process("live", 1, "supd", sleeper())
    control.write_log("live-1", "stdout", b"x" * (50 * KIB))
    # When a small round ends and the budget is checked
    end_round(agent, control, "small", 2 * KIB)
    # Then neither loses its logs: the live one does not count
    assert dropped(agent) == []
    assert control.log_size("live-1") == 50 * KIB


def test_rounds_that_ended_longer_ago_than_the_age_limit_lose_their_logs(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    end_round(agent, control, "old", 1 * KIB)
    clock.advance(1000)
    end_round(agent, control, "young", 1 * KIB)
    # When the old one's age passes the limit, it goes at the next check
    clock.advance(BUDGET.max_age - 1000)
    agent.poll()
    assert dropped(agent) == ["old"]
    assert control.log_size("young-1") == 1 * KIB


def test_the_budget_is_checked_every_few_seconds_when_no_round_ends(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    end_round(agent, control, "p1", 1 * KIB)
    clock.advance(BUDGET.max_age - 1)
    agent.poll()  # a check: not old enough yet
    control.calls.clear()
    # When it is old enough, but the next check is not due
    clock.advance(CHECK_INTERVAL / 2)
    agent.poll()
    # Then nothing was measured or dropped
    assert "log_size" not in control.calls and dropped(agent) == []
    # And once it is due, the round loses its logs
    clock.advance(CHECK_INTERVAL / 2)
    agent.poll()
    assert dropped(agent) == ["p1"]


def test_a_drop_is_logged_at_info_with_its_reason(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eeagent.agent")
    end_round(agent, control, "big", 11 * KIB)
    end_round(agent, control, "aged", 1 * KIB)
    clock.advance(BUDGET.max_age)
    agent.poll()
    lines = [r.getMessage() for r in caplog.records if "deleted its log files" in r.message]
    assert len(lines) == 2
    assert lines[0].startswith("big round 1: deleted its log files (11264 bytes")
    assert "eeagent.ended_logs_max_bytes (10240 bytes)" in lines[0]
    assert lines[1].startswith("aged round 1: deleted its log files (1024 bytes")
    assert "eeagent.ended_logs_max_age: 3600s" in lines[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if "deleted" in r.message)


def test_get_process_logs_of_a_round_that_lost_its_logs_answers_with_the_kept_tail(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a round with more output than the tail kept, dropped for size
    end_round(agent, control, "p1", 11 * KIB, status=3)
    assert dropped(agent) == ["p1"]
    # Then its logs are the tail kept when it ended, never an error
    stderr = agent.get_process_logs("p1", 1, "stderr")
    assert stderr.endswith("end\n") and len(stderr.encode()) == OUTPUT_TAIL
    assert agent.get_process_logs("p1", 1, "stdout", 10) == "o" * 10
    assert agent.get_process_logs("p1", 1, "stderr", 0) == ""
    # And the heartbeat still carries the same tail
    entry = agent.heartbeat()["processes"][0]
    assert entry["state"] == [850, "FAILED"] and entry["output"]["stderr"] == stderr


def test_a_kept_tail_cut_inside_a_character_drops_the_character(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.write_log("p1-1", "stdout", b"x" * (11 * KIB) + "aé€".encode())
    control.exit("p1-1", 0)
    agent.poll()
    assert dropped(agent) == ["p1"]
    assert agent.get_process_logs("p1", 1, "stdout", 4) == "€"
    assert agent.get_process_logs("p1", 1, "stdout", 5) == "é€"
    assert agent.get_process_logs("p1", 1, "stdout", 7) == "xaé€"


def test_a_round_that_ended_without_a_kept_tail_gets_one_before_its_logs_go(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a running process with more output than the budget
    agent.launch_process("p1", 1, "supd", sleeper())
    control.write_log("p1-1", "stderr", b"." * (11 * KIB) + b"last words\n")
    # When its supervisord dies: it is reported lost (no tail taken), its files stay
    control.crash()
    agent.poll()
    record = agent.record("p1", 1)
    assert record is not None and record.state == ProcessState.FAILED
    # Then it lost its logs for size, but kept their tail first
    assert record.logs_dropped and control.log_size("p1-1") == 0
    assert record.output is not None and record.output["stderr"].endswith(".last words\n")
    assert agent.get_process_logs("p1", 1, "stderr", 11) == "last words\n"


def test_ended_at_and_dropped_logs_survive_an_agent_restart(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock, tmp_path: Path
) -> None:
    end_round(agent, control, "big", 11 * KIB)
    end_round(agent, control, "small", 1 * KIB)
    clock.advance(60)
    # When the agent restarts over the same state file
    again = budget_agent(control, clock, tmp_path)
    # Then the ends and the drops are as before
    big, small = again.record("big", 1), again.record("small", 1)
    assert big is not None and small is not None
    assert (big.ended_at, big.logs_dropped) == (NOW, True)
    assert (small.ended_at, small.logs_dropped) == (NOW, False)
    assert again.get_process_logs("big", 1, "stderr", 4) == "end\n"


def test_a_state_file_without_ended_at_loads_and_ages_from_the_restart(
    control: FakeProcessControl, clock: FakeClock, tmp_path: Path
) -> None:
    # Given a state file written before ended_at existed, with an ended round
    first = budget_agent(control, clock, tmp_path)
    end_round(first, control, "p1", 1 * KIB)
    path = tmp_path / "state.json"
    saved = json.loads(path.read_text())
    for process in saved["processes"]:
        del process["ended_at"], process["logs_dropped"]
    path.write_text(json.dumps(saved))
    clock.advance(100)
    # When an agent starts over it
    again = budget_agent(control, clock, tmp_path)
    # Then the round ended, as far as the budget knows, at the restart
    record = again.record("p1", 1)
    assert record is not None and record.ended_at == NOW + 100 and not record.logs_dropped
    clock.advance(BUDGET.max_age - 1)
    again.poll()
    assert dropped(again) == []
    clock.advance(CHECK_INTERVAL)
    again.poll()
    assert dropped(again) == ["p1"]


def test_cleanup_of_a_round_that_lost_its_logs_forgets_it(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    end_round(agent, control, "p1", 11 * KIB)
    agent.cleanup("p1", 1)
    assert agent.record("p1", 1) is None and control.state_of("p1-1") is None
