"""An agent takes launch, terminate, restart and cleanup only from its dispatcher,
signed when it has a key; anything else is refused, logged, and changes nothing.
Broker-less (the embedded transport), over the in-memory process backend."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError
from dashi.security import HEADER_SIGNATURE, MessageSigner, SignatureVerifier
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.service import AgentService
from tests.eeagent.conftest import PdSink, sleeper, wait_for

KEY = "agent-commands-test-key-0123456789"
PD = "process_dispatcher"
COMMANDS = ("launch_process", "terminate_process", "restart_process", "cleanup")


@pytest.fixture
def broker(tmp_path: Path, sysname: str) -> BrokerConfig:
    return BrokerConfig(uri="embedded://", state_dir=tmp_path / "state", sysname=sysname)


@pytest.fixture
def pd(broker: BrokerConfig) -> Iterator[PdSink]:
    sink = PdSink(broker)
    sink.service.start()
    yield sink
    sink.service.stop()


def serve(broker: BrokerConfig, key: str | None = None, name: str = "agent1") -> AgentService:
    agent = EEAgent(name=name, node_id="node1", slots=4, control=FakeProcessControl())
    verifier = None if key is None else SignatureVerifier(key, max_age=300)
    service = AgentService(agent, broker=broker, pd_name=PD, heartbeat=3600, verifier=verifier)
    service.start()
    return service


@pytest.fixture
def agent(broker: BrokerConfig, pd: PdSink) -> Iterator[AgentService]:
    service = serve(broker)
    yield service
    service.stop()


@pytest.fixture
def keyed_agent(broker: BrokerConfig, pd: PdSink) -> Iterator[AgentService]:
    service = serve(broker, KEY)
    yield service
    service.stop()


def launch_args(upid: str = "p1", round: int = 1) -> dict[str, Any]:
    return {"u_pid": upid, "round": round, "run_type": "supd", "parameters": sleeper()}


def held(broker: BrokerConfig, name: str = "agent1") -> list[tuple[str, str]]:
    """What the agent reports, asked by anyone (``dump_state`` is open). The agent
    serves one request at a time, so everything sent before has been handled."""
    with RpcClient(broker, "an-operator") as rpc:
        beat = rpc.call(name, "dump_state", rpc=True)
    return [(p["upid"], p["round"]) for p in beat["processes"]]


def publish(broker: BrokerConfig, body: dict[str, Any], headers: dict[str, Any]) -> None:
    """Put a raw message on agent1's queue, with exactly these headers."""
    with broker.connection() as connection:
        producer = kombu.Producer(connection.channel(), exchange=broker.kombu_exchange())
        producer.publish(
            body, routing_key=broker.prefixed("agent1"), serializer="json", headers=headers
        )


def test_commands_from_the_dispatcher_are_carried_out(
    agent: AgentService, broker: BrokerConfig
) -> None:
    with RpcClient(broker, PD) as dispatcher:
        dispatcher.fire("agent1", "launch_process", **launch_args())
        dispatcher.call("agent1", "restart_process", u_pid="p1", round=2)
    assert held(broker) == [("p1", "2")]


@pytest.mark.parametrize("sender", ["pd-cli", "agent2", f"other.{PD}"])
def test_a_call_from_anyone_else_gets_not_authorized_and_changes_nothing(
    agent: AgentService, broker: BrokerConfig, sender: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a process the dispatcher launched
    with RpcClient(broker, PD) as dispatcher:
        dispatcher.fire("agent1", "launch_process", **launch_args())
    assert held(broker) == [("p1", "1")]
    # When someone else calls each command
    with RpcClient(broker, sender) as intruder:
        for op, args in [
            ("launch_process", launch_args("p2")),
            ("terminate_process", {"u_pid": "p1", "round": 1}),
            ("restart_process", {"u_pid": "p1", "round": 5}),
            ("cleanup", {"u_pid": "p1", "round": 1}),
        ]:
            with caplog.at_level(logging.WARNING), pytest.raises(BadRequestError) as info:
                intruder.call("agent1", op, args=args)
            # Then each gets the typed refusal naming the accepted sender
            assert info.value.value.startswith(f"not authorized: {op} is accepted only from")
    # And nothing changed; every refusal was logged
    assert held(broker) == [("p1", "1")]
    assert agent.agent.record("p1", 1).state == "500-RUNNING"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert {r.getMessage().split()[2] for r in refusals} == set(COMMANDS)


def test_a_fire_from_anyone_else_is_dropped(agent: AgentService, broker: BrokerConfig) -> None:
    with RpcClient(broker, "intruder") as intruder:
        intruder.fire("agent1", "launch_process", **launch_args())
    assert held(broker) == []


def test_a_command_without_a_sender_header_is_dropped(
    agent: AgentService, broker: BrokerConfig
) -> None:
    publish(broker, {"op": "launch_process", "args": launch_args()}, headers={})
    assert held(broker) == []


def test_dump_state_and_get_process_logs_stay_open_to_any_sender(
    agent: AgentService, broker: BrokerConfig
) -> None:
    with RpcClient(broker, PD) as dispatcher:
        dispatcher.fire("agent1", "launch_process", **launch_args())
    with RpcClient(broker, "an-operator") as operator:
        assert operator.call("agent1", "dump_state", rpc=True)["processes"]
        assert operator.call("agent1", "get_process_logs", u_pid="p1", round=1) == ""


def test_fires_carry_the_senders_name(pd: PdSink, broker: BrokerConfig, sysname: str) -> None:
    # The dispatcher's fires name it, as legacy dashi fires did
    with RpcClient(broker, "agent9") as client:
        client.fire(PD, "heartbeat", message={"eeagent_id": "agent9", "processes": []})
    _, sender = pd.next()
    assert sender == f"{sysname}.agent9"


def test_an_agent_with_a_key_refuses_unsigned_commands_even_from_the_dispatcher(
    keyed_agent: AgentService, broker: BrokerConfig
) -> None:
    with RpcClient(broker, PD) as unsigned:
        with pytest.raises(BadRequestError, match="must carry a signature"):
            unsigned.call("agent1", "launch_process", args=launch_args())
        unsigned.fire("agent1", "launch_process", **launch_args("p2"))
    assert held(broker) == []


def test_an_agent_with_a_key_refuses_commands_signed_with_another_key(
    keyed_agent: AgentService, broker: BrokerConfig
) -> None:
    signer = MessageSigner("not-the-key-but-long-enough")
    with (
        RpcClient(broker, PD, signer=signer) as forger,
        pytest.raises(BadRequestError, match="invalid signature"),
    ):
        forger.call("agent1", "launch_process", args=launch_args())
    assert held(broker) == []


def test_an_agent_with_a_key_carries_out_signed_commands_from_the_dispatcher(
    keyed_agent: AgentService, broker: BrokerConfig
) -> None:
    with RpcClient(broker, PD, signer=MessageSigner(KEY)) as dispatcher:
        dispatcher.fire("agent1", "launch_process", **launch_args())
        dispatcher.call("agent1", "terminate_process", u_pid="p1", round=1)
        wait_for(lambda: keyed_agent.agent.record("p1", 1).state == "700-TERMINATED")
        dispatcher.fire("agent1", "cleanup", u_pid="p1", round=1)
    assert held(broker) == []


def test_a_signed_command_for_another_agent_or_replayed_is_refused(
    keyed_agent: AgentService, broker: BrokerConfig, sysname: str
) -> None:
    # Given a launch the dispatcher signed for agent2
    sender = f"{sysname}.{PD}"
    signer = MessageSigner(KEY)
    body = {"op": "launch_process", "args": launch_args()}
    for_agent2 = signer.sign(
        op=body["op"], args=body["args"], sender=sender, to=f"{sysname}.agent2"
    )
    # When it is put on agent1's queue: refused
    publish(broker, body, {"sender": sender, HEADER_SIGNATURE: for_agent2})
    assert held(broker) == []
    # A genuine one for agent1 is carried out, once: the same message again is refused
    genuine = signer.sign(op=body["op"], args=body["args"], sender=sender, to=f"{sysname}.agent1")
    publish(broker, body, {"sender": sender, HEADER_SIGNATURE: genuine})
    assert held(broker) == [("p1", "1")]
    with RpcClient(broker, PD, signer=signer) as dispatcher:
        dispatcher.call("agent1", "cleanup", u_pid="p1", round=1)
    publish(broker, body, {"sender": sender, HEADER_SIGNATURE: genuine})
    assert held(broker) == []


def test_an_agent_without_a_key_ignores_signatures(
    agent: AgentService, broker: BrokerConfig
) -> None:
    # A keyed dispatcher still drives agents that have no key (during a roll-out)
    with RpcClient(broker, PD, signer=MessageSigner(KEY)) as dispatcher:
        dispatcher.fire("agent1", "launch_process", **launch_args())
    assert held(broker) == [("p1", "1")]
