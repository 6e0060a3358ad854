"""The health operations served over the dashi protocol (RpcService.dispatch, no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.service import RpcService
from dispatcher.heartbeats import RPC_OPERATIONS, HeartbeatHandler
from dispatcher.store.base import Store
from tests.health.conftest import DOMAIN1, beat, report, snapshot


@pytest.fixture
def service(handler: HeartbeatHandler) -> RpcService:
    """The registrations the daemon makes (see the HeartbeatHandler docstring)."""
    rpc = RpcService(BrokerConfig(sysname="sys"), "process_dispatcher")
    for op in RPC_OPERATIONS:
        sender = "sender" if op == "heartbeat" else None
        rpc.handle(op, getattr(handler, op), sender_kwarg=sender, validate=False)
    return rpc


def request(service: RpcService, op: str, sender: str = "sys.client", **args: Any) -> Any:
    return service.dispatch({"op": op, "args": args}, {"sender": sender})


def test_an_agent_registers_through_the_wire_protocol(service: RpcService, store: Store) -> None:
    # Given node1 announced the legacy way (a call with an args dict)
    assert request(
        service, "node_state", node_id="node1", domain_id=DOMAIN1, state="600-RUNNING"
    ) == {
        "result": None,
        "error": None,
    }
    # When eeagent_1 fires its heartbeat with its sysname-prefixed sender header
    reply = request(service, "heartbeat", sender="sys.eeagent_1", message=beat())
    # Then the agent is registered under its bare name
    assert reply["error"] is None
    assert [r.resource_id for r in store.list_resources()] == ["eeagent_1"]


def test_a_malformed_heartbeat_becomes_a_bad_request_reply(
    service: RpcService, store: Store
) -> None:
    # Given node1 with eeagent_1
    request(service, "node_state", node_id="node1", domain_id=DOMAIN1, state="600-RUNNING")
    request(service, "heartbeat", sender="sys.eeagent_1", message=beat())
    before = snapshot(store)
    # When a heartbeat with a bad round arrives
    reply = request(
        service,
        "heartbeat",
        sender="sys.eeagent_1",
        message=beat([report("p", "x", "500-RUNNING")]),
    )
    # Then the reply is a BadRequestError and nothing changed
    assert reply["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert "processes.0.round" in reply["error"]["value"]
    assert snapshot(store) == before


def test_a_legacy_client_missing_an_argument_gets_a_bad_request(service: RpcService) -> None:
    # Given/When node_state is called without its state
    reply = request(service, "node_state", node_id="node1", domain_id=DOMAIN1)
    # Then a BadRequestError comes back
    assert reply["error"]["exc_type"] == "dashi.exceptions.BadRequestError"


def test_add_engine_duplicates_reach_the_caller_as_write_conflicts(service: RpcService) -> None:
    # Given an engine added over the wire
    assert (
        request(service, "add_engine", definition={"engine_id": "e9", "slots": 2})["error"] is None
    )
    # When it is added again, Then the caller sees a WriteConflictError
    reply = request(service, "add_engine", definition={"engine_id": "e9", "slots": 2})
    assert reply["error"]["exc_type"] == "dashi.exceptions.WriteConflictError"


def test_the_health_modules_load_no_broker_or_database_library() -> None:
    # Given a fresh interpreter
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import dispatcher.heartbeats, dispatcher.doctor, dispatcher.monitor\n"
        "import dispatcher.evacuation, dispatcher.process_logs, dispatcher.registration\n"
        "print(sorted(m for m in ('kombu', 'sqlalchemy', 'libcloud') if m in sys.modules))\n"
    )
    # When the health modules are imported
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    # Then none of the adapters' libraries is loaded
    assert out.strip() == "[]"
