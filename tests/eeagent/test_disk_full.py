"""A full disk drops process output, never processes (a real supervisord on a 20 MB tmpfs).

The agent's home is on a small tmpfs; one process writes output as fast as it
can. The output stops short of the last free space (the reserve the control path
needs), supervisord and every process survive a disk that something else then
fills completely, and a terminate still works and frees the terminated
process's output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eeagent.agent import EEAgent
from eeagent.persistence import StateStore
from eeagent.supdrun import RESERVE_MIN
from eeagent.supervisor import SupervisorControl
from pdcommon.states import ProcessState
from tests.eeagent.conftest import sleeper, stop_supervisord, wait_for, wait_state
from tests.support.tmpfs import fill, free_bytes, small_tmpfs

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]

RUNNING, TERMINATED = ProcessState.RUNNING, ProcessState.TERMINATED
#: Writes output as fast as it can.
SPEW = {"exec": "yes", "argv": ["output output output output output output output"]}


def written(pid: int) -> int:
    """Bytes process ``pid`` has written so far (``wchar`` of ``/proc/<pid>/io``)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as handle:
        fields = dict(line.split(": ") for line in handle.read().splitlines())
    return int(fields["wchar"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", 20) as mounted:
        yield mounted


@pytest.fixture
def small_agent(disk: Path, supervisord_bin: str) -> Iterator[EEAgent]:
    control = SupervisorControl(disk / "agent1")
    agent = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=control,
        store=StateStore(control.home / "state.json"),
        default_directory=str(disk),
    )
    try:
        agent.open()
        yield agent
    finally:
        stop_supervisord(control)


def test_output_filling_the_disk_is_dropped_and_every_process_survives(
    small_agent: EEAgent, disk: Path
) -> None:
    control = small_agent.control
    assert isinstance(control, SupervisorControl)
    supervisord = int(Path(control.files.pidfile).read_text())
    # Given a quiet process and one that writes output as fast as it can
    small_agent.launch_process("quiet", 1, "supd", sleeper())
    small_agent.launch_process("spew", 1, "supd", SPEW)
    quiet = wait_state(small_agent, "quiet", 1, RUNNING).pid
    spew = wait_state(small_agent, "spew", 1, RUNNING).pid

    # When its output has filled the disk as far as output may go
    wait_for(lambda: free_bytes(disk) < 2 * RESERVE_MIN)
    before = written(spew)
    wait_for(lambda: not alive(spew) or written(spew) > before + 4 * RESERVE_MIN)
    # Then output stops short of the reserve
    assert free_bytes(disk) >= RESERVE_MIN / 2

    # When something else takes the rest, and the process goes on writing
    fill(disk / "filler")
    assert free_bytes(disk) == 0
    before = written(spew)
    # Then its output is dropped: supervisord goes on reading it (1 MB, well over
    # a pipe's buffer), and no process dies
    wait_for(lambda: not alive(spew) or written(spew) > before + 1024 * 1024)
    assert alive(supervisord), "supervisord died on the full disk"
    assert alive(quiet) and alive(spew)
    small_agent.poll()
    assert small_agent.record("quiet", 1).state == RUNNING
    assert small_agent.record("spew", 1).state == RUNNING

    # When the writer is terminated on the full disk
    small_agent.terminate_process("spew", 1)
    wait_state(small_agent, "spew", 1, TERMINATED)
    assert int(Path(control.files.pidfile).read_text()) == supervisord
    small_agent.cleanup("spew", 1)
    small_agent.poll()
    # Then its output is gone and the space is free again; the other process runs on
    assert not list((control.home / "logs").glob("*spew*"))
    assert free_bytes(disk) > RESERVE_MIN
    assert alive(quiet) and small_agent.record("quiet", 1).state == RUNNING
