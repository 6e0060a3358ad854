"""Playing the attacker on a real broker: every attack of issue 16 is refused and
changes nothing.

The dispatcher runs on RabbitMQ with principals, a master key for the agents and
``security.require_auth`` on. Two fake agents (``a1`` on ``node1``, ``a2`` on
``node2``) hold their own keys, derived from the master: they sign their
heartbeats and take only commands signed with their key. The attacker can publish
anything to the exchange, and in some attacks holds agent ``a2``'s key (a VM it
took over). A process ``p1`` runs on ``a1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError
from dashi.security import HEADER_SIGNATURE, MessageSigner, StaticKeys, derive_key
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.nonces import FileNonceJournal
from eeagent.service import AgentService
from pdcommon.auth import principal_key
from pdcommon.settings import load_settings
from pdcommon.wire import agent_key_hex, agent_verifier, dispatcher_signer
from tests.eeagent.conftest import sleeper
from tests.security.test_access import ROLES, SECRETS
from tests.service.conftest import Harness, harness_factory, wait_for
from tests.support.fake_eeagent import FakeEEAgent

__all__ = ["harness_factory"]  # the fixture, shared with tests/service

pytestmark = pytest.mark.rabbitmq

MASTER = "attack-test-master-key-0123456789"
PD = "process_dispatcher"


class World:
    """The secured dispatcher, its two keyed agents and ``p1`` running on ``a1``."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.broker = harness.broker
        self.agents: dict[str, FakeEEAgent] = {}
        for name, node in (("a1", "node1"), ("a2", "node2")):
            harness.client.node_state(node, "pd_domain_engine1", "600-RUNNING")
            agent = FakeEEAgent(
                self.broker, name, node, heartbeat_interval=0.5, key=self.key(name)
            ).start()
            harness.agents[name] = agent  # stopped with the harness
            self.agents[name] = agent
            wait_for(lambda n=name: n in harness.resources(), what=f"{name} registered")
        harness.client.schedule_process("p1", "D", execution_engine_id="engine1")
        self.p1 = harness.wait_state("p1", "500-RUNNING")

    def key(self, agent: str) -> bytes:
        return derive_key(MASTER, self.broker.prefixed(agent))

    def state(self) -> dict[str, Any]:
        """What an attack must not change: processes, nodes and what each agent holds."""
        dump = self.harness.client.dump()
        return {
            "processes": {
                upid: (p["state"], p["round"], p["assigned"])
                for upid, p in dump["processes"].items()
            },
            "nodes": sorted(dump["nodes"]),
            "assigned": {
                r: sorted(map(tuple, v["assigned"])) for r, v in dump["resources"].items()
            },
            "definitions": sorted(self.harness.client.list_definitions()),
            "commands": {name: list(agent.received) for name, agent in self.agents.items()},
        }

    def attacker(
        self, name: str = "mallory", *, key: bytes | None = None, principal: str | None = None
    ) -> RpcClient:
        signer = None
        if principal is not None:
            signer = MessageSigner(principal_key(SECRETS[principal]), principal=principal)
        elif key is not None:
            signer = MessageSigner(StaticKeys(key))
        return RpcClient(self.broker, name, timeout=20, signer=signer)


@pytest.fixture
def world(harness_factory: Callable[..., Harness]) -> Iterator[World]:
    principals = {name: {"role": ROLES[name], "secret": SECRETS[name]} for name in ROLES}
    harness = harness_factory(
        overrides={
            "security.hmac_key": MASTER,
            "security.principals": principals,
            "security.require_auth": True,
            "security.client": {"principal": "ada", "secret": SECRETS["ada"]},
        }
    )
    harness.define()
    yield World(harness)


def refused(call: Callable[[], Any]) -> str:
    with pytest.raises(BadRequestError) as info:
        call()
    assert info.value.value.startswith("not authorized:"), info.value.value
    return info.value.value


def test_terminating_someone_elses_process_is_refused(world: World) -> None:
    before = world.state()
    # Without any key, or as a reader
    with world.attacker() as anyone, world.attacker(principal="rita") as reader:
        refused(lambda: anyone.call(PD, "terminate_process", upid="p1"))
        refused(lambda: reader.call(PD, "terminate_process", upid="p1"))
        refused(lambda: anyone.call(PD, "restart_process", upid="p1"))
    assert world.state() == before


def test_scheduling_a_process_is_refused(world: World) -> None:
    before = world.state()
    executable = {"exec": "/bin/sh", "argv": ["-c", "id"]}
    with world.attacker() as anyone, world.attacker(principal="rita") as reader:
        for rpc in (anyone, reader):
            refused(
                lambda r=rpc: r.call(
                    PD,
                    "create_definition",
                    args={
                        "definition_id": "evil",
                        "definition_type": "supd",
                        "executable": executable,
                    },
                )
            )
            refused(lambda r=rpc: r.call(PD, "schedule_process", upid="evil", definition_id="D"))
    assert world.harness.client.describe_process("evil") is None
    assert world.state() == before


def test_evacuating_a_node_with_node_state_is_refused(world: World) -> None:
    before = world.state()
    args = {"node_id": "node1", "domain_id": "pd_domain_engine1", "state": "800-TERMINATED"}
    # Without a key, as an operator, and with an agent's key
    with (
        world.attacker() as anyone,
        world.attacker(principal="otto") as operator,
        world.attacker("a2", key=world.key("a2")) as agent2,
    ):
        refused(lambda: anyone.call(PD, "node_state", args=args))
        refused(lambda: operator.call(PD, "node_state", args=args))
        refused(lambda: agent2.call(PD, "node_state", args=args))
        # announcing a fake node is refused too
        refused(lambda: anyone.call(PD, "node_state", args={**args, "node_id": "fake"}))
    assert world.state() == before
    assert world.harness.describe("p1")["state"] == "500-RUNNING"


def test_a_heartbeat_forged_for_another_agent_is_refused(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    before = world.state()
    failed = {
        "eeagent_id": "a1",
        "node_id": "node1",
        "processes": [
            {"upid": "p1", "round": str(world.p1["round"]), "state": [850, "FAILED"], "msg": "x"}
        ],
    }
    # When the holder of a2's key reports as a1 (sender a1), called and fired,
    # and someone without a key fires one too
    with caplog.at_level(logging.WARNING, logger="pdcommon.auth"):
        with world.attacker("a1", key=world.key("a2")) as forger:
            refused(lambda: forger.call(PD, "heartbeat", message=failed))
            forger.fire(PD, "heartbeat", message=failed)
        with world.attacker("a1") as unsigned:
            unsigned.fire(PD, "heartbeat", message=failed)
        wait_for(
            lambda: len([r for r in caplog.records if "refused heartbeat" in r.getMessage()]) >= 3,
            what="three refused heartbeats",
        )
    # Then p1 still runs on a1: nothing changed
    assert world.state() == before


def test_a_command_signed_with_another_agents_key_is_refused(world: World) -> None:
    before = world.state()
    p1 = world.p1
    with world.attacker(PD, key=world.key("a2")) as forger:
        message = refused(
            lambda: forger.call("a1", "terminate_process", u_pid="p1", round=p1["round"])
        )
        assert "invalid signature" in message
        refused(
            lambda: forger.call(
                "a1",
                "launch_process",
                args={
                    "u_pid": "evil",
                    "round": 0,
                    "run_type": "supd",
                    "parameters": sleeper(),
                },
            )
        )
    assert world.state() == before


def test_reading_a_processs_logs_is_refused(world: World) -> None:
    before = world.state()
    a1 = world.agents["a1"]
    args = {"u_pid": "p1", "round": world.p1["round"]}
    # From the agent: unsigned under the dispatcher's name, or with another agent's key
    with world.attacker(PD) as unsigned, world.attacker(PD, key=world.key("a2")) as forger:
        refused(lambda: unsigned.call("a1", "get_process_logs", args=args))
        refused(lambda: forger.call("a1", "get_process_logs", args=args))
    # From the dispatcher, without authenticating
    with world.attacker() as anyone:
        refused(lambda: anyone.call(PD, "get_process_logs", upid="p1"))
    assert a1.ops("get_process_logs") == []
    assert world.state() == before
    # A reader gets them (the dispatcher signs its request with a1's key)
    assert "stdout of p1" in world.harness.client.get_process_logs("p1")


def test_a_command_replayed_after_the_agent_restarts_is_refused(
    tmp_path: Path, amqp_uri: str, sysname: str
) -> None:
    # Given a real agent that holds only its own key and keeps nonces with its state
    broker = BrokerConfig(uri=amqp_uri, sysname=sysname)
    pd_settings = load_settings(
        overrides={
            "state_dir": str(tmp_path / "pd"),
            "dashi.sysname": sysname,
            "security.hmac_key": MASTER,
        }
    )
    agent_settings = load_settings(
        overrides={
            "state_dir": str(tmp_path / "agent"),
            "dashi.sysname": sysname,
            "security.agent_key": agent_key_hex(pd_settings, "a1"),
        }
    )
    journal = tmp_path / "nonces.log"

    def start_agent() -> AgentService:
        agent = EEAgent(name="a1", node_id="node1", slots=4, control=FakeProcessControl())
        service = AgentService(
            agent,
            broker=broker,
            pd_name=PD,
            heartbeat=3600,
            verifier=agent_verifier(agent_settings, FileNonceJournal(journal)),
        )
        service.start()
        return service

    # And a launch the dispatcher signed for it, captured on the wire
    signer = dispatcher_signer(pd_settings)
    assert signer is not None
    body = {
        "op": "launch_process",
        "args": {"u_pid": "p1", "round": 1, "run_type": "supd", "parameters": sleeper()},
    }
    sender = broker.prefixed(PD)
    headers = {
        "sender": sender,
        HEADER_SIGNATURE: signer.sign(
            op=body["op"], args=body["args"], sender=sender, to=broker.prefixed("a1")
        ),
    }

    def publish() -> None:
        with broker.connection() as connection:
            producer = kombu.Producer(connection.channel(), exchange=broker.kombu_exchange())
            producer.publish(
                body, routing_key=broker.prefixed("a1"), serializer="json", headers=headers
            )

    def held(service: AgentService) -> list[str]:
        with RpcClient(broker, "observer") as rpc:
            beat = rpc.call("a1", "dump_state", rpc=True)
        return sorted(p["upid"] for p in beat["processes"])

    service = start_agent()
    try:
        publish()
        wait_for(lambda: held(service) == ["p1"], what="the genuine launch carried out")
    finally:
        service.stop()
    # When the agent restarts (its processes forgotten by the fake backend) and the
    # captured launch is sent again, within the replay window
    service = start_agent()
    try:
        publish()
        # (a genuine command after it: the agent serves one request at a time)
        with RpcClient(broker, PD, signer=signer) as dispatcher:
            dispatcher.call(
                "a1",
                "launch_process",
                args={
                    "u_pid": "p2",
                    "round": 1,
                    "run_type": "supd",
                    "parameters": sleeper(),
                },
            )
        # Then the replay was refused: only the genuine new launch is held
        assert held(service) == ["p2"]
    finally:
        service.stop()
