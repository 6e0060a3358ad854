"""Processes that leave their program's process group are stopped with it.

supervisord signals a program's process group. These programs start children
that leave it (``setsid``, a double fork) or outlive the program; terminate,
cleanup and the program's own exit must end them too, and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eeagent.agent import EEAgent
from eeagent.cgroups import _unescape
from eeagent.reaper import MARKER, Reaper
from eeagent.supervisor import SupervisorControl
from pdcommon.procfs import find_marked, identity, read_boot_id, signal_same
from pdcommon.states import ProcessState
from tests.eeagent.conftest import stop_supervisord, wait_for, wait_state

pytestmark = pytest.mark.supervisord

RUNNING, EXITED, TERMINATED = ProcessState.RUNNING, ProcessState.EXITED, ProcessState.TERMINATED

#: Writes pids to argv[1] atomically; imported by the programs below.
_REPORT = (
    "import os, signal, subprocess, sys, time\n"
    "def report(*pids):\n"
    "    tmp = sys.argv[1] + '.tmp'\n"
    "    with open(tmp, 'w') as out:\n"
    "        out.write(' '.join(str(pid) for pid in pids))\n"
    "    os.replace(tmp, sys.argv[1])\n"
)

#: A program with a child in a session of its own, and one that also cleared its
#: environment (found as a descendant of the program).
SETSID_CHILDREN = _REPORT + (
    "marked = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
    "bare = subprocess.Popen(['sleep', '600'], start_new_session=True, env={})\n"
    "report(marked.pid, bare.pid)\n"
    "time.sleep(600)\n"
)

#: A program that double-forks two daemons (one ignores SIGTERM) and keeps running.
DAEMONS = _REPORT + (
    "pids = []\n"
    "for ignore in (False, True):\n"
    "    r, w = os.pipe()\n"
    "    if os.fork() == 0:\n"
    "        os.close(r)\n"
    "        os.setsid()\n"
    "        if os.fork():\n"
    "            os._exit(0)\n"
    "        if ignore:\n"
    "            signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "        os.write(w, str(os.getpid()).encode())\n"
    "        os.close(w)\n"
    "        time.sleep(600)\n"
    "        os._exit(0)\n"
    "    os.close(w)\n"
    "    pids.append(int(os.read(r, 32)))\n"
    "    os.close(r)\n"
    "    os.wait()\n"
    "report(*pids)\n"
    "time.sleep(600)\n"
)

#: A program that leaves a background child (in its process group) and exits 0.
BACKGROUND_THEN_EXIT = _REPORT + (
    "child = subprocess.Popen(['sleep', '600'])\nreport(child.pid)\nsys.exit(0)\n"
)


#: A program whose grandchild, in a session of its own, runs with an empty
#: environment; the program and the child in between exit at once.
SCRUBBED_ORPHAN = _REPORT + (
    "r, w = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    child = subprocess.Popen(['sleep', '600'], env={})\n"
    "    os.write(w, str(child.pid).encode())\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "pid = int(os.read(r, 32))\n"
    "os.wait()\n"
    "report(pid)\n"
)


def program(script: str, pidfile: Path) -> dict[str, Any]:
    return {"exec": sys.executable, "argv": ["-c", script, str(pidfile)]}


def reported(pidfile: Path) -> list[int]:
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text())
    return [int(pid) for pid in text.split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def all_gone(agent: EEAgent, pids: list[int]) -> bool:
    agent.poll()
    return not any(alive(pid) for pid in pids)


@pytest.fixture
def quick(tmp_path: Path, supervisord_bin: str) -> Iterator[EEAgent]:
    """An opened agent over a real supervisord with a 1 s stop wait."""
    control = SupervisorControl(tmp_path / "quick", stop_wait=1)
    agent = EEAgent(
        name="quick",
        node_id=None,
        slots=4,
        control=control,
        default_directory=str(tmp_path),
        stop_wait=1,
    )
    agent.open()
    yield agent
    stop_supervisord(control)


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test started; whatever survives the test is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, 9)


def test_terminate_stops_children_in_sessions_of_their_own(
    supd_agent: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given a process whose children called setsid (one also cleared its environment)
    pidfile = tmp_path / "pids"
    supd_agent.launch_process("p1", 1, "supd", program(SETSID_CHILDREN, pidfile))
    children = reported(pidfile)
    strays.extend(children)
    assert all(alive(pid) for pid in children)
    # When it is terminated
    supd_agent.terminate_process("p1", 1)
    wait_state(supd_agent, "p1", 1, TERMINATED)
    # Then its children are gone too, and supervisord still runs
    wait_for(lambda: all_gone(supd_agent, children), timeout=5)
    control = supd_agent.control
    assert isinstance(control, SupervisorControl)
    assert alive(int(Path(control.files.pidfile).read_text()))


def test_terminate_stops_double_forked_daemons_and_kills_those_ignoring_sigterm(
    quick: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given a process that double-forked two daemons, one of which ignores SIGTERM
    pidfile = tmp_path / "pids"
    quick.launch_process("p1", 1, "supd", program(DAEMONS, pidfile))
    daemons = reported(pidfile)
    strays.extend(daemons)
    assert len(daemons) == 2 and all(alive(pid) for pid in daemons)
    # When it is terminated
    quick.terminate_process("p1", 1)
    wait_state(quick, "p1", 1, TERMINATED)
    # Then the daemon that honours SIGTERM ends, and the other is killed once the
    # stop wait (1 s here) has passed
    wait_for(lambda: all_gone(quick, daemons[:1]), timeout=5)
    wait_for(lambda: all_gone(quick, daemons), timeout=10)


def test_the_background_child_of_a_process_that_exits_is_stopped(
    supd_agent: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given a process that left a background child and exited 0
    pidfile = tmp_path / "pids"
    supd_agent.launch_process("p1", 1, "supd", program(BACKGROUND_THEN_EXIT, pidfile))
    children = reported(pidfile)
    strays.extend(children)
    wait_state(supd_agent, "p1", 1, EXITED)
    # When it is cleaned up (the agent has seen it exit)
    supd_agent.cleanup("p1", 1)
    # Then the child is gone
    wait_for(lambda: all_gone(supd_agent, children), timeout=5)


def test_removing_an_exited_program_stops_what_it_left_running(
    supd: SupervisorControl, tmp_path: Path, strays: list[int], supervisord_bin: str
) -> None:
    # Given a program that exited, leaving a child, which no poll has seen end
    from eeagent.control import ProgramSpec

    supd.open()
    pidfile = tmp_path / "pids"
    argv = (sys.executable, "-c", BACKGROUND_THEN_EXIT, str(pidfile))
    supd.start(ProgramSpec(name="p1-1", argv=argv, working_directory=str(tmp_path)))
    children = reported(pidfile)
    strays.extend(children)

    def exited() -> bool:
        info = supd._call("supervisor.getProcessInfo", "p1-1")
        return bool(info["statename"] == "EXITED")

    wait_for(exited)
    # When the program is removed (cleanup)
    supd.remove("p1-1")
    # Then the child is gone
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5)


def test_a_sweep_spares_other_programs_with_a_similar_name(
    supd_agent: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given programs "a-1" (upid a, round 1), "a-1-1" (upid a-1) and "a-11"
    # (upid a, round 11 is not allowed beside round 1, so upid a-1 round 1 and
    # upid a round 1 are the closest names), each with a setsid child
    children = {}
    for upid in ("a", "a-1", "a1"):
        pidfile = tmp_path / f"pids-{upid}"
        supd_agent.launch_process(upid, 1, "supd", program(SETSID_CHILDREN, pidfile))
        children[upid] = reported(pidfile)
        strays.extend(children[upid])
    # When "a" is terminated
    supd_agent.terminate_process("a", 1)
    wait_state(supd_agent, "a", 1, TERMINATED)
    wait_for(lambda: all_gone(supd_agent, children["a"]), timeout=5)
    # Then the children of the others still run
    supd_agent.poll()
    assert all(alive(pid) for upid in ("a-1", "a1") for pid in children[upid])
    for upid in ("a-1", "a1"):
        record = supd_agent.record(upid, 1)
        assert record is not None and record.state == RUNNING


def test_a_clean_shutdown_stops_what_the_processes_started_outside_their_groups(
    quick: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given a process with double-forked daemons, one of which ignores SIGTERM
    pidfile = tmp_path / "pids"
    quick.launch_process("p1", 1, "supd", program(DAEMONS, pidfile))
    daemons = reported(pidfile)
    strays.extend(daemons)
    # When the agent shuts down, stopping its processes
    quick.shutdown(leave_running=False)
    # Then neither daemon outlives the shutdown
    assert not any(alive(pid) for pid in daemons)


def test_the_escaped_children_of_a_dead_supervisords_processes_are_killed(
    supd_agent: EEAgent, tmp_path: Path, strays: list[int]
) -> None:
    # Given a process with children in sessions of their own
    pidfile = tmp_path / "pids"
    supd_agent.launch_process("p1", 1, "supd", program(SETSID_CHILDREN, pidfile))
    children = reported(pidfile)
    strays.extend(children)
    # When supervisord dies and the agent notices
    control = supd_agent.control
    assert isinstance(control, SupervisorControl)
    os.kill(int(Path(control.files.pidfile).read_text()), 9)
    wait_state(supd_agent, "p1", 1, ProcessState.FAILED)
    # Then the orphans are gone as well (they were sent SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5)


def cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


def test_where_cgroups_can_be_made_a_process_without_the_marker_is_found_by_its_cgroup(
    supd_agent: EEAgent, supd: SupervisorControl, tmp_path: Path, strays: list[int]
) -> None:
    groups = supd.reaper.cgroups
    if groups is None:
        pytest.skip("the agent cannot create cgroups (cgroup v2 needs root or delegation)")
    # Given a process whose grandchild cleared its environment and was orphaned
    pidfile = tmp_path / "pids"
    supd_agent.launch_process("p1", 1, "supd", program(SCRUBBED_ORPHAN, pidfile))
    orphans = reported(pidfile)
    strays.extend(orphans)
    token = supd.reaper.token("p1-1")
    # (it was born in its program's cgroup, and supervisord is back in its own)
    assert cgroup_of(orphans[0]).endswith(f"/{supd.files.identifier}/{token}")
    supervisord = int(Path(supd.files.pidfile).read_text())
    assert cgroup_of(supervisord).endswith(f"/{supd.files.identifier}/supervisord")
    # When the program has exited and is cleaned up
    wait_state(supd_agent, "p1", 1, EXITED)
    supd_agent.cleanup("p1", 1)
    # Then the orphan is gone, and so is the cgroup
    wait_for(lambda: all_gone(supd_agent, orphans), timeout=5)
    wait_for(lambda: all_gone(supd_agent, []) and not (groups.base / token).exists())


#: Run as a stand-in agent that carries the marker itself: it sweeps its own
#: program name and must survive, while its marked child is killed.
SELF_SWEEP = (
    "import subprocess, sys\n"
    "from eeagent.reaper import Reaper\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "reaper = Reaper(sys.argv[1], lambda: (), stop_wait=1)\n"
    "killed = reaper.kill(['p1-1'])\n"
    "print(' '.join(map(str, [child.pid, *killed])))\n"
)


def test_the_agent_itself_is_never_killed_even_when_it_carries_the_marker() -> None:
    # Given a process carrying the marker of program p1-1, with a child that does too
    token = Reaper("secret", lambda: (), stop_wait=1).token("p1-1")
    env = {**os.environ, MARKER: token, "PYTHONPATH": str(Path(__file__).parents[2])}
    # When it sweeps p1-1
    done = subprocess.run(
        [sys.executable, "-c", SELF_SWEEP, "secret"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Then it survived to report that it killed its child, and only that
    assert done.returncode == 0, done.stderr
    child, *killed = [int(pid) for pid in done.stdout.split()]
    assert killed == [child]


def test_signal_same_never_signals_a_process_with_another_start_time() -> None:
    # Given a running process and its start time
    proc = subprocess.Popen(["sleep", "600"])
    try:
        found = find_marked([], roots=[proc.pid])
        start = found[proc.pid].start
        assert identity(proc.pid, read_boot_id()) == f"{read_boot_id()}:{start}"
        # When a signal is sent with another start time (a reused pid), nothing is sent
        assert not signal_same(proc.pid, start + 1, 9)
        assert proc.poll() is None
        # and with its own, it is
        assert signal_same(proc.pid, start, 9)
        assert proc.wait(10) == -9
    finally:
        proc.kill()
        proc.wait()


def test_mount_paths_with_escaped_characters_are_read_back() -> None:
    assert _unescape("/sys/fs/cgroup") == "/sys/fs/cgroup"
    # (mountinfo writes space, tab, newline and backslash as octal escapes)
    assert _unescape("/mnt/a\\040b\\011c\\134d") == "/mnt/a b\tc\\d"
