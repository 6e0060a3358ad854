"""The local driver for real: ``pd-eeagent`` processes on the embedded broker, heartbeating."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.service import RpcService
from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest, new_node_id
from dispatcher.provisioner.errors import CloudRequestError, NodeNotFoundError
from dispatcher.provisioner.local import LocalDriver
from eeagent.supervisor import stop_left_supervisord
from pdcommon import procfs
from pdcommon.settings import LocalSiteSettings
from tests.support.waiting import waiter

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]


wait_for = waiter(30.0)


class Heartbeats:
    """A stand-in dispatcher service that records the heartbeats it receives."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.beats: list[dict[str, Any]] = []
        self.service = RpcService(broker, "process_dispatcher")
        self.service.handle("heartbeat", self._heartbeat, validate=False)

    def _heartbeat(self, message: dict[str, Any]) -> None:
        self.beats.append(message)

    def senders(self) -> set[tuple[str, str]]:
        return {(b["eeagent_id"], b.get("node_id")) for b in list(self.beats)}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    # Unix socket paths are short: keep the directory near the root.
    return tmp_path


@pytest.fixture
def heartbeats(state_dir: Path, sysname: str) -> Iterator[Heartbeats]:
    # A sysname per test: kombu keeps exchange state per process, not per folder.
    sink = Heartbeats(BrokerConfig(uri="embedded://", state_dir=state_dir, sysname=sysname))
    sink.service.start()
    yield sink
    sink.service.stop()


def make_driver(state_dir: Path, sysname: str | None = None, **options: Any) -> LocalDriver:
    site = LocalSiteSettings(heartbeat=1, stop_timeout=15, **options)
    template = AgentTemplate(amqp_uri="embedded://", sysname=sysname)
    return LocalDriver(
        site,
        template=template,
        state_dir=state_dir,
        owner="pd-test",
        stop_supervisord=stop_left_supervisord,
    )


@pytest.fixture
def driver(state_dir: Path, sysname: str) -> Iterator[LocalDriver]:
    local = make_driver(state_dir, sysname)
    yield local
    for node in local.list_nodes():
        local.destroy_node(node.node_id, node.provider_id)


def test_a_node_runs_its_agents_which_heartbeat_and_destroy_stops_them(
    driver: LocalDriver, heartbeats: Heartbeats, state_dir: Path
) -> None:
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=2, replicas=2, heartbeat=30)
    # When a node with two replicas is created
    node = driver.create_node(request)
    pids = node.properties["pids"]
    assert len(pids) == 2 and all(procfs.pid_alive(pid) for pid in pids)
    # Then both agents heartbeat with the node id
    expected = {(name, request.node_id) for name in request.agent_names}
    wait_for(lambda: expected <= heartbeats.senders())
    # And each agent has its own home under the node's directory
    node_dir = state_dir / "nodes" / request.node_id
    for name in request.agent_names:
        assert (node_dir / name / "supervisord.conf").exists()
        assert oct((node_dir / f"{name}.yml").stat().st_mode & 0o777) == "0o600"
    assert [n.node_id for n in driver.list_nodes()] == [request.node_id]
    # When it is destroyed, the agents are gone and so is the node
    driver.destroy_node(request.node_id, node.provider_id)
    assert not any(procfs.pid_alive(pid) for pid in pids)
    assert not node_dir.exists()
    assert driver.list_nodes() == []
    with pytest.raises(NodeNotFoundError):
        driver.destroy_node(request.node_id, None)


def test_a_new_driver_adopts_running_agents_and_forgets_dead_nodes(
    driver: LocalDriver, heartbeats: Heartbeats, state_dir: Path
) -> None:
    alive = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=1, heartbeat=30)
    dead = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=1, heartbeat=30)
    kept = driver.create_node(alive)
    lost = driver.create_node(dead)
    wait_for(lambda: {(alive.agent_names[0], alive.node_id)} <= heartbeats.senders())
    # Given the dispatcher goes away and one node's agent is killed meanwhile
    driver.close()
    (lost_pid,) = lost.properties["pids"]
    os.killpg(lost_pid, signal.SIGKILL)
    wait_for(lambda: not procfs.pid_alive(lost_pid))
    # When a new driver lists its nodes
    again = make_driver(state_dir, driver.template.sysname)
    listed = again.list_nodes()
    # Then it adopts the running one and forgets the dead one
    assert [(n.node_id, n.engine_id) for n in listed] == [(alive.node_id, "engine1")]
    assert not (state_dir / "nodes" / dead.node_id).exists()
    # And it can stop the adopted agent (not its child)
    (pid,) = kept.properties["pids"]
    again.destroy_node(alive.node_id, alive.node_id)
    assert not procfs.pid_alive(pid)
    assert again.list_nodes() == []


def test_an_agent_that_cannot_start_fails_the_create_and_leaves_nothing(state_dir: Path) -> None:
    broken = make_driver(state_dir, agent_command=["/bin/sh", "-c", "exit 3", "pd-eeagent"])
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=1, heartbeat=30)
    with pytest.raises(Exception, match="exited at once"):
        broken.create_node(request)
    assert broken.list_nodes() == []
    assert not (state_dir / "nodes" / request.node_id).exists()
    missing = make_driver(state_dir, agent_command=["/nonexistent/pd-eeagent"])
    with pytest.raises(CloudRequestError, match="not found"):
        missing.create_node(request)


#: A dispatcher whose local driver is killed (SIGKILL) while it starts the second
#: agent of a node: ``record`` after the agent was started and before node.json
#: lists it; ``release`` after node.json lists it and before it is let go.
CRASHING_DISPATCHER = """
import os, signal, sys
from pathlib import Path
from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest
from dispatcher.provisioner.local import LocalDriver
from pdcommon.settings import LocalSiteSettings

state_dir, sysname, node_id, crash_at = sys.argv[1:]


class Crashing(LocalDriver):
    released = 0

    def _write_metadata(self, node_dir, metadata):
        if crash_at == "record" and len(metadata["agents"]) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        LocalDriver._write_metadata(node_dir, metadata)

    def _release_agent(self, child):
        self.released += 1
        if crash_at == "release" and self.released == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        LocalDriver._release_agent(self, child)


site = LocalSiteSettings(heartbeat=1, stop_timeout=15)
template = AgentTemplate(amqp_uri="embedded://", sysname=sysname)
driver = Crashing(site, template=template, state_dir=Path(state_dir), owner="pd-test")
driver.create_node(NodeRequest(node_id, "engine1", slots=1, replicas=2, heartbeat=30))
"""


def processes_under(directory: Path) -> list[int]:
    """Live processes whose command line names ``directory`` (agents, supervisords)."""
    needle = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = procfs.read_cmdline(int(entry.name))
        if cmdline and needle in cmdline and procfs.pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def agents_settled(nodes: Path, heartbeats: Heartbeats) -> bool:
    """No agent is still starting: no gate waits, every agent running has heartbeated."""
    beating = {name for name, _ in heartbeats.senders()}
    for pid in processes_under(nodes):
        argv = (procfs.read_cmdline(pid) or b"").split(b"\0")
        if argv[1:4] == [b"-I", b"-S", b"-c"]:
            return False
        if b"--name" in argv and b"supervisor.supervisord" not in argv:
            name = argv[argv.index(b"--name") + 1].decode()
            if name not in beating:
                return False
    return True


@pytest.mark.parametrize("crash_at", ["record", "release"])
def test_an_agent_started_when_the_dispatcher_was_killed_is_adopted_or_never_runs(
    state_dir: Path, sysname: str, heartbeats: Heartbeats, crash_at: str
) -> None:
    nodes = state_dir / "nodes"
    node_id = new_node_id("engine1")
    try:
        # Given a dispatcher killed -9 while its local driver starts a node's second agent
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING_DISPATCHER, str(state_dir), sysname, node_id, crash_at],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
        wait_for(lambda: agents_settled(nodes, heartbeats))
        # When the restarted dispatcher's driver lists its nodes
        again = make_driver(state_dir, sysname)
        listed = again.list_nodes()
        # Then it adopts the node by its first agent
        assert [node.node_id for node in listed] == [node_id]
        (first,) = listed[0].properties["pids"][:1]
        assert procfs.pid_alive(first)
        # And once it destroys the node, no agent of it is left running
        again.destroy_node(node_id, node_id)
        wait_for(lambda: processes_under(nodes) == [], timeout=10)
    finally:
        for pid in processes_under(nodes):
            os.kill(pid, signal.SIGKILL)


def test_destroying_a_node_deletes_its_agents_queues_on_the_embedded_broker(
    driver: LocalDriver, heartbeats: Heartbeats, state_dir: Path, sysname: str
) -> None:
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=2, heartbeat=30)
    # Given a node whose agents consume their queues (they heartbeat)
    driver.create_node(request)
    expected = {(name, request.node_id) for name in request.agent_names}
    wait_for(lambda: expected <= heartbeats.senders())
    queues = state_dir / "broker" / "queues"
    agent_queues = {f"{sysname}.{name}" for name in request.agent_names}
    assert agent_queues <= set(os.listdir(queues))
    # When the node is destroyed
    driver.destroy_node(request.node_id, request.node_id)
    # Then the agents' queues, bindings and messages are gone at once (no sweep)
    assert not agent_queues & set(os.listdir(queues))
    bindings = {p.name for p in (state_dir / "broker" / "bindings").rglob("*") if p.is_file()}
    assert not agent_queues & bindings


def test_destroying_a_node_stops_the_supervisord_an_agent_left_with_the_given_stopper(
    driver: LocalDriver, heartbeats: Heartbeats, state_dir: Path
) -> None:
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=1, heartbeat=30)
    node = driver.create_node(request)
    wait_for(lambda: {(request.agent_names[0], request.node_id)} <= heartbeats.senders())
    (agent_pid,) = node.properties["pids"]
    home = state_dir / "nodes" / request.node_id / request.agent_names[0]
    wait_for(lambda: (home / "supd.pid").exists())
    supervisord = int((home / "supd.pid").read_text().strip())
    # Given an agent killed on its own: its supervisord (a session of its own) lives on
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(lambda: not procfs.pid_alive(agent_pid))
    assert procfs.pid_alive(supervisord)
    # When its node is destroyed by a driver given the agent's stopper
    driver.destroy_node(request.node_id, request.node_id)
    # Then that supervisord was told to shut down, and it goes
    wait_for(lambda: not procfs.pid_alive(supervisord), timeout=30)
