"""Service-level end-to-end placement scenarios.

A real dispatcher on RabbitMQ places processes on fake agents that speak the
eeagent wire protocol; every assertion reads the dispatcher's state over RPC.
"""

from __future__ import annotations

import pytest

from tests.service.conftest import DEFINITION, Harness

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


def test_52_fill_first_placement_then_terminate_then_a_reported_failure(pd: Harness) -> None:
    # Given three engine1 nodes, each with one 4-slot agent
    for node in ("node1", "node2", "node3"):
        pd.add_node(node)
    # When three NEVER-restart processes are scheduled
    upids = ["proc1", "proc2", "proc3"]
    for upid in upids:
        pd.client.schedule_process(upid, DEFINITION, restart_mode="NEVER")
    running = pd.wait_states(upids, "500-RUNNING")
    # Then they all run on the same agent (the fullest node first)
    (agent_name,) = {record["assigned"] for record in running.values()}
    agent = pd.agents[agent_name]
    assert sorted(agent.processes) == upids
    # When proc3 is terminated
    assert pd.client.terminate_process("proc3")["state"] == "600-TERMINATING"
    pd.wait_state("proc3", "700-TERMINATED")
    pd.wait_held(agent, {"proc1", "proc2"})
    records = {upid: pd.describe(upid) for upid in upids}
    assert [records[u]["state"] for u in ("proc1", "proc2")] == ["500-RUNNING"] * 2
    assert {record["round"] for record in records.values()} == {0}
    # When the agent reports proc1 failed
    agent.set_state("proc1", "850-FAILED")
    # Then proc1 is FAILED, not restarted, and only proc2 still runs
    failed = pd.wait_state("proc1", "850-FAILED")
    assert failed["round"] == 0
    assert failed["assigned"] is None
    pd.wait_held(agent, {"proc2"})
    states = {p["upid"]: p["state"] for p in pd.client.describe_processes()}
    assert states == {"proc1": "850-FAILED", "proc2": "500-RUNNING", "proc3": "700-TERMINATED"}
    assert {p["round"] for p in pd.client.describe_processes()} == {0}
    # and the agent was told to forget the failed and the terminated process
    cleaned = {(c["u_pid"], c["round"]) for c in agent.ops("cleanup")}
    assert {("proc1", 0), ("proc3", 0)} <= cleaned


def test_55_a_requested_engine_waits_for_its_own_nodes(pd: Harness) -> None:
    # Given one engine1 node
    (engine1_agent,) = pd.add_node("node1")
    # When proc1 asks for engine2
    pd.client.schedule_process(
        "proc1", DEFINITION, restart_mode="ALWAYS", execution_engine_id="engine2"
    )
    # Then it waits
    pd.wait_state("proc1", "300-WAITING")
    # while processes for engine1, explicit or by default, run
    pd.client.schedule_process("proc2", DEFINITION, execution_engine_id="engine1")
    pd.client.schedule_process("proc3", DEFINITION)
    for upid in ("proc2", "proc3"):
        assert pd.wait_state(upid, "500-RUNNING")["assigned"] == engine1_agent.name
    assert pd.describe("proc1")["state"] == "300-WAITING"
    # When an engine2 node comes up, proc1 runs there
    (engine2_agent,) = pd.add_node("node2", "engine2")
    assert pd.wait_state("proc1", "500-RUNNING")["assigned"] == engine2_agent.name
    # and a new engine2 process runs at once
    pd.client.schedule_process(
        "proc4", DEFINITION, restart_mode="NEVER", execution_engine_id="engine2"
    )
    assert pd.wait_state("proc4", "500-RUNNING")["assigned"] == engine2_agent.name


def test_56_processes_without_an_engine_use_only_the_default_engine(pd: Harness) -> None:
    # Given one 4-slot engine1 agent and one engine2 agent
    (engine1_agent,) = pd.add_node("node1")
    (engine2_agent,) = pd.add_node("node2", "engine2")
    # When five processes without an engine are scheduled
    for index in range(1, 6):
        pd.client.schedule_process(f"p{index}", DEFINITION, restart_mode="ALWAYS")
    # Then four run on engine1 and the fifth waits, though engine2 has free slots
    for upid in ("p1", "p2", "p3", "p4"):
        assert pd.wait_state(upid, "500-RUNNING")["assigned"] == engine1_agent.name
    pd.wait_state("p5", "300-WAITING")
    assert pd.resources()[engine2_agent.name]["assigned"] == []
    # An engine2 process uses those slots
    pd.client.schedule_process("p6", DEFINITION, execution_engine_id="engine2")
    assert pd.wait_state("p6", "500-RUNNING")["assigned"] == engine2_agent.name
    assert pd.describe("p5")["state"] == "300-WAITING"
    # A second engine1 node runs p5
    (second,) = pd.add_node("node3")
    assert pd.wait_state("p5", "500-RUNNING")["assigned"] == second.name


def test_57_process_engines_maps_definitions_to_engines(pd: Harness) -> None:
    # Given one agent on each of engine1, engine2 and engine3
    agents = {
        engine: pd.add_node(f"n_{engine}", engine)[0]
        for engine in ("engine1", "engine2", "engine3")
    }
    # and definitions whose executables name a.b/C, a.b/D and a/B
    for definition_id, module, cls in (("abc", "a.b", "C"), ("abd", "a.b", "D"), ("ab", "a", "B")):
        pd.define(definition_id, {"module": module, "class": cls})
    # When a process of each is scheduled
    for upid, definition_id in (("p_abc", "abc"), ("p_abd", "abd"), ("p_ab", "ab")):
        pd.client.schedule_process(upid, definition_id)
    # Then the mapping decides the engine (longest prefix, else the default)
    assert pd.wait_state("p_abc", "500-RUNNING")["assigned"] == agents["engine3"].name
    assert pd.wait_state("p_abd", "500-RUNNING")["assigned"] == agents["engine2"].name
    assert pd.wait_state("p_ab", "500-RUNNING")["assigned"] == agents["engine1"].name
    # and the derived engine is not written into the stored constraints
    # (docs/architecture.md, decision 5)
    assert not pd.describe("p_abc")["constraints"]


@pytest.mark.parametrize("agents", [1, 2])
def test_58_node_exclusive_end_to_end(pd: Harness, agents: int) -> None:
    # Given node1 with one or two agents
    node1_agents = {agent.name for agent in pd.add_node("node1", agents=agents)}
    # When proc1 and proc2 carry the same tag
    pd.client.schedule_process("proc1", DEFINITION, node_exclusive="hamsandwich")
    assert pd.wait_state("proc1", "500-RUNNING")["assigned"] in node1_agents
    pd.client.schedule_process("proc2", DEFINITION, node_exclusive="hamsandwich")
    # Then the second waits: the node holds the tag
    pd.wait_state("proc2", "300-WAITING")
    assert pd.client.dump()["nodes"]["node1"]["node_exclusive"] == ["hamsandwich"]
    # When proc1 ends, proc2 takes the node
    pd.client.terminate_process("proc1")
    pd.wait_state("proc1", "700-TERMINATED")
    assert pd.wait_state("proc2", "500-RUNNING")["assigned"] in node1_agents
    # A third with the tag waits; another tag runs at once
    pd.client.schedule_process("proc3", DEFINITION, node_exclusive="hamsandwich")
    pd.wait_state("proc3", "300-WAITING")
    pd.client.schedule_process("proc4", DEFINITION, node_exclusive="hummussandwich")
    assert pd.wait_state("proc4", "500-RUNNING")["assigned"] in node1_agents
    assert sorted(pd.client.dump()["nodes"]["node1"]["node_exclusive"]) == [
        "hamsandwich",
        "hummussandwich",
    ]
    assert pd.describe("proc3")["state"] == "300-WAITING"
    # A second node runs proc3
    (node2_agent,) = pd.add_node("node2")
    assert pd.wait_state("proc3", "500-RUNNING")["assigned"] == node2_agent.name
    assert pd.client.dump()["nodes"]["node2"]["node_exclusive"] == ["hamsandwich"]


def test_60_processes_queued_before_any_resource(pd: Harness) -> None:
    # Given no nodes, five processes wait
    upids = [f"proc{i}" for i in range(1, 6)]
    for upid in upids:
        pd.client.schedule_process(upid, DEFINITION)
    pd.wait_states(upids, "300-WAITING")
    # When two nodes appear but only node1 gets an agent
    pd.client.node_state("node1", "pd_domain_engine1", "600-RUNNING")
    pd.client.node_state("node2", "pd_domain_engine1", "600-RUNNING")
    (first,) = pd.add_agents("node1")
    # Then four run there (FIFO) and the fifth still waits
    for upid in upids[:4]:
        assert pd.wait_state(upid, "500-RUNNING")["assigned"] == first.name
    pd.wait_state("proc5", "300-WAITING")
    # When node2's agent appears, all run
    (second,) = pd.add_agents("node2")
    assert pd.wait_state("proc5", "500-RUNNING")["assigned"] == second.name
    assert {p["state"] for p in pd.client.describe_processes()} == {"500-RUNNING"}


def test_62_constraints_match_node_properties(pd: Harness) -> None:
    # Given node1 wears a fedora
    (fedora,) = pd.add_node("node1", properties={"hat_type": "fedora"})
    # When proc1 wants a fedora and proc2 a bowler
    pd.client.schedule_process("proc1", DEFINITION, constraints={"hat_type": "fedora"})
    pd.client.schedule_process("proc2", DEFINITION, constraints={"hat_type": "bowler"})
    # Then proc1 runs on node1 and proc2 waits
    assert pd.wait_state("proc1", "500-RUNNING")["assigned"] == fedora.name
    pd.wait_state("proc2", "300-WAITING")
    # When a bowler node appears, proc2 runs there
    (bowler,) = pd.add_node("node2", properties={"hat_type": "bowler"})
    assert pd.wait_state("proc2", "500-RUNNING")["assigned"] == bowler.name
    assert pd.resources()[fedora.name]["assigned"] == [[None, "proc1", 0]]
