"""``pd-eeagent`` as a real process: kill -9 and reattach, clean shutdown, and
processes left running on purpose. Broker-less (embedded transport)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from tests.eeagent.conftest import AgentProcess, PdSink, process_state, sleeper, wait_for

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.fixture
def broker(tmp_path: Path, sysname: str) -> BrokerConfig:
    return BrokerConfig(uri="embedded://", state_dir=tmp_path / "state", sysname=sysname)


@pytest.fixture
def pd(broker: BrokerConfig) -> Iterator[PdSink]:
    sink = PdSink(broker)
    sink.service.start()
    yield sink
    sink.service.stop()


@pytest.fixture
def client(broker: BrokerConfig) -> Iterator[RpcClient]:
    with RpcClient(broker, name="process_dispatcher") as rpc:
        yield rpc


def settings(tmp_path: Path, sysname: str, **eeagent: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "server": {"amqp": {"uri": "embedded://"}},
        "dashi": {"sysname": sysname},
        "eeagent": {
            "name": "agent1",
            "node_id": "node1",
            "slots": 4,
            "heartbeat": 1,
            "launch_type": {"name": "supd", "supd_directory": str(tmp_path / "supd")},
            **eeagent,
        },
        "pd": {"name": "process_dispatcher"},
    }


def saved_pid(tmp_path: Path, upid: str) -> int:
    state = json.loads((tmp_path / "supd" / "agent1" / "state.json").read_text())
    return next(int(p["pid"]) for p in state["processes"] if p["upid"] == upid)


def supervisord_pid(tmp_path: Path) -> int:
    return int((tmp_path / "supd" / "agent1" / "supd.pid").read_text())


def launch(client: RpcClient, upid: str, parameters: dict[str, Any], round: int = 1) -> None:
    client.fire(
        "agent1", "launch_process", u_pid=upid, round=round, run_type="supd", parameters=parameters
    )


def test_an_agent_killed_with_sigkill_reattaches_to_its_processes(
    agent_process: Callable[[dict[str, Any]], AgentProcess],
    pd: PdSink,
    client: RpcClient,
    tmp_path: Path,
    sysname: str,
) -> None:
    # Given an agent running one long process and one that failed
    agent = agent_process(settings(tmp_path, sysname))
    agent.start()
    pd.wait_for(lambda m: m["processes"] == [])
    launch(client, "p1", sleeper())
    launch(client, "p2", {"exec": "sh", "argv": ["-c", "exit 3"]})
    pd.wait_for(
        lambda m: (
            process_state(m, "p1") == [500, "RUNNING"] and process_state(m, "p2") == [850, "FAILED"]
        )
    )
    pid = saved_pid(tmp_path, "p1")
    # When the agent is killed with SIGKILL, and started again
    agent.signal(signal.SIGKILL)
    agent.wait()
    assert pid_alive(pid)
    again = agent_process(settings(tmp_path, sysname))
    again.start()
    # Then it reports the same processes as before, the same process still running
    beat = pd.wait_for(
        lambda m: (
            process_state(m, "p1") == [500, "RUNNING"] and process_state(m, "p2") == [850, "FAILED"]
        ),
        timeout=30,
    )
    assert {p["upid"]: p["msg"] for p in beat["processes"]} == {
        "p1": "None",
        "p2": "exited with code 3",
    }
    assert saved_pid(tmp_path, "p1") == pid and pid_alive(pid)
    # and it still controls it
    client.fire("agent1", "terminate_process", u_pid="p1", round=1)
    pd.wait_for(lambda m: process_state(m, "p1") == [700, "TERMINATED"])
    assert not pid_alive(pid)
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.output()


def test_sigterm_stops_supervisord_and_the_processes_and_says_so(
    agent_process: Callable[[dict[str, Any]], AgentProcess],
    pd: PdSink,
    client: RpcClient,
    tmp_path: Path,
    sysname: str,
) -> None:
    agent = agent_process(settings(tmp_path, sysname))
    agent.start()
    pd.wait_for(lambda m: m["processes"] == [])  # a dispatcher waits to hear from it
    launch(client, "p1", sleeper())
    pd.wait_for(lambda m: process_state(m, "p1") == [500, "RUNNING"])
    pid, supervisord = saved_pid(tmp_path, "p1"), supervisord_pid(tmp_path)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.output()
    last = pd.wait_for(lambda m: process_state(m, "p1") == [850, "FAILED"])
    assert last["processes"][0]["msg"] == "stopped: the agent shut down"
    assert not pid_alive(pid)
    wait_for(lambda: not pid_alive(supervisord), timeout=5)


def test_processes_keep_running_across_a_restart_when_configured_to(
    agent_process: Callable[[dict[str, Any]], AgentProcess],
    pd: PdSink,
    client: RpcClient,
    tmp_path: Path,
    sysname: str,
) -> None:
    config = settings(tmp_path, sysname, leave_running_on_shutdown=True)
    agent = agent_process(config)
    agent.start()
    pd.wait_for(lambda m: m["processes"] == [])
    launch(client, "p1", sleeper())
    pd.wait_for(lambda m: process_state(m, "p1") == [500, "RUNNING"])
    pid = saved_pid(tmp_path, "p1")
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.output()
    assert pid_alive(pid) and pid_alive(supervisord_pid(tmp_path))
    again = agent_process(config)
    again.start()
    pd.wait_for(
        lambda m: m["eeagent_id"] == "agent1" and process_state(m, "p1") == [500, "RUNNING"],
        timeout=30,
    )
    assert saved_pid(tmp_path, "p1") == pid


def test_an_agent_restarted_after_its_supervisord_died_reports_the_processes_lost(
    agent_process: Callable[[dict[str, Any]], AgentProcess],
    pd: PdSink,
    client: RpcClient,
    tmp_path: Path,
    sysname: str,
) -> None:
    # Given an agent and its supervisord both killed with SIGKILL
    agent = agent_process(settings(tmp_path, sysname))
    agent.start()
    pd.wait_for(lambda m: m["processes"] == [])  # a dispatcher waits to hear from it
    launch(client, "p1", sleeper())
    pd.wait_for(lambda m: process_state(m, "p1") == [500, "RUNNING"])
    pid = saved_pid(tmp_path, "p1")
    agent.signal(signal.SIGKILL)
    agent.wait()
    os.kill(supervisord_pid(tmp_path), signal.SIGKILL)
    # When the agent starts again
    again = agent_process(settings(tmp_path, sysname))
    again.start()
    # Then it says the process was lost, and its orphan does not run on
    beat = pd.wait_for(lambda m: process_state(m, "p1") == [850, "FAILED"], timeout=30)
    assert beat["processes"][0]["msg"] == "lost: supervisord was not running when the agent started"
    wait_for(lambda: not pid_alive(pid), timeout=5)
    # and it runs new work
    launch(client, "p2", sleeper())
    pd.wait_for(lambda m: process_state(m, "p2") == [500, "RUNNING"])


def test_an_ended_rounds_logs_beyond_the_configured_budget_are_deleted_but_still_answered(
    agent_process: Callable[[dict[str, Any]], AgentProcess],
    pd: PdSink,
    client: RpcClient,
    tmp_path: Path,
    sysname: str,
) -> None:
    # Given an agent whose ended rounds may keep 1000 bytes of logs
    agent = agent_process(settings(tmp_path, sysname, ended_logs_max_bytes=1000))
    agent.start()
    pd.wait_for(lambda m: m["processes"] == [])
    # When a process writes 3000 bytes and fails
    script = "import sys; sys.stderr.write('x' * 2990 + 'last line\\n'); sys.exit(3)"
    launch(client, "p1", {"exec": sys.executable, "argv": ["-c", script]})
    beat = pd.wait_for(lambda m: process_state(m, "p1") == [850, "FAILED"])
    # Then its log files are deleted, it is still reported with the end of its output
    logs = tmp_path / "supd" / "agent1" / "logs"
    wait_for(lambda: not list(logs.glob("p1-1.*")), timeout=10)
    assert beat["processes"][0]["output"]["stderr"].endswith("last line\n")
    # and get_process_logs answers with that end
    tail = client.call("agent1", "get_process_logs", u_pid="p1", round=1, stream="stderr")
    assert tail.endswith("x" * 10 + "last line\n") and len(tail) == 3000
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert "p1 round 1: deleted its log files (3000 bytes" in agent.output()
