"""The first heartbeat of an agent registers it on its node, or is dropped."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from dispatcher.engines import EngineRegistry
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import VM, Node
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from tests.health.conftest import (
    BOTH_STORES,
    DOMAIN1,
    NOW,
    FakeClock,
    beat,
    iso,
    make_engines,
    put_process,
    report,
    resource,
    snapshot,
)
from tests.support.wiring import make_heartbeats


@BOTH_STORES
def test_the_first_heartbeat_on_a_known_node_registers_the_agent(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given node1 running for engine1 with a hostname
    handler.node_state("node1", DOMAIN1, "600-RUNNING", {"hostname": "vm1"})
    # When eeagent_1 sends its first heartbeat (sysname-prefixed sender)
    handler.heartbeat(beat(at=NOW - 3), sender="mysys.eeagent_1")
    # Then the resource is OK with the engine's slot count and the node's properties
    agent = resource(store)
    assert agent.state == "OK"
    assert agent.node_id == "node1"
    assert agent.slot_count == 4
    assert agent.properties == {"hostname": "vm1", "engine": "engine1", "resource_id": "eeagent_1"}
    assert agent.assigned == []
    assert agent.last_heartbeat == iso(NOW - 3)
    # And the node lists it
    node = store.get_node("node1")
    assert node is not None and node.resources == ["eeagent_1"]


def test_the_slot_count_comes_from_the_engine_not_the_agent(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given a node of engine2 (2 slots)
    handler.node_state("node2", "pd_domain_engine2", "600-RUNNING")
    # When its agent first heartbeats
    handler.heartbeat(beat(node_id="node2", eeagent_id="a2"), sender="a2")
    # Then the resource has engine2's slots
    agent = resource(store, "a2")
    assert (agent.slot_count, agent.properties["engine"]) == (2, "engine2")


def test_a_first_heartbeat_without_sender_uses_the_eeagent_id(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given node1, When a heartbeat arrives without a sender header (in-process caller)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    handler.heartbeat(beat(eeagent_id="agentx"))
    # Then the eeagent_id names the resource
    assert [r.resource_id for r in store.list_resources()] == ["agentx"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("none", beat(node_id=None)),
        ("none", beat(node_id="node9")),
        ("bad-domain", beat()),
        ("unknown-engine", beat()),
    ],
    ids=["no-node-id", "unknown-node", "domain-not-pd-domain", "engine-unknown"],
)
def test_a_first_heartbeat_that_cannot_be_placed_is_dropped(
    handler: HeartbeatHandler, store: Store, setup: str, message: dict[str, Any]
) -> None:
    # Given a node whose domain names no known engine, or no usable node at all
    if setup == "bad-domain":
        handler.node_state("node1", "some_domain", "600-RUNNING")
    elif setup == "unknown-engine":
        handler.node_state("node1", "pd_domain_engine9", "600-RUNNING")
    before = snapshot(store)
    # When the agent first heartbeats
    handler.heartbeat(message, sender="eeagent_1")
    # Then nothing is recorded (the agent keeps heartbeating)
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("vm_state", "level"),
    [
        (None, logging.WARNING),  # no provisioner record: genuinely unknown
        ("running", logging.WARNING),  # its record is gone although the VM runs
        ("terminating", logging.INFO),  # being retired: its agents still heartbeat
        ("terminated", logging.INFO),  # just retired
    ],
)
def test_a_heartbeat_from_a_retired_node_is_info_and_from_an_unknown_one_a_warning(
    handler: HeartbeatHandler,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    vm_state: str | None,
    level: int,
) -> None:
    # Given node9 has no node record, and the provisioner's record in vm_state
    if vm_state is not None:
        store.add_vm(VM("node9", "engine1", "default", state=vm_state, reason="scale-down"))
    # When an agent of node9 heartbeats
    with caplog.at_level(logging.DEBUG, logger="dispatcher.registration"):
        handler.heartbeat(beat(node_id="node9"), sender="eeagent_1")
    # Then the heartbeat is dropped, logged at the level its cause deserves
    (record,) = [r for r in caplog.records if "node9" in r.getMessage()]
    assert record.levelno == level
    assert store.list_resources() == []


def test_the_retired_states_are_the_provisioners() -> None:
    from dispatcher.provisioner.base import VMState
    from dispatcher.registration import _RETIRED

    assert set(_RETIRED) == {VMState.TERMINATING, VMState.TERMINATED}


def test_an_engine_added_by_another_instance_is_found_in_the_store(
    store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given an engine "late" persisted by another dispatcher instance only
    store.add_engine("late", {"slots": 3})
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    handler.node_state("node1", "pd_domain_late", "600-RUNNING")
    # When an agent of that engine first heartbeats
    handler.heartbeat(beat(), sender="eeagent_1")
    # Then it is registered with that engine's slots
    assert resource(store).slot_count == 3


def test_the_process_list_of_a_first_heartbeat_is_not_processed(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger
) -> None:
    # Given node1 and an ASSIGNED process
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    put_process(store, "proc1", "350-ASSIGNED")
    # When the first heartbeat reports processes (known and unknown)
    handler.heartbeat(
        beat([report("proc1", 0, [500, "RUNNING"]), report("ghost", 0, [500, "RUNNING"])]),
        sender="eeagent_1",
    )
    # Then only the resource is registered (legacy); the next heartbeat handles them
    assert store.get_process("proc1").state == "350-ASSIGNED"  # type: ignore[union-attr]
    assert messenger.messages == []


# -- concurrent first heartbeats on one node -------------------------------------------


class RacingStore(MemoryStore):
    """Runs ``before_node_update`` once, just before the first node update."""

    def __init__(self) -> None:
        super().__init__()
        self.before_node_update: Any = None

    def update_node(self, node: Node) -> None:
        hook, self.before_node_update = self.before_node_update, None
        if hook is not None:
            hook()
        super().update_node(node)


def test_two_agents_registering_on_one_node_at_once_are_both_listed(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given node1, and a second agent whose registration lands between the first
    # agent's read and write of the node
    store = RacingStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    store.before_node_update = lambda: handler.heartbeat(
        beat(eeagent_id="eeagent_2"), sender="eeagent_2"
    )
    # When eeagent_1 sends its first heartbeat
    handler.heartbeat(beat(), sender="eeagent_1")
    # Then the node lists both, and both resources exist
    node = store.get_node("node1")
    assert node is not None and sorted(node.resources) == ["eeagent_1", "eeagent_2"]
    assert [r.resource_id for r in store.list_resources()] == ["eeagent_1", "eeagent_2"]


@BOTH_STORES
def test_many_agents_registering_concurrently_are_all_listed(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given node1
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    agents = [f"agent{i}" for i in range(8)]
    start = threading.Barrier(len(agents))

    def first_heartbeat(agent: str) -> None:
        start.wait()
        handler.heartbeat(beat(eeagent_id=agent), sender=agent)

    # When eight agents send their first heartbeats at the same time
    threads = [threading.Thread(target=first_heartbeat, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the node lists all of them
    node = store.get_node("node1")
    assert node is not None and sorted(node.resources) == agents
    assert len(store.list_resources()) == len(agents)


# -- a node removed during a first heartbeat -------------------------------------------


def test_a_node_removed_during_a_first_heartbeat_gets_no_resource(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given node1, removed just as the first heartbeat updates it
    store = RacingStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    store.before_node_update = lambda: store.remove_node("node1")
    # When eeagent_1 sends its first heartbeat, Then no error
    handler.heartbeat(beat(), sender="eeagent_1")
    # And no resource is created
    assert store.list_resources() == [] and store.list_nodes() == []


def test_a_node_evacuated_right_after_registration_leaves_no_orphan(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given node1, evacuated after the agent joined its list but before its record exists
    class LateStore(MemoryStore):
        def add_resource(self, resource: Any) -> None:
            handler.node_state("node1", DOMAIN1, "800-TERMINATED")
            super().add_resource(resource)

    store = LateStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    # When eeagent_1 sends its first heartbeat
    handler.heartbeat(beat(), sender="eeagent_1")
    # Then the resource does not outlive the node
    assert store.list_resources() == [] and store.list_nodes() == []


def test_engines_added_at_run_time_register_agents(
    store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given an engine added with add_engine
    engines = EngineRegistry({"engine1": EngineSettings(slots=4)}, "engine1")
    handler = make_heartbeats(store, messenger, engines, clock=clock)
    handler.add_engine({"engine_id": "big", "slots": 16})
    handler.node_state("nodeb", "pd_domain_big", "600-RUNNING")
    # When an agent on one of its nodes first heartbeats
    handler.heartbeat(beat(node_id="nodeb", eeagent_id="b1"), sender="b1")
    # Then it has that engine's 16 slots
    assert resource(store, "b1").slot_count == 16


def test_one_agent_registering_twice_at_once_is_recorded_once(
    messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given node1, and a second heartbeat of the same agent racing with its first
    store = RacingStore()
    handler = make_heartbeats(store, messenger, make_engines(), clock=clock)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    store.before_node_update = lambda: handler.heartbeat(beat(), sender="eeagent_1")
    # When eeagent_1's first heartbeat is handled
    handler.heartbeat(beat(), sender="eeagent_1")
    # Then there is one resource, listed once
    node = store.get_node("node1")
    assert node is not None and node.resources == ["eeagent_1"]
    assert [r.resource_id for r in store.list_resources()] == ["eeagent_1"]


@BOTH_STORES
@pytest.mark.parametrize(
    ("agent", "joins"),
    [
        ("pd-e1-abc-0", True),  # a name the provisioner gave this node's agents
        ("pd-e1-abc-12", True),
        ("pd-e1-xyz-0", False),  # another node's agent (its key) claims this node
        ("eeagent_1", False),
        ("pd-e1-abc-01", False),
        ("pd-e1-abc-", False),
    ],
)
def test_on_a_provisioned_node_only_its_own_agents_register(
    handler: HeartbeatHandler,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    agent: str,
    joins: bool,
) -> None:
    # Given node pd-e1-abc, started by the provisioner and running
    store.add_vm(VM("pd-e1-abc", "engine1", "default", state="running"))
    handler.node_state("pd-e1-abc", DOMAIN1, "600-RUNNING")
    # When an agent heartbeats for it
    with caplog.at_level(logging.WARNING, logger="dispatcher.registration"):
        handler.heartbeat(beat(node_id="pd-e1-abc"), sender=f"sys.{agent}")
    # Then only the node's own agents join; another is dropped with a WARNING
    assert [r.resource_id for r in store.list_resources()] == ([agent] if joins else [])
    assert any("claims node pd-e1-abc" in r.getMessage() for r in caplog.records) != joins


@BOTH_STORES
def test_on_a_node_announced_by_node_state_any_agent_registers(
    handler: HeartbeatHandler, store: Store
) -> None:
    # (a static site: no provisioner record, so no naming rule; the legacy behaviour)
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    handler.heartbeat(beat(node_id="node1"), sender="sys.anything_7")
    assert [r.resource_id for r in store.list_resources()] == ["anything_7"]
