"""The ended-logs budget over a real supervisord: the space really comes back.

Space on disk is measured as the blocks of the files under the agent's ``logs/``
plus those of deleted log files supervisord still holds open (a deleted file's
blocks are freed only once its last handle closes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from eeagent.agent import EEAgent
from eeagent.logbudget import LogBudget
from eeagent.persistence import StateStore
from eeagent.supervisor import SupervisorControl
from pdcommon.states import ProcessState
from tests.eeagent.conftest import wait_for, wait_state
from tests.support.clock import FakeClock

pytestmark = pytest.mark.supervisord

MB = 1_000_000

#: Writes N bytes of random (incompressible) data to stdout, N // 4 to stderr, and
#: then exits, or sleeps when asked to.
WRITER = (
    "import os, sys, time\n"
    "n = int(sys.argv[1])\n"
    "sys.stdout.buffer.write(os.urandom(n)); sys.stdout.flush()\n"
    "sys.stderr.buffer.write(os.urandom(n // 4 - 5) + b'done\\n'); sys.stderr.flush()\n"
    "if sys.argv[2:] == ['sleep']: time.sleep(600)\n"
)


def writer(size: int, *extra: str) -> dict[str, Any]:
    return {"exec": sys.executable, "argv": ["-c", WRITER, str(size), *extra]}


def _blocks(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def disk_bytes(control: SupervisorControl, program: str) -> int:
    """Bytes on disk of ``program``'s logs, deleted files supervisord holds included."""
    prefix = f"{control.logs}/{program}."
    total = sum(_blocks(str(path)) for path in control.logs.glob(f"{program}.*"))
    pid = int(Path(control.files.pidfile).read_text().strip())
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix) and target.endswith(" (deleted)"):
            total += _blocks(f"/proc/{pid}/fd/{fd}")
    return total


def test_dropping_a_programs_logs_frees_their_space_even_while_supervisord_holds_them(
    supd: SupervisorControl, tmp_path: Path
) -> None:
    # Given a program that wrote 1.25 MB and still runs: supervisord holds its files
    agent = EEAgent(name="agent1", node_id=None, slots=2, control=supd)
    agent.open()
    agent.launch_process("p1", 1, "supd", writer(MB, "sleep"))
    wait_for(lambda: supd.log_size("p1-1") == MB + MB // 4, 20)
    assert disk_bytes(supd, "p1-1") >= MB + MB // 4
    # When its logs are dropped (the adapter alone: the agent never drops live logs)
    supd.drop_logs("p1-1")
    # Then the files are gone and the handles supervisord keeps point to empty files
    assert list(supd.logs.glob("p1-1.*")) == []
    assert supd.log_size("p1-1") == 0
    assert disk_bytes(supd, "p1-1") == 0
    # And the program is still registered and running
    assert "p1-1" in supd.poll()
    assert agent.record("p1", 1).state == ProcessState.RUNNING  # type: ignore[union-attr]


def test_ended_rounds_beyond_the_budget_lose_their_files_and_keep_their_tail(
    supd: SupervisorControl, tmp_path: Path
) -> None:
    # Given an agent whose ended rounds may keep 2 MB of logs for an hour
    clock = FakeClock()
    agent = EEAgent(
        name="agent1",
        node_id=None,
        slots=4,
        control=supd,
        store=StateStore(supd.home / "state.json"),
        default_directory=str(tmp_path),
        clock=clock,
        log_budget=LogBudget(max_bytes=2 * MB, max_age=3600.0),
    )
    agent.open()
    # When three rounds of 1.25 MB each end, one after the other
    sizes = {}
    for upid in ("first", "second", "third"):
        agent.launch_process(upid, 1, "supd", writer(MB))
        wait_state(agent, upid, 1, ProcessState.EXITED, timeout=20)
        sizes[upid] = disk_bytes(supd, f"{upid}-1")
        clock.advance(10)
    # Then every round wrote its bytes to disk, but only the two newest keep them
    assert all(size >= MB + MB // 4 for size in sizes.values())
    assert [r.upid for r in agent.records() if r.logs_dropped] == ["first", "second"]
    assert disk_bytes(supd, "first-1") == disk_bytes(supd, "second-1") == 0
    assert disk_bytes(supd, "third-1") == sizes["third"]
    # And a dropped round still answers with the end of its output
    assert agent.get_process_logs("first", 1, "stderr", 5) == "done\n"
    entry = agent.heartbeat()["processes"][0]
    assert entry["upid"] == "first" and entry["output"]["stderr"].endswith("done\n")
    # When the newest one's end gets older than an hour, it loses its files too
    clock.advance(3600)
    agent.poll()
    assert disk_bytes(supd, "third-1") == 0
    assert list(supd.logs.iterdir()) == []
    # And cleanup still removes the rounds whose files are gone
    for upid in ("first", "second", "third"):
        agent.cleanup(upid, 1)
    assert agent.records() == [] and supd.poll() == {}
