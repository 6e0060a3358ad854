"""Evacuation of lost agents, and resource states (DISABLED is final)."""

from __future__ import annotations

import pytest

from dispatcher.evacuation import Evacuation, release_node_exclusive
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.states import ExecutionResourceState, ProcessState
from tests.health.conftest import (
    SUBSCRIBERS,
    add_agent,
    notified,
    process,
    put_process,
    resource,
)

S = ProcessState
R = ExecutionResourceState


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (None, (S.DIED_REQUESTED, 1)),
        ("ABNORMAL", (S.DIED_REQUESTED, 1)),
        ("ALWAYS", (S.DIED_REQUESTED, 1)),
        ("NEVER", (S.FAILED, 0)),
    ],
)
@pytest.mark.parametrize("state", [S.ASSIGNED, S.PENDING, S.RUNNING])
def test_evacuating_a_resource_moves_its_processes_on_by_restart_mode(
    evacuation: Evacuation,
    store: Store,
    messenger: RecordingMessenger,
    state: str,
    mode: str | None,
    expected: tuple[str, int],
) -> None:
    # Given a MISSING agent holding a process in `state` with restart mode `mode`
    add_agent(store, state=R.MISSING)
    put_process(store, "proc1", state, assigned="eeagent_1", restart_mode=mode)
    # When the agent is evacuated
    evacuation.evacuate_resource(resource(store))
    # Then the process is re-queued in a new round, or FAILED (exit state FAILED)
    p = process(store, "proc1")
    assert (p.state, p.round, p.assigned) == (*expected, None)
    assert store.list_queued() == ([("proc1", 1)] if expected[1] else [])
    # And the agent's slots are released
    assert resource(store).assigned == []


def test_evacuation_ends_terminating_processes_and_leaves_ended_ones(
    evacuation: Evacuation, store: Store, messenger: RecordingMessenger
) -> None:
    # Given a MISSING agent with a TERMINATING process and a stale entry of an EXITED one
    add_agent(store, state=R.MISSING)
    put_process(store, "term", S.TERMINATING, assigned="eeagent_1", subscribers=SUBSCRIBERS)
    put_process(store, "done", S.EXITED, assigned="eeagent_1", subscribers=SUBSCRIBERS)
    # When it is evacuated
    evacuation.evacuate_resource(resource(store))
    # Then the TERMINATING one is TERMINATED with its assignment cleared, the other untouched
    term = process(store, "term")
    assert (term.state, term.assigned) == (S.TERMINATED, None)
    assert process(store, "done").state == S.EXITED
    assert notified(messenger) == [("term", S.TERMINATED, 0)]


def test_evacuation_releases_node_exclusive_tags(evacuation: Evacuation, store: Store) -> None:
    # Given a MISSING agent whose process holds the node's tag
    add_agent(store, state=R.MISSING)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", node_exclusive="port5000")
    node = store.get_node("node1")
    assert node is not None
    node.node_exclusive = ["port5000", "other"]
    store.update_node(node)
    # When it is evacuated
    evacuation.evacuate_resource(resource(store))
    # Then only that tag is released
    node = store.get_node("node1")
    assert node is not None and node.node_exclusive == ["other"]


def test_evacuation_skips_entries_of_rounds_that_moved_on(
    evacuation: Evacuation, store: Store
) -> None:
    # Given a MISSING agent listing round 0 of a process now in round 1 elsewhere
    add_agent(store, state=R.MISSING)
    put_process(store, "proc1", S.RUNNING, round_=1, assigned="eeagent_2")
    agent = resource(store)
    agent.assigned = [("proc1", 0)]
    store.update_resource(agent)
    # When it is evacuated
    evacuation.evacuate_resource(resource(store))
    # Then the process is untouched and the stale entry gone
    assert process(store, "proc1").state == S.RUNNING
    assert resource(store).assigned == []


def test_slots_of_a_resource_that_came_back_ok_are_left_to_heartbeats(
    evacuation: Evacuation, store: Store
) -> None:
    # Given an agent evacuated from a stale read while its record says OK again
    add_agent(store, state=R.OK)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1")
    # When it is evacuated
    evacuation.evacuate_resource(resource(store))
    # Then the process moved on but the OK resource's list is not rewritten
    assert process(store, "proc1").state == S.DIED_REQUESTED
    assert resource(store).assigned == [("proc1", 0)]


@pytest.mark.parametrize("state", [R.OK, R.WARNING, R.MISSING])
def test_resource_states_change_until_disabled(
    evacuation: Evacuation, store: Store, state: str
) -> None:
    # Given an agent in `state`
    add_agent(store, state=state)
    # When it is disabled, Then it is DISABLED and stays so
    evacuation.change_resource_state("eeagent_1", R.DISABLED)
    for other in (R.OK, R.WARNING, R.MISSING):
        evacuation.change_resource_state("eeagent_1", other)
        assert resource(store).state == R.DISABLED


def test_setting_the_same_resource_state_writes_nothing(
    evacuation: Evacuation, store: Store
) -> None:
    # Given an OK agent, When it is set OK, Then it is not rewritten
    version = add_agent(store).version
    evacuation.change_resource_state("eeagent_1", R.OK)
    assert resource(store).version == version
    assert evacuation.change_resource_state("nobody", R.OK) is None


def test_releasing_tags_of_a_node_that_is_gone_is_harmless(store: Store) -> None:
    # Given/When tags are released on an unknown node, Then nothing happens
    release_node_exclusive(store, "node9", ["port5000"])
    assert store.list_nodes() == []
