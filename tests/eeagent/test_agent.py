"""The agent's request rules and state machine, against the in-memory backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from dashi.errors import BadRequestError, NotFoundError
from eeagent.agent import EEAgent
from eeagent.control import ProgramState
from eeagent.fake import FakeProcessControl
from eeagent.persistence import StateStore
from eeagent.table import MAX_REMEMBERED_TERMINATES, REMEMBER_TERMINATE_SECONDS, ProcessTable
from eeagent.transitions import RESIGNAL_AFTER, STOP_RACE_WINDOW
from pdcommon.states import ProcessState
from tests.eeagent.conftest import NOW, Changes, FakeClock, sleeper

RUNNING, EXITED, FAILED = ProcessState.RUNNING, ProcessState.EXITED, ProcessState.FAILED
TERMINATING, TERMINATED = ProcessState.TERMINATING, ProcessState.TERMINATED
REJECTED, PENDING = ProcessState.REJECTED, ProcessState.PENDING


def state(agent: EEAgent, upid: str, round: int) -> str | None:
    record = agent.record(upid, round)
    return record.state if record else None


# -- launch -----------------------------------------------------------------------


def test_a_launched_process_is_reported_running_and_announced(
    agent: EEAgent, control: FakeProcessControl, changes: Changes
) -> None:
    before = changes.count
    agent.launch_process("p1", 1, "supd", sleeper())
    assert state(agent, "p1", 1) == RUNNING
    assert control.state_of("p1-1") is ProgramState.RUNNING
    assert control.programs["p1-1"].spec.argv == ("sleep", "600")
    assert changes.count > before


def test_a_duplicate_launch_of_the_same_round_is_ignored(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", 0)
    agent.poll()
    agent.launch_process("p1", 1, "supd", sleeper())
    assert control.calls.count("start") == 1
    assert state(agent, "p1", 1) == EXITED


def test_a_launch_of_an_older_round_is_ignored(agent: EEAgent, control: FakeProcessControl) -> None:
    agent.launch_process("p1", 2, "supd", sleeper())
    agent.launch_process("p1", 1, "supd", sleeper())
    assert agent.record("p1", 1) is None
    assert control.calls.count("start") == 1


def test_a_newer_round_replaces_the_old_one_after_it_stopped(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a running round 1 whose stop takes a while
    agent.launch_process("p1", 1, "supd", sleeper())
    control.lose_stops = True
    # When round 2 arrives
    agent.launch_process("p1", 2, "supd", sleeper())
    # Then round 1 is stopping and forgotten, round 2 waits for it
    assert agent.record("p1", 1) is None
    assert control.state_of("p1-1") is ProgramState.STOPPING
    assert state(agent, "p1", 2) == PENDING
    assert control.state_of("p1-2") is None
    # When round 1 has stopped, round 2 starts and round 1's program is removed
    control.resignal("p1-1")
    agent.poll()
    assert control.state_of("p1-1") is None
    assert state(agent, "p1", 2) == RUNNING
    assert [p["upid"] for p in agent.heartbeat()["processes"]] == ["p1"]


def test_a_rejected_launch_is_admitted_when_sent_again_with_a_free_slot(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    for upid in ("a", "b", "c"):
        agent.launch_process(upid, 1, "supd", sleeper())
    agent.launch_process("d", 1, "supd", sleeper())
    assert state(agent, "d", 1) == REJECTED
    agent.terminate_process("a", 1)
    agent.poll()
    agent.launch_process("d", 1, "supd", sleeper())
    assert state(agent, "d", 1) == RUNNING


def test_a_launch_beyond_the_slots_is_rejected_with_a_reason(agent: EEAgent) -> None:
    for upid in ("a", "b", "c"):
        agent.launch_process(upid, 1, "supd", sleeper())
    agent.launch_process("d", 1, "supd", sleeper())
    record = agent.record("d", 1)
    assert record is not None and record.state == REJECTED
    assert record.msg == "no free slot: all 3 slots are in use"


def test_finished_processes_do_not_hold_slots(agent: EEAgent, control: FakeProcessControl) -> None:
    for upid in ("a", "b", "c"):
        agent.launch_process(upid, 1, "supd", sleeper())
    control.exit("a-1", 0)
    control.exit("b-1", 4)
    agent.poll()
    agent.launch_process("d", 1, "supd", sleeper())
    agent.launch_process("e", 1, "supd", sleeper())
    assert state(agent, "d", 1) == RUNNING
    assert state(agent, "e", 1) == RUNNING


def test_an_unknown_run_type_fails_with_the_reason(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "pyon_single", {"name": "x", "module": "m", "cls": "C"})
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "unknown run type 'pyon_single': this agent runs 'supd'"
    assert "start" not in control.calls


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        (None, "parameters must be a mapping with at least 'exec', not NoneType"),
        ({"argv": ["x"]}, "invalid parameters: exec: Field required"),
        ({"exec": "ls", "argv": "-l"}, "invalid parameters: argv: Input should be a valid list"),
        ({"exec": "ls", "env": {"A-B": "1"}}, "invalid parameters: env: env name 'A-B'"),
        ({"exec": "ls", "working_directory": "rel"}, "must be an absolute path"),
        ({"exec": "ls", "argv": ["a\rb"]}, "argv[0] contains a NUL or carriage return"),
    ],
)
def test_invalid_parameters_fail_with_the_reason(
    agent: EEAgent, parameters: object, reason: str
) -> None:
    agent.launch_process("p1", 1, "supd", parameters)
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg is not None and reason in record.msg


def test_numbers_in_argv_and_env_are_passed_as_text(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", {"exec": "sleep", "argv": [600], "env": {"N": 7}})
    spec = control.programs["p1-1"].spec
    assert spec.argv == ("sleep", "600")
    assert spec.env == {"N": "7"}


def test_a_process_that_cannot_spawn_fails_with_the_reason(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    control.spawn_errors["/missing"] = "NO_FILE: can't find command '/missing'"
    agent.launch_process("p1", 1, "supd", {"exec": "/missing"})
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: NO_FILE: can't find command '/missing'"


def test_a_missing_working_directory_fails_the_launch(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    control.missing_directories.add("/nowhere")
    agent.launch_process("p1", 1, "supd", {"exec": "true", "working_directory": "/nowhere"})
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: working directory '/nowhere' does not exist"


def test_the_default_working_directory_is_the_agents(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    assert control.programs["p1-1"].spec.working_directory == str(tmp_path)


def test_an_empty_upid_is_a_bad_request(agent: EEAgent) -> None:
    with pytest.raises(BadRequestError, match="u_pid"):
        agent.launch_process("", 1, "supd", sleeper())


def test_a_upid_with_unusual_characters_gets_a_safe_program_name(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("my proc:1/ü", 1, "supd", sleeper())
    record = agent.record("my proc:1/ü", 1)
    assert record is not None and record.program is not None
    assert record.program.endswith("-1")
    assert all(char.isalnum() or char in "-_." for char in record.program)
    assert agent.heartbeat()["processes"][0]["upid"] == "my proc:1/ü"


# -- exits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "signal", "expected", "msg", "exit_code"),
    [
        (0, None, EXITED, "None", 0),
        (3, None, FAILED, "exited with code 3", 3),
        (-1, 9, FAILED, "killed by signal SIGKILL (9)", None),
        (-1, 11, FAILED, "killed by signal SIGSEGV (11)", None),
        (-1, 40, FAILED, "killed by signal 40", None),
        (-1, None, FAILED, "killed by a signal", None),
    ],
)
def test_an_exit_is_reported_by_its_status_or_signal(
    agent: EEAgent,
    control: FakeProcessControl,
    status: int,
    signal: int | None,
    expected: str,
    msg: str,
    exit_code: int | None,
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", status, signal=signal)
    agent.poll()
    record = agent.record("p1", 1)
    assert record is not None and record.state == expected
    # A signal death has a signal and no exit code
    assert (record.exit_code, record.signal) == (exit_code, signal)
    entry = agent.heartbeat()["processes"][0]
    assert entry["msg"] == msg
    assert (entry.get("exit_code"), entry.get("signal")) == (exit_code, signal)


def test_a_process_stopped_by_the_agent_is_terminated_whatever_signal_ended_it(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a running process the dispatcher asked to stop
    agent.launch_process("p1", 1, "supd", sleeper())
    control.lose_stops = True
    agent.terminate_process("p1", 1)
    # When it dies of a signal before the backend counts it stopped
    control.exit("p1-1", -1, signal=15)
    agent.poll()
    # Then it is TERMINATED, not a signal failure, and no signal is reported
    record = agent.record("p1", 1)
    assert record is not None and record.state == TERMINATED
    assert (record.exit_code, record.signal) == (None, None)
    assert "signal" not in agent.heartbeat()["processes"][0]


def test_the_signal_survives_an_agent_restart(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", -1, signal=9)
    agent.poll()
    second = _new_agent(control, tmp_path)
    record = second.record("p1", 1)
    assert record is not None and (record.state, record.signal) == (FAILED, 9)
    assert second.heartbeat()["processes"][0]["signal"] == 9


def test_a_fatal_program_fails_with_supervisords_reason(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.fatal("p1-1", "Exited too quickly")
    agent.poll()
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: Exited too quickly"


def test_a_program_that_vanished_from_the_backend_is_reported_lost(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    del control.programs["p1-1"]
    agent.poll()
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg is not None and record.msg.startswith("lost:")


# -- terminate --------------------------------------------------------------------


def test_terminate_reports_terminating_then_terminated(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.terminate_process("p1", 1)
    assert state(agent, "p1", 1) == TERMINATING
    agent.poll()
    assert state(agent, "p1", 1) == TERMINATED


def test_terminate_of_a_finished_process_does_nothing(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", 0)
    agent.poll()
    agent.terminate_process("p1", 1)
    assert state(agent, "p1", 1) == EXITED
    assert "stop" not in control.calls


def test_a_process_that_exits_before_its_terminate_lands_reports_its_real_end(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", 5)
    agent.terminate_process("p1", 1)
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "exited with code 5"


def test_a_stop_lost_right_after_the_spawn_is_signalled_again(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    # Given a stop sent at spawn time that the process never received
    control.lose_stops = True
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.terminate_process("p1", 1)
    agent.poll()
    assert "resignal" not in control.calls
    # When it is still stopping a little later
    clock.advance(RESIGNAL_AFTER)
    agent.poll()
    # Then the signal is sent once more, and the process ends
    assert control.calls.count("resignal") == 1
    agent.poll()
    assert state(agent, "p1", 1) == TERMINATED


def test_a_process_that_is_slow_to_stop_is_not_signalled_twice(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    clock.advance(STOP_RACE_WINDOW + 1)
    control.lose_stops = True
    agent.terminate_process("p1", 1)
    clock.advance(RESIGNAL_AFTER * 4)
    agent.poll()
    assert "resignal" not in control.calls
    assert state(agent, "p1", 1) == TERMINATING


def test_terminate_of_a_process_waiting_for_its_older_round_ends_it_unstarted(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.lose_stops = True
    agent.launch_process("p1", 2, "supd", sleeper())
    agent.terminate_process("p1", 2)
    control.resignal("p1-1")
    agent.poll()
    record = agent.record("p1", 2)
    assert record is not None and record.state == TERMINATED
    assert control.state_of("p1-2") is None


def test_a_terminate_that_overtakes_its_launch_ends_the_process_unstarted(
    agent: EEAgent, control: FakeProcessControl, changes: Changes
) -> None:
    # Given a terminate of a round the agent was not launched with yet
    before = changes.count
    agent.terminate_process("p1", 1)
    # Then it reports that round terminated at once, and says so
    record = agent.record("p1", 1)
    assert record is not None and record.state == TERMINATED
    assert record.msg == "terminated before it was launched"
    assert changes.count > before
    assert agent.heartbeat()["processes"] == [
        {"upid": "p1", "round": "1", "state": [700, "TERMINATED"], "msg": record.msg}
    ]
    # When the launch arrives, then it is refused: nothing starts
    agent.launch_process("p1", 1, "supd", sleeper())
    assert "start" not in control.calls
    assert state(agent, "p1", 1) == TERMINATED
    assert agent.table.live_count() == 0


def test_a_launch_after_the_cleanup_of_its_early_terminate_is_still_refused(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given a terminate before the launch, reported and cleaned up by the dispatcher
    agent.terminate_process("p1", 1)
    agent.cleanup("p1", 1)
    assert agent.records() == []
    # When the launch arrives late, then it is refused and reported terminated
    agent.launch_process("p1", 1, "supd", sleeper())
    assert "start" not in control.calls
    assert state(agent, "p1", 1) == TERMINATED
    # and a newer round is launched as usual
    agent.launch_process("p1", 2, "supd", sleeper())
    assert state(agent, "p1", 2) == RUNNING


def test_an_early_terminate_is_remembered_across_an_agent_restart(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock, tmp_path: Path
) -> None:
    # Given a terminate before the launch, cleaned up, and the agent restarted
    agent.terminate_process("p1", 1)
    agent.cleanup("p1", 1)
    second = _new_agent(control, tmp_path, clock)
    # When the launch arrives at the new agent, then it is refused
    second.launch_process("p1", 1, "supd", sleeper())
    assert "start" not in control.calls
    record = second.record("p1", 1)
    assert record is not None and record.state == TERMINATED


def test_an_early_terminate_is_forgotten_after_a_while(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock, tmp_path: Path
) -> None:
    agent.terminate_process("p1", 1)
    agent.cleanup("p1", 1)
    clock.advance(REMEMBER_TERMINATE_SECONDS)
    agent.launch_process("p1", 1, "supd", sleeper())
    assert state(agent, "p1", 1) == RUNNING


def test_only_the_latest_early_terminates_are_remembered() -> None:
    # Given more early terminates than a table remembers
    table = ProcessTable("agent1", None, lambda: None)
    for index in range(MAX_REMEMBERED_TERMINATES + 1):
        table.remember_terminate(f"p{index}", 1, NOW + index)
    # Then the oldest is forgotten and the newest is not
    later = NOW + MAX_REMEMBERED_TERMINATES
    assert len(table.terminates) == MAX_REMEMBERED_TERMINATES
    assert not table.terminate_remembered("p0", 1, later)
    assert table.terminate_remembered("p1", 1, later)
    assert table.terminate_remembered(f"p{MAX_REMEMBERED_TERMINATES}", 1, later)


def test_an_early_terminate_of_a_newer_round_stops_the_older_and_refuses_the_restart(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    # Given round 1 running, and a terminate of round 2 before its restart arrives
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.terminate_process("p1", 2)
    agent.poll()
    # Then round 1 is stopped and forgotten, round 2 is reported terminated
    assert agent.record("p1", 1) is None
    assert control.state_of("p1-1") is None
    assert state(agent, "p1", 2) == TERMINATED
    # When the restart arrives, then it is refused
    agent.restart_process("p1", 2)
    assert control.calls.count("start") == 1
    assert state(agent, "p1", 2) == TERMINATED


def test_a_terminate_of_an_older_round_than_the_one_held_does_nothing(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 2, "supd", sleeper())
    agent.terminate_process("p1", 1)
    assert [(r.upid, r.round, r.state) for r in agent.records()] == [("p1", 2, RUNNING)]
    assert "stop" not in control.calls


def test_terminate_of_a_rejected_process_ends_it_terminated(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    for upid in ("a", "b", "c", "d"):
        agent.launch_process(upid, 1, "supd", sleeper())
    assert state(agent, "d", 1) == REJECTED
    agent.terminate_process("d", 1)
    assert state(agent, "d", 1) == TERMINATED
    agent.launch_process("d", 1, "supd", sleeper())
    assert control.calls.count("start") == 3


def test_a_repeated_terminate_of_a_stopping_process_sends_no_second_stop(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    control.lose_stops = True
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.terminate_process("p1", 1)
    agent.terminate_process("p1", 1)
    assert control.calls.count("stop") == 1
    assert state(agent, "p1", 1) == TERMINATING


# -- restart ----------------------------------------------------------------------


def test_restart_runs_the_stored_parameters_under_the_new_round(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", {"exec": "sleep", "argv": ["60"], "env": {"A": "1"}})
    agent.restart_process("p1", 2)
    agent.poll()
    assert agent.record("p1", 1) is None
    assert state(agent, "p1", 2) == RUNNING
    spec = control.programs["p1-2"].spec
    assert spec.argv == ("sleep", "60") and spec.env == {"A": "1"}
    assert control.state_of("p1-1") is None
    assert [(p["upid"], p["round"]) for p in agent.heartbeat()["processes"]] == [("p1", "2")]


def test_restart_keeps_the_slot_count_right(agent: EEAgent) -> None:
    for upid in ("a", "b", "c"):
        agent.launch_process(upid, 1, "supd", sleeper())
    agent.restart_process("a", 2)
    agent.poll()
    assert state(agent, "a", 2) == RUNNING
    agent.launch_process("d", 1, "supd", sleeper())
    assert state(agent, "d", 1) == REJECTED


def test_restart_of_a_finished_process_at_the_same_round_runs_it_again(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", 0)
    agent.poll()
    agent.restart_process("p1", 1)
    agent.poll()
    assert state(agent, "p1", 1) == RUNNING
    assert control.calls.count("start") == 2


@pytest.mark.parametrize(("upid", "round"), [("nobody", 2), ("p1", 1), ("p1", 0)])
def test_restart_of_an_unknown_upid_or_a_round_already_running_is_ignored(
    agent: EEAgent, control: FakeProcessControl, upid: str, round: int
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.restart_process(upid, round)
    agent.poll()
    assert state(agent, "p1", 1) == RUNNING
    assert control.calls.count("start") == 1


# -- cleanup ----------------------------------------------------------------------


def test_cleanup_forgets_a_finished_process_and_its_program(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.exit("p1-1", 0)
    agent.poll()
    agent.cleanup("p1", 1)
    assert agent.record("p1", 1) is None
    assert control.state_of("p1-1") is None
    assert agent.heartbeat()["processes"] == []


def test_cleanup_of_a_running_process_stops_it_then_removes_it(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.cleanup("p1", 1)
    assert agent.record("p1", 1) is None
    assert control.state_of("p1-1") is ProgramState.STOPPING
    agent.poll()
    assert control.state_of("p1-1") is None


def test_cleanup_of_a_rejected_process_forgets_it(agent: EEAgent) -> None:
    for upid in ("a", "b", "c", "d"):
        agent.launch_process(upid, 1, "supd", sleeper())
    agent.cleanup("d", 1)
    assert agent.record("d", 1) is None


# -- heartbeats -------------------------------------------------------------------


def test_the_heartbeat_has_the_legacy_fields_and_an_ended_rounds_additive_ones(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 7, "supd", sleeper())
    agent.launch_process("p2", 1, "supd", sleeper())
    control.programs["p2-1"].logs["stderr"] = b"x" * 5000 + b"\nboom\n"
    control.exit("p2-1", 2)
    agent.poll()
    beat = agent.heartbeat()
    assert list(beat) == ["eeagent_id", "node_id", "timestamp", "processes"]
    assert beat["eeagent_id"] == "agent1" and beat["node_id"] == "node1"
    assert datetime.fromisoformat(beat["timestamp"]).utcoffset() is not None
    # A running process: exactly the legacy fields
    assert beat["processes"][0] == {
        "upid": "p1",
        "round": "7",
        "state": [500, "RUNNING"],
        "msg": "None",
    }
    # An ended one: the legacy fields, then its exit code and the end of its output
    ended = beat["processes"][1]
    assert {k: ended[k] for k in ("upid", "round", "state", "msg")} == {
        "upid": "p2",
        "round": "1",
        "state": [850, "FAILED"],
        "msg": "exited with code 2",
    }
    assert ended["exit_code"] == 2
    assert isinstance(ended["started_at"], float)
    assert ended["output"]["stderr"].endswith("\nboom\n")
    assert len(ended["output"]["stderr"]) == 4096


def test_the_heartbeat_leaves_out_node_id_when_none_is_configured(tmp_path: Path) -> None:
    agent = EEAgent(name="a", node_id=None, slots=1, control=FakeProcessControl())
    agent.open()
    assert "node_id" not in agent.heartbeat()


def test_dump_state_returns_the_heartbeat_or_asks_for_one(agent: EEAgent, changes: Changes) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    dumped = agent.dump_state(rpc=True)
    assert dumped is not None and dumped["processes"] == agent.heartbeat()["processes"]
    before = changes.count
    assert agent.dump_state(rpc=False) is None
    assert changes.count == before + 1


def test_a_poll_that_changes_nothing_announces_nothing(agent: EEAgent, changes: Changes) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    before = changes.count
    agent.poll()
    agent.poll()
    assert changes.count == before


# -- logs -------------------------------------------------------------------------


def test_get_process_logs_returns_the_tail_of_the_stream(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.write_log("p1-1", "stdout", b"line one\nline two\n")
    control.write_log("p1-1", "stderr", b"oops\n")
    assert agent.get_process_logs("p1", 1) == "line one\nline two\n"
    assert agent.get_process_logs("p1", 1, "stdout", 9) == "line two\n"
    assert agent.get_process_logs("p1", 1, stream="stderr") == "oops\n"


def test_a_character_cut_by_the_tail_is_dropped(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.write_log("p1-1", "stdout", "aé€".encode())
    assert agent.get_process_logs("p1", 1, "stdout", 4) == "€"
    assert agent.get_process_logs("p1", 1, "stdout", 5) == "é€"


def test_get_process_logs_rejects_a_bad_stream_and_unknown_processes(agent: EEAgent) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    with pytest.raises(BadRequestError, match="stream"):
        agent.get_process_logs("p1", 1, "stdin")
    with pytest.raises(BadRequestError, match="tail_bytes"):
        agent.get_process_logs("p1", 1, "stdout", -1)
    with pytest.raises(NotFoundError, match="no process p1 round 2"):
        agent.get_process_logs("p1", 2)


# -- backend loss -----------------------------------------------------------------


def test_a_dead_backend_is_replaced_and_its_processes_reported_lost(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    pid = control.programs["p1-1"].pid
    control.crash()
    agent.poll()
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg is not None and record.msg.startswith("lost: supervisord died")
    assert control.alive and control.instance == 2
    assert control.killed == [pid]
    # and the new backend takes new work
    agent.cleanup("p1", 1)
    agent.launch_process("p2", 1, "supd", sleeper())
    assert state(agent, "p2", 1) == RUNNING


def test_a_backend_that_cannot_be_restarted_is_retried_later(
    agent: EEAgent, control: FakeProcessControl, clock: FakeClock
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.crash()
    control.fail_recover = True
    agent.poll()
    assert state(agent, "p1", 1) == FAILED
    # a launch while it is down waits ...
    agent.launch_process("p2", 1, "supd", sleeper())
    assert state(agent, "p2", 1) == PENDING
    control.fail_recover = False
    agent.poll()
    assert control.calls.count("recover") == 1
    # ... until the backoff has passed and a backend runs again
    clock.advance(60)
    agent.poll()
    agent.poll()
    assert state(agent, "p2", 1) == RUNNING


# -- reattach ---------------------------------------------------------------------


def _new_agent(
    control: FakeProcessControl, tmp_path: Path, clock: Callable[[], float] = time.time
) -> EEAgent:
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=control,
        store=StateStore(tmp_path / "state.json"),
        default_directory=str(tmp_path),
        clock=clock,
    )
    agent.open()
    return agent


def test_a_new_agent_reattaches_to_the_running_processes(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.launch_process("p2", 1, "supd", sleeper())
    control.exit("p2-1", 9)
    # the first agent dies without a word; a second one starts
    second = _new_agent(control, tmp_path)
    assert state(second, "p1", 1) == RUNNING
    record = second.record("p2", 1)
    assert record is not None and record.state == FAILED and record.exit_code == 9
    second.terminate_process("p1", 1)
    second.poll()
    assert state(second, "p1", 1) == TERMINATED
    second.restart_process("p1", 2)
    assert state(second, "p1", 2) == RUNNING


def test_a_new_agent_reports_lost_what_a_restarted_backend_no_longer_runs(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    control.crash()
    second = _new_agent(control, tmp_path)
    record = second.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "lost: supervisord was not running when the agent started"


def test_a_new_agent_adopts_a_program_started_but_not_yet_saved(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    # Given an agent that died after starting p1 but before saving that it had
    agent.launch_process("p1", 1, "supd", sleeper())
    store = StateStore(tmp_path / "state.json")
    snapshot = store.load()
    assert snapshot is not None
    snapshot.processes[0].needs_start = True
    snapshot.processes[0].state = PENDING
    store.save(snapshot)
    # When a new agent starts
    second = _new_agent(control, tmp_path)
    # Then it adopts the running program instead of starting it again
    assert state(second, "p1", 1) == RUNNING
    assert control.calls.count("start") == 1


def test_programs_no_record_knows_are_stopped_and_removed(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    (tmp_path / "state.json").unlink()
    second = _new_agent(control, tmp_path)
    assert second.records() == []
    second.poll()
    assert control.programs == {}


def test_an_unreadable_state_file_is_moved_aside(
    control: FakeProcessControl, tmp_path: Path
) -> None:
    (tmp_path / "state.json").write_text("{not json")
    agent = _new_agent(control, tmp_path)
    assert agent.records() == []
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


# -- shutdown ---------------------------------------------------------------------


def test_a_clean_shutdown_stops_everything_and_says_so(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.launch_process("p2", 1, "supd", sleeper())
    control.lose_stops = True
    agent.terminate_process("p2", 1)  # still stopping when the shutdown begins
    control.lose_stops = False
    control.resignal("p2-1")
    agent.shutdown(leave_running=False)
    assert control.closed and not control.alive
    reports = {p["upid"]: p for p in agent.heartbeat()["processes"]}
    assert reports["p1"]["state"] == [850, "FAILED"]
    assert reports["p1"]["msg"] == "stopped: the agent shut down"
    assert reports["p2"]["state"] == [700, "TERMINATED"]
    # and the next agent still reports them
    again = _new_agent(control, tmp_path)
    assert state(again, "p1", 1) == FAILED


def test_a_shutdown_that_leaves_processes_running_changes_nothing(
    agent: EEAgent, control: FakeProcessControl, tmp_path: Path
) -> None:
    agent.launch_process("p1", 1, "supd", sleeper())
    agent.shutdown(leave_running=True)
    assert control.closed and control.alive
    assert control.state_of("p1-1") is ProgramState.RUNNING
    again = _new_agent(control, tmp_path)
    assert state(again, "p1", 1) == RUNNING


def test_the_dispatchers_heartbeat_parser_reads_every_state_the_agent_reports(
    agent: EEAgent, control: FakeProcessControl
) -> None:
    heartbeat_messages = pytest.importorskip("pdcommon.heartbeat_messages")
    # Given one record in each state an agent reports (3 slots)
    for upid in ("exit", "fail", "term"):
        agent.launch_process(upid, 2, "supd", sleeper())
    control.exit("exit-2", 0)
    control.exit("fail-2", 1)
    agent.terminate_process("term", 2)
    agent.poll()
    agent.launch_process("run", 2, "supd", sleeper())
    control.lose_stops = True
    agent.launch_process("stopping", 2, "supd", sleeper())
    agent.terminate_process("stopping", 2)
    agent.launch_process("pending", 2, "supd", {"exec": "x", "working_directory": "/"})
    control.programs["pending-2"].state = ProgramState.STARTING
    agent.poll()
    agent.launch_process("rejected", 2, "supd", sleeper())
    # Then the dispatcher reads back exactly what the agent meant
    parsed = heartbeat_messages.HeartbeatMessage.parse(agent.heartbeat())
    assert {(p.upid, p.round, p.state) for p in parsed.processes} == {
        ("exit", 2, EXITED),
        ("fail", 2, FAILED),
        ("term", 2, TERMINATED),
        ("run", 2, RUNNING),
        ("stopping", 2, TERMINATING),
        ("pending", 2, PENDING),
        ("rejected", 2, REJECTED),
    }
