"""The agent over a real supervisord: processes really run, stop and fail."""

from __future__ import annotations

import functools
import json
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from eeagent.agent import EEAgent
from eeagent.control import ProgramSpec, ProgramState
from eeagent.errors import BackendFaultError
from eeagent.persistence import StateStore
from eeagent.supervisor import MAIN_LOG_TAIL, SupervisorControl
from pdcommon.states import ProcessState
from tests.eeagent.conftest import sleeper, stop_supervisord, wait_for, wait_state

pytestmark = pytest.mark.supervisord

RUNNING, EXITED, FAILED = ProcessState.RUNNING, ProcessState.EXITED, ProcessState.FAILED
TERMINATED, REJECTED = ProcessState.TERMINATED, ProcessState.REJECTED

#: A Python child that writes its argv, environment and working directory as JSON.
REPORTER = (
    "import json, os, sys\n"
    "with open(sys.argv[1], 'w', encoding='utf-8') as out:\n"
    "    json.dump({'argv': sys.argv[2:], 'env': dict(os.environ), 'cwd': os.getcwd()}, out)\n"
)

#: Arguments supervisord's configuration format would mangle if written naively.
AWKWARD_ARGS = [
    "two words",
    "it's",
    'say "hi"',
    "100%",
    "%(here)s",
    "%(ENV_HOME)s",
    "x ;y",
    "a #b",
    "#first",
    "ünïcødé ✓",
    "",
    "  padded  ",
    "back\\slash",
    "$HOME `id` $(id)",
    "line one\n  indented line\n\n; not a comment\n# nor this   \ntrailing   ",
]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def reporter(out: Path, args: list[str], **extra: Any) -> dict[str, Any]:
    return {"exec": sys.executable, "argv": ["-c", REPORTER, str(out), *args], **extra}


def test_a_process_that_exits_0_is_reported_exited(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "true"})
    record = wait_state(supd_agent, "p1", 1, EXITED)
    assert record.exit_code == 0
    assert record.msg is None


def test_a_process_that_exits_3_is_reported_failed_with_its_code(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "sh", "argv": ["-c", "exit 3"]})
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert record.exit_code == 3
    assert record.msg == "exited with code 3"


#: Starts of a fast-exiting process in a row: supervisord reaped a few percent of
#: them before answering the start (measured on a loaded 2-core machine).
FAST_EXITS = 100


@pytest.mark.slow
def test_every_fast_exiting_process_is_reported_with_its_exit_code(supd_agent: EEAgent) -> None:
    # Given processes that exit at once with code 3, started one after another
    reports = []
    for round in range(1, FAST_EXITS + 1):
        supd_agent.launch_process("p1", round, "supd", {"exec": "sh", "argv": ["-c", "exit 3"]})
        record = wait_for(functools.partial(_ended, supd_agent, "p1", round))
        reports.append((record.state, record.exit_code, record.msg))
        supd_agent.cleanup("p1", round)
    # Then every one is reported as exited with its code, never as "cannot start"
    assert [r for r in reports if r != (FAILED, 3, "exited with code 3")] == []


def _ended(agent: EEAgent, upid: str, round: int) -> Any:
    agent.poll()
    record = agent.record(upid, round)
    return record if record is not None and record.state in (EXITED, FAILED) else None


def test_a_process_reaped_before_supervisord_answers_the_start_is_reported_with_its_code(
    supd_agent: EEAgent, supd: SupervisorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a supervisord that sees the process exit before it answers startProcess,
    # and so answers with the fault it gives for a bad exit code
    real_call = supd._call

    def call(method: str, *args: Any) -> Any:
        result = real_call(method, *args)
        if method == "supervisor.startProcess":
            wait_for(lambda: real_call("supervisor.getProcessInfo", args[0])["pid"] == 0)
            raise BackendFaultError(
                f"supervisord {method}: SPAWN_ERROR: {args[0]}",
                code=50,
                fault=f"SPAWN_ERROR: {args[0]}",
            )
        return result

    monkeypatch.setattr(supd, "_call", call)
    # When a process that exits with code 3 is launched
    supd_agent.launch_process("p1", 1, "supd", {"exec": "sh", "argv": ["-c", "exit 3"]})
    # Then it is reported as exited with code 3, not as a failed start
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert (record.exit_code, record.msg) == (3, "exited with code 3")


def test_a_program_that_cannot_be_executed_fails_with_the_exec_error(
    supd_agent: EEAgent, tmp_path: Path
) -> None:
    # Given an executable script whose interpreter does not exist
    script = tmp_path / "script"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    # When it is launched
    supd_agent.launch_process("p1", 1, "supd", {"exec": str(script)})
    # Then it fails as a start that could not be done, with the reason
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert record.msg == f"cannot start: couldn't exec {script}: ENOENT"
    assert record.exit_code is None


def test_a_program_that_exits_127_itself_is_reported_with_its_code(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "sh", "argv": ["-c", "exit 127"]})
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert (record.exit_code, record.msg) == (127, "exited with code 127")


@pytest.mark.parametrize(
    ("name", "number", "label"), [("KILL", 9, "SIGKILL (9)"), ("SEGV", 11, "SIGSEGV (11)")]
)
def test_a_process_killed_by_a_signal_is_reported_with_the_signal(
    supd_agent: EEAgent, name: str, number: int, label: str
) -> None:
    # Given a process that kills itself with a signal
    supd_agent.launch_process("p1", 1, "supd", {"exec": "sh", "argv": ["-c", f"kill -{name} $$"]})
    # Then it fails with that signal, named in the reason, and no exit code
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert (record.signal, record.exit_code) == (number, None)
    assert record.msg == f"killed by signal {label}"
    entry = supd_agent.heartbeat()["processes"][0]
    assert entry["signal"] == number and "exit_code" not in entry


def test_the_signal_is_looked_up_once_per_ended_program_and_never_for_a_running_one(
    supd_agent: EEAgent, supd: SupervisorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given supervisord's log reads counted
    reads: list[tuple[Any, ...]] = []
    real_call = supd._call

    def call(method: str, *args: Any) -> Any:
        if method == "supervisor.readLog":
            reads.append(args)
        return real_call(method, *args)

    monkeypatch.setattr(supd, "_call", call)
    # When a running process and one killed by a signal are polled many times
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    supd_agent.launch_process("p2", 1, "supd", {"exec": "sh", "argv": ["-c", "kill -KILL $$"]})
    wait_state(supd_agent, "p2", 1, FAILED)
    for _ in range(5):
        supd.poll()
    # Then the log was read once, for the killed one
    assert reads == [(-MAIN_LOG_TAIL, 0)]
    assert supd.poll()["p2-1"].signal == 9


def _statename(supd: SupervisorControl, name: str) -> str:
    return str(supd._call("supervisor.getProcessInfo", name)["statename"])


def test_the_signal_is_found_when_the_log_tail_starts_inside_a_character(
    supd: SupervisorControl, tmp_path: Path
) -> None:
    # Given a running program that kills itself with SIGKILL once told to, and
    # supervisord's log filled with 4-byte characters before that
    go = tmp_path / "go"
    script = 'while [ ! -e "$0" ]; do sleep 0.01; done; kill -KILL $$'
    supd.open()
    supd.start(ProgramSpec(name="p1-1", argv=("sh", "-c", script, str(go))))
    wait_for(lambda: _statename(supd, "p1-1") == "RUNNING")
    log = Path(supd.files.logfile)
    with log.open("ab") as handle:
        handle.write(("\U0001f600" * 100 + "\n").encode() * 200)
    go.touch()
    wait_for(lambda: _statename(supd, "p1-1") == "EXITED")
    # ... then a line for another program whose name starts the same, and as many
    # bytes as make the last MAIN_LOG_TAIL bytes start inside a character
    data = log.read_bytes()
    decoy = b"exited: p1-10 (terminated by SIGTERM; not expected)\n"
    pad = next(
        b"x" * k
        for k in range(4)
        if data[len(data) + len(decoy) + k - MAIN_LOG_TAIL] & 0xC0 == 0x80
    )
    with log.open("ab") as handle:
        handle.write(decoy + pad)
    # When it is polled
    status = supd.poll()["p1-1"]
    # Then the signal is found all the same, the program's own
    assert (status.state, status.exit_status, status.signal) == (ProgramState.EXITED, -1, 9)


def test_the_signal_is_unknown_when_supervisords_log_is_gone(supd_agent: EEAgent) -> None:
    # Given a process killed by a signal after supervisord's log was removed
    supd = supd_agent.control
    assert isinstance(supd, SupervisorControl)
    Path(supd.files.logfile).unlink()
    supd_agent.launch_process("p1", 1, "supd", {"exec": "sh", "argv": ["-c", "kill -KILL $$"]})
    # Then it is reported killed by a signal, without its number
    record = wait_state(supd_agent, "p1", 1, FAILED)
    assert (record.signal, record.exit_code, record.msg) == (None, None, "killed by a signal")


def test_a_long_running_process_is_reported_running_at_once(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == RUNNING
    assert pid_alive(record.pid)


def test_a_missing_program_fails_the_launch_with_the_reason(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "/no/such/program"})
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: NO_FILE: can't find command '/no/such/program'"


def test_a_program_that_is_not_executable_fails_the_launch(
    supd_agent: EEAgent, tmp_path: Path
) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    supd_agent.launch_process("p1", 1, "supd", {"exec": str(script)})
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg is not None and record.msg.startswith("cannot start: NOT_EXECUTABLE")


def test_a_missing_working_directory_fails_the_launch(supd_agent: EEAgent) -> None:
    supd_agent.launch_process(
        "p1", 1, "supd", {"exec": "true", "working_directory": "/no/such/dir"}
    )
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: working directory '/no/such/dir' does not exist"


def test_an_unknown_user_fails_the_launch(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "true", "user": "no-such-user-x"})
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "cannot start: user 'no-such-user-x' does not exist"


def test_a_process_runs_as_the_requested_user(supd_agent: EEAgent, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    supd_agent.launch_process(
        "p1",
        1,
        "supd",
        {"exec": "sleep", "argv": ["600"], "user": "nobody", "working_directory": "/"},
    )
    record = supd_agent.record("p1", 1)
    assert record is not None
    if os.geteuid() != 0:
        assert record.state == FAILED and "the agent is not root" in (record.msg or "")
        return
    assert record.state == RUNNING

    def uid() -> int:
        status = Path(f"/proc/{record.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        return int(line.split()[1])

    wait_for(lambda: uid() == nobody.pw_uid, timeout=5)


def test_terminate_stops_the_process(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None
    pid = record.pid
    supd_agent.terminate_process("p1", 1)
    wait_state(supd_agent, "p1", 1, TERMINATED)
    assert not pid_alive(pid)


def test_terminate_stops_the_whole_process_group(supd_agent: EEAgent, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    supd_agent.launch_process(
        "p1", 1, "supd", {"exec": "sh", "argv": ["-c", f"sleep 600 & echo $! > {pidfile}; wait"]}
    )
    grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    supd_agent.terminate_process("p1", 1)
    wait_state(supd_agent, "p1", 1, TERMINATED)
    wait_for(lambda: not pid_alive(grandchild), timeout=5)


def test_a_stop_sent_right_after_the_start_stops_the_process_promptly(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    # supervisord loses a SIGTERM that lands between fork and exec, waits
    # stopwaitsecs (10 s) and then kills with SIGKILL. Every stop here must be
    # done by the SIGTERM the agent sends, never by that SIGKILL.
    # (60 rounds: without the exec wait and re-signal, this fails every time here.)
    rounds = range(1, 61)
    for round in rounds:
        # Given a process just started
        supd_agent.launch_process("p1", round, "supd", sleeper())
        # When it is terminated at once
        supd_agent.terminate_process("p1", round)
        # Then it ends TERMINATED (the wait outlasts stopwaitsecs, so a lost stop
        # would end in supervisord's SIGKILL rather than a timeout here)
        wait_state(supd_agent, "p1", round, TERMINATED, timeout=30)
        supd_agent.cleanup("p1", round)
    # and supervisord's log says each one was ended by SIGTERM, none by SIGKILL
    log = Path(supd.files.logfile).read_text()
    for round in rounds:
        assert f"stopped: p1-{round} (terminated by SIGTERM)" in log
    assert "SIGKILL" not in log


def test_restart_runs_the_process_again_under_the_new_round(supd_agent: EEAgent) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    first = supd_agent.record("p1", 1)
    assert first is not None
    supd_agent.restart_process("p1", 2)
    second = wait_state(supd_agent, "p1", 2, RUNNING)
    assert supd_agent.record("p1", 1) is None
    assert second.pid != first.pid and pid_alive(second.pid)
    assert not pid_alive(first.pid)
    names = set(supd_agent.control.poll())
    assert names == {"p1-2"}


def test_a_duplicate_or_older_launch_is_ignored_and_a_newer_round_replaces_the_old(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    # Given round 2 of p1 running
    supd_agent.launch_process("p1", 2, "supd", sleeper())
    first = supd_agent.record("p1", 2)
    assert first is not None and first.state == RUNNING
    # When the same round and an older one are launched again (dispatcher retries)
    supd_agent.launch_process("p1", 2, "supd", {"exec": "true"})
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    supd_agent.poll()
    # Then nothing changed: the same process runs, alone
    assert [(r.upid, r.round, r.state, r.pid) for r in supd_agent.records()] == [
        ("p1", 2, RUNNING, first.pid)
    ]
    assert set(supd.poll()) == {"p1-2"} and pid_alive(first.pid)
    # When a newer round is launched
    supd_agent.launch_process("p1", 3, "supd", sleeper())
    third = wait_state(supd_agent, "p1", 3, RUNNING)
    # Then it replaces the old one, which was stopped before the new one started
    assert [(r.upid, r.round) for r in supd_agent.records()] == [("p1", 3)]
    assert third.pid != first.pid and pid_alive(third.pid) and not pid_alive(first.pid)

    def programs() -> set[str]:
        supd_agent.poll()
        return set(supd.poll())

    wait_for(lambda: programs() == {"p1-3"})
    log = Path(supd.files.logfile).read_text()
    assert log.index("stopped: p1-2 (terminated by SIGTERM)") < log.index("spawned: 'p1-3'")


def test_an_unknown_run_type_fails_with_the_reason_and_runs_nothing(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    supd_agent.launch_process("p1", 1, "pyon", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert record.msg == "unknown run type 'pyon': this agent runs 'supd'"
    assert supd.poll() == {}
    assert "[program:" not in Path(supd.files.config).read_text()
    # and it can be cleaned up like any other failed process
    supd_agent.cleanup("p1", 1)
    assert supd_agent.records() == []


def test_cleanup_removes_the_program_and_its_logs(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    supd_agent.launch_process("p1", 1, "supd", {"exec": "echo", "argv": ["hello"]})
    wait_state(supd_agent, "p1", 1, EXITED)
    assert (supd.logs / "p1-1.stdout").exists()
    supd_agent.cleanup("p1", 1)
    assert supd_agent.record("p1", 1) is None
    assert "p1-1" not in supd.poll()
    assert not (supd.logs / "p1-1.stdout").exists()
    assert "p1-1" not in Path(supd.files.config).read_text()


def test_cleanup_of_a_running_process_stops_and_removes_it(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None
    supd_agent.cleanup("p1", 1)

    def gone() -> bool:
        supd_agent.poll()
        return "p1-1" not in supd.poll()

    wait_for(gone)
    assert not pid_alive(record.pid)


def test_launches_beyond_the_slots_are_rejected(supd_agent: EEAgent) -> None:
    for upid in ("a", "b", "c", "d"):
        supd_agent.launch_process(upid, 1, "supd", sleeper())
    states = {r.upid: r.state for r in supd_agent.records()}
    assert states == {"a": RUNNING, "b": RUNNING, "c": RUNNING, "d": REJECTED}
    assert set(supd_agent.control.poll()) == {"a-1", "b-1", "c-1"}


def test_argv_env_and_working_directory_arrive_byte_for_byte(
    supd_agent: EEAgent, tmp_path: Path
) -> None:
    # Given values full of spaces, quotes, '%', comment characters and non-ASCII,
    # some of which supervisord's environment= syntax cannot hold at all
    workdir = tmp_path / "a dir with ü, 100% and ;semicolons"
    workdir.mkdir()
    env = {
        "SPACES": "two words",
        "PERCENT": "100% %(here)s %(ENV_HOME)s",
        "DQUOTE": 'say "hi"',
        "SQUOTE": "it's",
        "BOTH": 'it\'s "both"',
        "EDGE_QUOTES": "'quoted'",
        "COMMENT": "x ;y #z",
        "UNICODE": "ünïcødé ✓",
        "EMPTY": "",
        "EQUALS": "a=b,c=d",
        "MULTILINE": "first\n  second\n",
    }
    out = tmp_path / "report.json"
    # When the process runs
    supd_agent.launch_process(
        "p1", 1, "supd", reporter(out, AWKWARD_ARGS, env=env, working_directory=str(workdir))
    )
    wait_state(supd_agent, "p1", 1, EXITED)
    report = json.loads(out.read_text(encoding="utf-8"))
    # Then it got exactly what was asked
    assert report["argv"] == AWKWARD_ARGS
    assert {name: report["env"].get(name) for name in env} == env
    assert report["cwd"] == str(workdir)


def test_an_executable_path_with_awkward_characters_is_run_as_given(
    supd_agent: EEAgent, tmp_path: Path
) -> None:
    # Given a script whose path holds spaces, quotes, '%', ';' and non-ASCII
    directory = tmp_path / "it's a 100% ;dir ü"
    directory.mkdir()
    script = directory / 'my "prog" %(here)s'
    out = tmp_path / "out.txt"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > '{out}'\n")
    script.chmod(0o755)
    # When it is launched by that path
    supd_agent.launch_process("p1", 1, "supd", {"exec": str(script), "argv": ["a b", "%"]})
    wait_state(supd_agent, "p1", 1, EXITED)
    # Then it ran, with its own path as $0 and the arguments unchanged
    assert out.read_text(encoding="utf-8").splitlines() == [str(script), "a b", "%"]


def test_plain_env_values_go_through_supervisords_environment(
    supd_agent: EEAgent, supd: SupervisorControl, tmp_path: Path
) -> None:
    env = {"A": "one two", "B": "50%", "C": 'say "hi" now', "D": "it's"}
    out = tmp_path / "report.json"
    supd_agent.launch_process("p1", 1, "supd", reporter(out, ["x"], env=env))
    wait_state(supd_agent, "p1", 1, EXITED)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert {name: report["env"].get(name) for name in env} == env
    assert "/usr/bin/env" not in Path(supd.files.config).read_text()


def test_processes_do_not_inherit_the_agents_pd_variables(tmp_path: Path) -> None:
    control = SupervisorControl(
        tmp_path / "agent1", environ={"PATH": os.environ["PATH"], "KEEP": "1"}
    )
    agent = EEAgent(name="agent1", node_id=None, slots=1, control=control)
    try:
        agent.open()
        out = tmp_path / "report.json"
        agent.launch_process("p1", 1, "supd", reporter(out, []))
        wait_state(agent, "p1", 1, EXITED)
        report = json.loads(out.read_text())
        assert report["env"]["KEEP"] == "1"
        assert not [name for name in report["env"] if name.startswith("PD_")]
    finally:
        stop_supervisord(control)


def test_get_process_logs_returns_the_tail_of_stdout_and_stderr(supd_agent: EEAgent) -> None:
    script = (
        "import sys\n"
        "for i in range(20000): sys.stdout.write(f'{i:07d}\\n')\n"
        "sys.stderr.write('warning: ünïcødé\\n')\n"
    )
    supd_agent.launch_process("p1", 1, "supd", {"exec": sys.executable, "argv": ["-c", script]})
    wait_state(supd_agent, "p1", 1, EXITED)
    tail = supd_agent.get_process_logs("p1", 1)
    assert len(tail.encode()) == 65536
    assert tail.endswith("0019998\n0019999\n")
    assert supd_agent.get_process_logs("p1", 1, "stdout", 16) == "0019998\n0019999\n"
    assert supd_agent.get_process_logs("p1", 1, stream="stderr") == "warning: ünïcødé\n"


def test_a_killed_supervisord_is_restarted_and_its_processes_reported_lost(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    # Given a running process
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None
    old_supervisord = int(Path(supd.files.pidfile).read_text())
    # When supervisord is killed under the agent
    os.kill(old_supervisord, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old_supervisord))
    # Then the process is reported lost, with the reason, and the orphan is killed
    lost = wait_state(supd_agent, "p1", 1, FAILED)
    assert lost.msg is not None and lost.msg.startswith("lost: supervisord died")
    wait_for(lambda: not pid_alive(record.pid), timeout=5)
    # and a new supervisord runs new work
    new_supervisord = int(Path(supd.files.pidfile).read_text())
    assert new_supervisord != old_supervisord and pid_alive(new_supervisord)
    supd_agent.launch_process("p2", 1, "supd", sleeper())
    assert supd_agent.record("p2", 1) is not None
    assert supd_agent.record("p2", 1).state == RUNNING  # type: ignore[union-attr]


def test_an_agent_reattaches_to_the_supervisord_it_left_running(
    supd_agent: EEAgent, supd: SupervisorControl, tmp_path: Path
) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    supd_agent.launch_process("p2", 1, "supd", {"exec": "sh", "argv": ["-c", "exit 4"]})
    wait_state(supd_agent, "p2", 1, FAILED)
    first = supd_agent.record("p1", 1)
    assert first is not None
    supd_agent.shutdown(leave_running=True)
    # a new adapter and agent, as after a restart
    control = SupervisorControl(supd.home)
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=control,
        store=StateStore(supd.home / "state.json"),
    )
    agent.open()
    again = agent.record("p1", 1)
    assert again is not None and again.state == RUNNING and again.pid == first.pid
    failed = agent.record("p2", 1)
    assert failed is not None and failed.exit_code == 4
    agent.terminate_process("p1", 1)
    wait_state(agent, "p1", 1, TERMINATED)


def test_a_process_that_ends_while_no_agent_runs_is_reported_by_the_next_agent(
    supd_agent: EEAgent, supd: SupervisorControl, tmp_path: Path
) -> None:
    # Given a process that exits 5 once a file appears, and its agent gone
    go = tmp_path / "go"
    supd_agent.launch_process(
        "p1",
        1,
        "supd",
        {"exec": "sh", "argv": ["-c", f"until [ -e '{go}' ]; do sleep 0.02; done; exit 5"]},
    )
    first = supd_agent.record("p1", 1)
    assert first is not None and first.state == RUNNING
    supd_agent.shutdown(leave_running=True)
    # When it exits while no agent runs
    go.touch()
    wait_for(lambda: not pid_alive(first.pid))
    # Then the next agent reports how it ended
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=SupervisorControl(supd.home),
        store=StateStore(supd.home / "state.json"),
    )
    agent.open()
    record = agent.record("p1", 1)
    assert record is not None and record.state == FAILED
    assert (record.msg, record.exit_code) == ("exited with code 5", 5)


def test_a_configured_supervisord_executable_is_used(tmp_path: Path, supervisord_bin: str) -> None:
    control = SupervisorControl(tmp_path / "agent1", supdexe=Path(supervisord_bin))
    agent = EEAgent(name="agent1", node_id=None, slots=1, control=control)
    try:
        agent.open()
        pid = int(Path(control.files.pidfile).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert os.fsencode(supervisord_bin) in handle.read()
        agent.launch_process("p1", 1, "supd", {"exec": "true"})
        wait_state(agent, "p1", 1, EXITED)
    finally:
        stop_supervisord(control)


def test_a_home_too_long_for_a_unix_socket_uses_a_short_socket_path(tmp_path: Path) -> None:
    home = tmp_path / ("d" * 60) / ("e" * 60) / "agent1"
    control = SupervisorControl(home)
    agent = EEAgent(name="agent1", node_id=None, slots=1, control=control)
    try:
        agent.open()
        assert len(os.fsencode(control.files.socket)) < 96
        assert control.files.socket.startswith(f"/tmp/pd-eeagent-{os.getuid()}/")
        agent.launch_process("p1", 1, "supd", {"exec": "true"})
        wait_state(agent, "p1", 1, EXITED)
    finally:
        stop_supervisord(control)


def test_a_clean_shutdown_stops_supervisord_and_every_process(
    supd_agent: EEAgent, supd: SupervisorControl
) -> None:
    supd_agent.launch_process("p1", 1, "supd", sleeper())
    record = supd_agent.record("p1", 1)
    assert record is not None
    supervisord = int(Path(supd.files.pidfile).read_text())
    supd_agent.shutdown(leave_running=False)
    assert not pid_alive(record.pid)
    wait_for(lambda: not pid_alive(supervisord), timeout=5)
    final = supd_agent.record("p1", 1)
    assert final is not None and final.state == FAILED
    assert final.msg == "stopped: the agent shut down"
