"""Malformed ``heartbeat`` and ``node_state`` requests over the wire.

Each is answered with ``BadRequestError`` (when called rather than fired) and
changes nothing: ``dump()`` reads the same before and after. The agent's own
periodic heartbeats are stopped first so that the dump holds still.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from dashi.client import RpcClient
from dashi.errors import BadRequestError
from tests.service.conftest import DEFINITION, Harness

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

NOW = dt.datetime.now(dt.UTC).isoformat()


def beat(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "eeagent_id": "node1_ee0",
        "node_id": "node1",
        "timestamp": NOW,
        "processes": [{"upid": "proc1", "round": "0", "state": [800, "EXITED"]}],
    }
    message.update(changes)
    return message


def process(**changes: Any) -> dict[str, Any]:
    return {"upid": "proc1", "round": "0", "state": [800, "EXITED"], **changes}


BAD_HEARTBEATS: list[Any] = [
    "not a message",
    None,
    [1, 2],
    {k: v for k, v in beat().items() if k != "timestamp"},
    beat(timestamp="2013-10-21T19:52:05"),  # no UTC offset
    beat(timestamp="yesterday"),
    beat(timestamp=1382385125),
    beat(processes="proc1"),
    beat(processes=None),
    beat(processes=[process(round="x")]),
    beat(processes=[process(round=-1)]),
    beat(processes=[process(round=True)]),
    beat(processes=[process(state="EXITED")]),
    beat(processes=[process(state=[800, "EXITED", "extra"])]),
    beat(processes=[process(upid="")]),
    # one good entry does not let a bad one through: the whole beat is refused
    beat(processes=[process(), process(upid="proc2", state=None)]),
    beat(node_id=""),
]

BAD_NODE_STATES: list[dict[str, Any]] = [
    {"node_id": "", "domain_id": "pd_domain_engine1", "state": "600-RUNNING"},
    {"node_id": 5, "domain_id": "pd_domain_engine1", "state": "600-RUNNING"},
    {"node_id": "node9", "domain_id": "pd_domain_engine1"},
    {"node_id": "node9", "domain_id": 7, "state": "600-RUNNING"},
    {"node_id": "node9", "domain_id": "pd_domain_engine1", "state": 600},
    {
        "node_id": "node9",
        "domain_id": "pd_domain_engine1",
        "state": "600-RUNNING",
        "properties": "hat_type=fedora",
    },
    {"node_id": "node9", "domain_id": "pd_domain_engine1", "state": "600-RUNNING", "hat": 1},
    {"node_id": "node1", "domain_id": ["pd_domain_engine1"], "state": "800-TERMINATED"},
]


@pytest.fixture
def settled(harness_factory: Callable[..., Harness]) -> tuple[Harness, RpcClient]:
    """A dispatcher holding one node, one agent and one running process, at rest."""
    pd = harness_factory(overrides={"processdispatcher.monitor_resource_heartbeats": False})
    pd.define()
    (agent,) = pd.add_node("node1")
    pd.client.schedule_process("proc1", DEFINITION)
    pd.wait_state("proc1", "500-RUNNING")
    agent.stop()  # no more heartbeats: the records hold still
    pd.agents.clear()
    caller = RpcClient(pd.broker, "node1_ee0", timeout=20)  # the agent's sender name
    return pd, caller


def refused(pd: Harness, caller: RpcClient, op: str, args: dict[str, Any], match: str) -> None:
    before = pd.client.dump()
    with pytest.raises(BadRequestError, match=match):
        caller.call("process_dispatcher", op, args=args)
    assert pd.client.dump() == before, (op, args)


def test_malformed_heartbeats_are_refused_and_change_nothing(
    settled: tuple[Harness, RpcClient],
) -> None:
    pd, caller = settled
    try:
        for message in BAD_HEARTBEATS:
            refused(pd, caller, "heartbeat", {"message": message}, "invalid heartbeat")
        # arguments themselves: missing, or unknown
        refused(pd, caller, "heartbeat", {}, "message")
        refused(pd, caller, "heartbeat", {"message": beat(), "extra": 1}, "extra")
    finally:
        caller.close()
    assert pd.describe("proc1")["state"] == "500-RUNNING"


def test_malformed_node_states_are_refused_and_change_nothing(
    settled: tuple[Harness, RpcClient],
) -> None:
    pd, caller = settled
    try:
        for args in BAD_NODE_STATES:
            refused(pd, caller, "node_state", args, "node_id|domain_id|state|properties|hat")
    finally:
        caller.close()
    assert set(pd.client.dump()["nodes"]) == {"node1"}


def test_a_well_formed_heartbeat_after_refused_ones_is_applied(
    settled: tuple[Harness, RpcClient],
) -> None:
    # Refusals leave the dispatcher working: the agent's valid report is recorded.
    pd, caller = settled
    try:
        refused(pd, caller, "heartbeat", {"message": beat(timestamp="soon")}, "timestamp")
        assert caller.call("process_dispatcher", "heartbeat", message=beat()) is None
    finally:
        caller.close()
    pd.wait_state("proc1", "800-EXITED")
