"""What an agent runs: exactly the argv it is given (no shell ever sees it), as the
configured unprivileged account. Real supervisord."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest

from eeagent.agent import EEAgent
from eeagent.persistence import StateStore
from eeagent.supervisor import SupervisorControl
from tests.eeagent.conftest import stop_supervisord, wait_for, wait_state

pytestmark = [pytest.mark.supervisord]

REPO = Path(__file__).resolve().parents[2]
#: Shell syntax that would create a file if any shell interpreted it.
SHELL_TRAPS = [
    "$(touch {d}/m1)",
    "`touch {d}/m2`",
    "; touch {d}/m3",
    "| touch {d}/m4",
    "&& touch {d}/m5",
    "> {d}/m6",
    "%(ENV_HOME)s $HOME ~ *",
    "\ntouch {d}/m7",
]


def make_agent(home: Path, tmp_path: Path, default_user: str | None = None) -> EEAgent:
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=SupervisorControl(home),
        store=StateStore(home / "state.json"),
        default_directory=str(tmp_path),
        default_user=default_user,
    )
    agent.open()
    return agent


@pytest.fixture
def agent(tmp_path: Path, supervisord_bin: str):
    made = make_agent(tmp_path / "agent1", tmp_path)
    yield made
    stop_supervisord(made.control)


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_shell_syntax_in_argv_reaches_the_process_as_text(agent: EEAgent, tmp_path: Path) -> None:
    # Given arguments full of shell syntax that would each create a file
    argv = [trap.format(d=tmp_path) for trap in SHELL_TRAPS]
    # When they are given to printf, one per line
    agent.launch_process("p1", 1, "supd", {"exec": "/usr/bin/printf", "argv": ["%s|", *argv]})
    wait_state(agent, "p1", 1, "800-EXITED")
    # Then no shell ran them: no file exists, and the process printed them verbatim
    assert sorted(p.name for p in tmp_path.glob("m*")) == []
    assert agent.get_process_logs("p1", 1, "stdout", 65536) == "".join(f"{a}|" for a in argv)


def test_an_exec_holding_shell_syntax_is_one_program_name(agent: EEAgent, tmp_path: Path) -> None:
    # Given an exec that a shell would read as two commands
    agent.launch_process("p1", 1, "supd", {"exec": f"true; touch {tmp_path}/m8"})
    # Then it is looked up as a program of that name, which does not exist
    record = wait_state(agent, "p1", 1, "850-FAILED")
    assert "cannot start" in (record.msg or "")
    assert not (tmp_path / "m8").exists()


def test_no_code_of_the_project_starts_a_shell() -> None:
    # A static guard: no shell=True, os.system or os.popen anywhere in the packages
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for package in ("dispatcher", "eeagent", "cli")
        for path in (REPO / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []


def test_processes_run_as_the_agents_default_user(tmp_path: Path, supervisord_bin: str) -> None:
    # Given an agent configured to run processes as nobody
    nobody = pwd.getpwnam("nobody")
    agent = make_agent(tmp_path / "agent1", tmp_path, default_user="nobody")
    try:
        # When a process that names no user is launched
        agent.launch_process(
            "p1", 1, "supd", {"exec": "sleep", "argv": ["600"], "working_directory": "/"}
        )
        record = agent.record("p1", 1)
        assert record is not None
        if os.geteuid() != 0:
            assert record.state == "850-FAILED" and "the agent is not root" in (record.msg or "")
            return
        # Then it runs as nobody, not as the agent's root
        assert record.state == "500-RUNNING"
        wait_for(lambda: uid_of(record.pid) == nobody.pw_uid, timeout=5)
        # And a launch that names a user runs as that one
        agent.launch_process(
            "p2",
            1,
            "supd",
            {"exec": "sleep", "argv": ["600"], "user": "root", "working_directory": "/"},
        )
        second = agent.record("p2", 1)
        assert second is not None and second.state == "500-RUNNING"
        wait_for(lambda: uid_of(second.pid) == 0, timeout=5)
    finally:
        stop_supervisord(agent.control)
