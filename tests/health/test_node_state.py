"""node_state: nodes come and go (dead states: docs/architecture.md, decision 3)."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.states import InstanceState, ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    DOMAIN1,
    NOW,
    SUBSCRIBERS,
    FakeClock,
    bring_up,
    notified,
    process,
    put_process,
    snapshot,
)

DEAD = list(InstanceState.DEAD)
IGNORED = [
    InstanceState.REQUESTED,
    InstanceState.PENDING,
    InstanceState.STARTED,
    "999-WHATEVER",
]


# -- a node added and removed ----------------------------------------------------------


@BOTH_STORES
def test_a_running_node_is_recorded_and_a_terminating_one_removed(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given an empty dispatcher
    # When node1 is announced RUNNING
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    # Then it is recorded with its domain, no resources and the time it appeared
    node = store.get_node("node1")
    assert node is not None
    assert (node.domain_id, node.resources, node.node_exclusive) == (DOMAIN1, [], [])
    assert node.state_time == NOW
    # When it is TERMINATING
    handler.node_state("node1", DOMAIN1, "700-TERMINATING")
    # Then it is gone, and a later TERMINATED for the unknown node is harmless
    assert store.get_node("node1") is None
    handler.node_state("node1", DOMAIN1, "800-TERMINATED")
    assert store.list_nodes() == []


def test_a_known_node_announced_running_again_is_left_unchanged(
    handler: HeartbeatHandler, store: Store, clock: FakeClock
) -> None:
    # Given node1 running with a hostname
    handler.node_state("node1", DOMAIN1, "600-RUNNING", {"hostname": "vm1"})
    before = snapshot(store)
    # When it is announced RUNNING again later, with other properties
    clock.advance(60)
    handler.node_state("node1", DOMAIN1, "600-RUNNING", {"hostname": "vm2"})
    # Then nothing is written (legacy: properties are not updated)
    assert snapshot(store) == before


def test_node_properties_are_copied_onto_the_node(handler: HeartbeatHandler, store: Store) -> None:
    # Given/When node1 is announced with properties
    properties = {"hostname": "vm1", "hat_type": "fedora"}
    handler.node_state("node1", DOMAIN1, "600-RUNNING", properties)
    properties["hostname"] = "changed"
    # Then the node holds a copy
    node = store.get_node("node1")
    assert node is not None and node.properties == {"hostname": "vm1", "hat_type": "fedora"}


# -- a node with an agent --------------------------------------------------------------


@BOTH_STORES
@pytest.mark.parametrize("dead", DEAD)
def test_a_dead_node_takes_its_resources_with_it(
    handler: HeartbeatHandler, store: Store, dead: str
) -> None:
    # Given node1 running with eeagent_1 registered by its first heartbeat
    bring_up(handler)
    resource = store.get_resource("eeagent_1")
    assert resource is not None and resource.state == "OK"
    # When node1 reports a dead state (TERMINATING, TERMINATED, FAILED or REJECTED)
    handler.node_state("node1", DOMAIN1, dead)
    # Then both the resource and the node are gone
    assert store.list_resources() == []
    assert store.list_nodes() == []


@pytest.mark.parametrize("ignored", IGNORED)
def test_other_node_states_are_ignored(
    handler: HeartbeatHandler, store: Store, ignored: str
) -> None:
    # Given node1 running with an agent
    bring_up(handler)
    before = snapshot(store)
    # When it reports a state that is neither RUNNING nor dead
    handler.node_state("node1", DOMAIN1, ignored)
    # Then nothing changes
    assert snapshot(store) == before


@pytest.mark.parametrize("ignored", IGNORED)
def test_other_states_for_an_unknown_node_record_nothing(
    handler: HeartbeatHandler, store: Store, ignored: str
) -> None:
    # Given/When an unknown node reports a non-RUNNING state, Then nothing is recorded
    handler.node_state("node9", DOMAIN1, ignored)
    assert store.list_nodes() == []


# -- a terminated node's processes move on by restart mode -----------------------------


@BOTH_STORES
@pytest.mark.parametrize("dead", DEAD)
def test_node_death_reschedules_its_processes_by_restart_mode(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, dead: str
) -> None:
    # Given eeagent_1 on node1 holding proc1 RUNNING, proc2 PENDING, proc3 TERMINATING,
    # and proc4 RUNNING with restart mode NEVER, all round 0
    bring_up(handler)
    put_process(store, "proc1", "500-RUNNING", assigned="eeagent_1", subscribers=SUBSCRIBERS)
    put_process(store, "proc2", "400-PENDING", assigned="eeagent_1", subscribers=SUBSCRIBERS)
    put_process(store, "proc3", "600-TERMINATING", assigned="eeagent_1", subscribers=SUBSCRIBERS)
    put_process(store, "proc4", "500-RUNNING", assigned="eeagent_1", restart_mode="NEVER")
    # When node1 dies
    handler.node_state("node1", DOMAIN1, dead)
    # Then proc1 and proc2 are DIED_REQUESTED in round 1, unassigned, queued and notified
    for upid in ("proc1", "proc2"):
        p = process(store, upid)
        assert (p.state, p.round, p.assigned) == (ProcessState.DIED_REQUESTED, 1, None)
    assert store.list_queued() == [("proc1", 1), ("proc2", 1)]
    # And proc3 is TERMINATED in round 0, with its assignment cleared (legacy kept it)
    p3 = process(store, "proc3")
    assert (p3.state, p3.round, p3.assigned) == (ProcessState.TERMINATED, 0, None)
    # And proc4 (NEVER) is FAILED, unassigned
    p4 = process(store, "proc4")
    assert (p4.state, p4.round, p4.assigned) == (ProcessState.FAILED, 0, None)
    assert notified(messenger) == [
        ("proc1", ProcessState.DIED_REQUESTED, 1),
        ("proc2", ProcessState.DIED_REQUESTED, 1),
        ("proc3", ProcessState.TERMINATED, 0),
    ]
    # And the resource and node are gone; no agent was told anything
    assert store.list_resources() == [] and store.list_nodes() == []
    assert messenger.sent_to("eeagent_1") == []


def test_node_death_is_idempotent(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger
) -> None:
    # Given a node that died with a process on it
    bring_up(handler)
    put_process(store, "proc1", "500-RUNNING", assigned="eeagent_1")
    handler.node_state("node1", DOMAIN1, "900-FAILED")
    before, sent = snapshot(store), list(messenger.messages)
    # When the death is reported again
    handler.node_state("node1", DOMAIN1, "800-TERMINATED")
    # Then nothing more happens
    assert snapshot(store) == before and messenger.messages == sent


def test_node_death_evacuates_an_agent_that_registered_unlisted(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given node1 whose agent record names node1 but is missing from its list
    bring_up(handler)
    node = store.get_node("node1")
    assert node is not None
    node.resources = []
    store.update_node(node)
    # When node1 dies
    handler.node_state("node1", DOMAIN1, "700-TERMINATING")
    # Then no resource outlives it
    assert store.list_resources() == []


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"node_id": "", "domain_id": DOMAIN1, "state": "600-RUNNING"}, "node_id"),
        ({"node_id": 5, "domain_id": DOMAIN1, "state": "600-RUNNING"}, "node_id"),
        ({"node_id": "n", "domain_id": 7, "state": "600-RUNNING"}, "domain_id"),
        ({"node_id": "n", "domain_id": DOMAIN1, "state": 600}, "state"),
        (
            {"node_id": "n", "domain_id": DOMAIN1, "state": "600-RUNNING", "properties": [1]},
            "properties",
        ),
    ],
)
def test_ill_typed_node_states_are_rejected_without_writing(
    handler: HeartbeatHandler, store: Store, args: dict[str, object], field: str
) -> None:
    # Given an empty dispatcher, When node_state gets an ill-typed argument
    with pytest.raises(BadRequestError, match=f"invalid {field}"):
        handler.node_state(**args)  # type: ignore[arg-type]
    # Then nothing is recorded
    assert store.list_nodes() == []
