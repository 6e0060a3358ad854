"""Fault: ``kill -9`` of a real ``pd-eeagent`` and of its supervisord.

A dispatcher (engine ``heartbeat_missing`` 4 s), two nodes with one real agent each,
real supervisord. Three processes run on the first agent, one per restart mode. The
agent and its supervisord are killed with SIGKILL (their ``sleep`` children are left
orphaned). Once the agent is MISSING its processes move on by restart mode: ALWAYS
and ABNORMAL run again on the other agent in a new round, NEVER is FAILED. Then the
killed agent is started again under the same name: it starts a new supervisord,
kills the orphans, reports its old rounds lost, and the dispatcher has them cleaned
up, so it runs none of them while the new rounds keep running elsewhere.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from eeagent.supervisor import SupervisorControl
from tests.e2e.test_real_agents import Cluster, define
from tests.faults.faultkit import figure, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

#: The engine's heartbeat_missing in tests.e2e.test_real_agents.Cluster.
HEARTBEAT_MISSING = 4.0
MODES = {"always": "ALWAYS", "abnormal": "ABNORMAL", "never": "NEVER"}


@pytest.fixture
def cluster(tmp_path: Path, amqp_uri: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, amqp_uri)
    try:
        yield made
    finally:
        made.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in path.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_a_killed_agent_s_processes_move_on_and_its_stale_rounds_end_when_it_returns(
    cluster: Cluster, record_property: Callable[..., None]
) -> None:
    # Given two nodes with one real agent each, and three processes on the first
    (first,) = cluster.add_node("node1")
    define(cluster, "sleeper", "/bin/sleep", "600")
    for upid, mode in MODES.items():
        cluster.client.schedule_process(upid, "sleeper", restart_mode=mode)
    for upid in MODES:
        assert cluster.wait_state(upid, "500-RUNNING")["assigned"] == first
    (second,) = cluster.add_node("node2")
    supervisor = SupervisorControl(cluster.tmp_path / "supd" / first)
    supervisord_pid = int(Path(supervisor.files.pidfile).read_text().strip())
    orphans = _children(supervisord_pid)
    assert len(orphans) == len(MODES)
    # When the agent and its supervisord are killed with SIGKILL
    cluster.agents[first].kill()
    os.kill(supervisord_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Then ALWAYS and ABNORMAL run again on the other agent, in a new round
    def moved(upid: str) -> bool:
        record = cluster.client.describe_process(upid)
        return bool(
            record
            and record["state"] == "500-RUNNING"
            and record["round"] == 1
            and record["assigned"] == second
        )

    wait_for(lambda: moved("always") and moved("abnormal"), timeout=40, what="rescheduled")
    rescheduled_at = time.monotonic()
    # and NEVER is FAILED, not restarted
    assert cluster.wait_state("never", "850-FAILED")["round"] == 0
    assert cluster.client.dump()["resources"][first]["state"] == "MISSING"
    # When the agent comes back under the same name
    cluster.agents[first].start()
    returned_at = time.monotonic()
    broker = BrokerConfig(uri=cluster.amqp_uri, sysname=cluster.sysname)
    with RpcClient(broker, "fault-probe", timeout=10) as probe:

        def stale_rounds_gone() -> Any:
            beat = probe.call(first, "dump_state", rpc=True)
            held = [(p["upid"], p["round"], p["state"]) for p in beat["processes"]]
            orphans_left = [pid for pid in orphans if _alive(pid)]
            return True if not held and not orphans_left else None

        wait_for(stale_rounds_gone, timeout=40, what="the returned agent holding nothing")
        cleaned_at = time.monotonic()
    # Then it holds none of its old rounds, and the new rounds still run elsewhere
    resource = cluster.client.dump()["resources"][first]
    assert resource["assigned"] == []
    for upid in ("always", "abnormal"):
        assert moved(upid)
    assert cluster.client.describe_process("never")["state"] == "850-FAILED"
    figure(record_property, "agent_kill.kill_to_rescheduled", rescheduled_at - killed_at)
    figure(record_property, "agent_kill.return_to_stale_rounds_gone", cleaned_at - returned_at)
