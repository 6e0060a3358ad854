"""End to end: a real dispatcher, real ``pd-eeagent`` processes, real supervisord, RabbitMQ.

Nodes are announced with ``node_state`` (the ``static`` way); each agent is a
``pd-eeagent`` subprocess heartbeating every second. The heartbeat monitor of
``engine1`` judges an agent MISSING after 4 s of silence.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from eeagent.supervisor import SupervisorControl, stop_left_supervisord
from pdcommon.settings import load_settings
from tests.eeagent.conftest import stop_supervisord
from tests.support.waiting import waiter

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "pd_domain_engine1"


wait_for = waiter(30.0)


class Agent:
    """A ``pd-eeagent`` subprocess."""

    def __init__(self, config: Path, home: Path, log: Path) -> None:
        self.config, self.home, self.log = config, home, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = Path(sys.executable).with_name("pd-eeagent")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.eeagent"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*command, "--config", str(self.config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("PD_")},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Cluster:
    """A dispatcher, its client, and agents started on demand."""

    def __init__(
        self,
        tmp_path: Path,
        amqp_uri: str,
        slots: int = 4,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.amqp_uri = amqp_uri
        self.slots = slots
        self.sysname = f"e2e{uuid.uuid4().hex[:8]}"
        self.agents: dict[str, Agent] = {}
        settings = load_settings(
            overrides={
                "state_dir": str(tmp_path / "state"),
                "server.amqp.uri": amqp_uri,
                "dashi.sysname": self.sysname,
                "processdispatcher.database_url": f"sqlite:///{tmp_path}/pd.db",
                "processdispatcher.dispatch_retry_seconds": 2,
                "processdispatcher.engines": {
                    "engine1": {
                        "slots": slots,
                        "heartbeat_period": 1,
                        "heartbeat_warning": 2,
                        "heartbeat_missing": 4,
                    }
                },
                "processdispatcher.default_engine": "engine1",
                "provisioner.driver": "static",
                **(overrides or {}),
            }
        )
        self.service = DispatcherService.build(settings, stop_supervisord=stop_left_supervisord)
        self.service.start()
        self.client = ProcessDispatcherClient.from_settings(settings, timeout=20)

    def add_node(self, node_id: str, agents: int = 1, **properties: Any) -> list[str]:
        self.client.node_state(node_id, DOMAIN, "600-RUNNING", properties=properties or None)
        names = []
        for index in range(agents):
            name = f"{node_id}_agent{index}"
            home = self.tmp_path / "supd"
            config = self.tmp_path / f"{name}.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "state_dir": str(self.tmp_path / f"state-{name}"),
                        "server": {"amqp": {"uri": self.amqp_uri}},
                        "dashi": {"sysname": self.sysname},
                        "eeagent": {
                            "name": name,
                            "node_id": node_id,
                            "slots": self.slots,
                            "heartbeat": 1,
                            "launch_type": {"name": "supd", "supd_directory": str(home)},
                        },
                    }
                )
            )
            agent = Agent(config, home / name, self.tmp_path / f"{name}.log")
            agent.start()
            self.agents[name] = agent
            names.append(name)
        for name in names:
            wait_for(lambda n=name: self._registered(n), what=f"{name} registered")
        return names

    def _registered(self, name: str) -> bool:
        return any(r["resource_id"] == name for r in self.client.dump()["resources"].values())

    def state(self, upid: str) -> str:
        record = self.client.describe_process(upid)
        assert record is not None
        return str(record["state"])

    def wait_state(self, upid: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> Any:
            record = self.client.describe_process(upid)
            return record if record is not None and record["state"] == state else None

        return dict(wait_for(reached, timeout, f"{upid} {state}"))

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.client.close()
        self.service.stop()
        for home in (self.tmp_path / "supd").glob("*"):
            stop_supervisord(SupervisorControl(home))


@pytest.fixture
def cluster(tmp_path: Path, amqp_uri: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, amqp_uri)
    try:
        yield made
    finally:
        made.close()


def define(cluster: Cluster, definition_id: str, exec_: str, *argv: str) -> None:
    cluster.client.create_definition(
        definition_id, "supd", {"exec": exec_, "argv": list(argv)}, name=definition_id
    )


def test_a_process_runs_then_exits(cluster: Cluster) -> None:
    # Given one node with one real agent
    cluster.add_node("node1")
    define(cluster, "short", "/bin/sh", "-c", "sleep 1; exit 0")
    # When a process is scheduled
    cluster.client.schedule_process("p1", "short", restart_mode="NEVER")
    # Then it runs on the agent, then exits
    running = cluster.wait_state("p1", "500-RUNNING")
    assert running["assigned"] == "node1_agent0"
    assert running["starts"] == 1
    cluster.wait_state("p1", "800-EXITED")
    # and its slot is free again
    resource = cluster.client.dump()["resources"]["node1_agent0"]
    assert resource["assigned"] == []


def test_a_failing_process_is_failed_and_logs_are_readable(cluster: Cluster) -> None:
    cluster.add_node("node1")
    define(cluster, "noisy", "/bin/sh", "-c", "echo hello-from-p1; sleep 1; exit 3")
    cluster.client.schedule_process("p1", "noisy", restart_mode="NEVER")
    cluster.wait_state("p1", "500-RUNNING")
    logs = wait_for(
        lambda: "hello-from-p1" in cluster.client.get_process_logs("p1"), what="stdout tail"
    )
    assert logs
    cluster.wait_state("p1", "850-FAILED")


def test_terminate_and_restart(cluster: Cluster) -> None:
    cluster.add_node("node1")
    define(cluster, "sleeper", "/bin/sleep", "600")
    cluster.client.schedule_process("p1", "sleeper")
    cluster.client.schedule_process("p2", "sleeper")
    cluster.wait_state("p1", "500-RUNNING")
    cluster.wait_state("p2", "500-RUNNING")
    # restart_process really restarts, under a new round
    cluster.client.restart_process("p1")
    restarted = cluster.wait_state("p1", "500-RUNNING")
    assert restarted["round"] == 1
    assert restarted["starts"] == 2
    # terminate ends it; the agent's slots follow
    cluster.client.terminate_process("p2")
    cluster.wait_state("p2", "700-TERMINATED")

    def slots() -> Any:
        assigned = cluster.client.dump()["resources"]["node1_agent0"]["assigned"]
        return assigned if [a[1:] for a in assigned] == [["p1", 1]] else None

    wait_for(slots, what="only p1 round 1 on the agent")


def test_fill_first_placement_and_node_exclusive_across_nodes(cluster: Cluster) -> None:
    cluster.add_node("node1")
    cluster.add_node("node2")
    define(cluster, "sleeper", "/bin/sleep", "600")
    for upid in ("a", "b", "c"):
        cluster.client.schedule_process(upid, "sleeper", restart_mode="NEVER")
    placed = {cluster.wait_state(u, "500-RUNNING")["assigned"] for u in ("a", "b", "c")}
    assert len(placed) == 1  # the fullest node first
    cluster.client.schedule_process("x1", "sleeper", node_exclusive="port5000")
    cluster.client.schedule_process("x2", "sleeper", node_exclusive="port5000")
    cluster.client.schedule_process("x3", "sleeper", node_exclusive="port5000")
    x1 = cluster.wait_state("x1", "500-RUNNING")["assigned"]
    x2 = cluster.wait_state("x2", "500-RUNNING")["assigned"]
    assert x1 != x2
    cluster.wait_state("x3", "300-WAITING")
    # the tag holder ends: the waiting one takes its node
    cluster.client.terminate_process("x1")
    assert cluster.wait_state("x3", "500-RUNNING")["assigned"] == x1


def test_a_killed_agent_has_its_processes_rescheduled(cluster: Cluster) -> None:
    (first,) = cluster.add_node("node1")
    define(cluster, "sleeper", "/bin/sleep", "600")
    cluster.client.schedule_process("p1", "sleeper", restart_mode="ALWAYS")
    cluster.client.schedule_process("p2", "sleeper", restart_mode="NEVER")
    assert cluster.wait_state("p1", "500-RUNNING")["assigned"] == first
    cluster.wait_state("p2", "500-RUNNING")
    (second,) = cluster.add_node("node2")
    # When the first agent dies (kill -9: no more heartbeats)
    cluster.agents[first].kill()
    # Then once it is MISSING, p1 runs again on the other agent in a new round
    moved = cluster.wait_state("p1", "500-RUNNING", timeout=5)  # still running: not yet judged

    def rescheduled() -> Any:
        record = cluster.client.describe_process("p1")
        ok = record and record["round"] == 1 and record["state"] == "500-RUNNING"
        return record if ok else None

    record = wait_for(rescheduled, timeout=40, what="p1 rescheduled")
    assert moved["assigned"] == first
    assert record["assigned"] == second
    # and the NEVER-restart process is FAILED, not restarted
    assert cluster.wait_state("p2", "850-FAILED")["round"] == 0
