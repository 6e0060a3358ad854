"""The production RabbitMQ layout of docs/security.md, for real: its rabbitmqctl
commands are run verbatim (in a private vhost, with private user names) and each
promise the page makes, and each limit it states, is checked with real services."""

from __future__ import annotations

import secrets
import shlex
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError
from dashi.security import SignatureVerifier
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.service import AgentService
from tests.eeagent.conftest import PdSink, sleeper, wait_for
from tests.infra import RabbitMQServer

pytestmark = [pytest.mark.rabbitmq]

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
SYSNAME = "prod"
AGENT = "pd-default-0123456789-0"
OTHER_AGENT = "pd-default-0123456789-1"
ROLES = ("pd-dispatcher", "pd-agent", "pd-client")
KEY = "layout-test-shared-key-0123456789"


def documented_commands() -> list[list[str]]:
    """The ``rabbitmqctl`` lines of the page's layout block, split as a shell would."""
    text = DOC.read_text()
    block = next(b for b in text.split("```sh")[1:] if "set_permissions" in b).split("```")[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("rabbitmqctl")]


@dataclass
class Layout:
    rabbitmq: RabbitMQServer
    vhost: str
    users: dict[str, str] = field(default_factory=dict)  # role -> user name
    passwords: dict[str, str] = field(default_factory=dict)  # role -> password

    def uri(self, role: str) -> str:
        port = self.rabbitmq.port
        return f"amqp://{self.users[role]}:{self.passwords[role]}@127.0.0.1:{port}/{self.vhost}"

    def broker(self, role: str) -> BrokerConfig:
        return BrokerConfig(uri=self.uri(role), sysname=SYSNAME)

    def ctl(self, *args: str) -> None:
        result = self.rabbitmq.ctl("rabbitmqctl", *args)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def layout(rabbitmq: RabbitMQServer) -> Iterator[Layout]:
    made = Layout(rabbitmq, f"pd-{uuid.uuid4().hex[:8]}")
    for role in ROLES:
        made.users[role] = f"{made.vhost}-{role}"
        made.passwords[role] = secrets.token_hex(8)
    try:
        for command in documented_commands():
            verb = command[0]
            if verb == "delete_user":
                continue  # the shared test broker keeps its guest user
            args = [made.vhost if a == "pd" else made.users.get(a, a) for a in command[1:]]
            if verb == "add_user":
                args[1] = made.passwords[command[1]]
            made.ctl(verb, *args)
        yield made
    finally:
        rabbitmq.ctl("rabbitmqctl", "delete_vhost", made.vhost)
        for user in made.users.values():
            rabbitmq.ctl("rabbitmqctl", "delete_user", user)


def refused(uri: str, action: Callable[[Any], Any]) -> bool:
    """Whether the broker refuses ``action(channel)`` with ACCESS_REFUSED."""
    with kombu.Connection(uri) as connection:
        channel = connection.channel()
        try:
            action(channel)
        except amqp.exceptions.AccessRefused:
            return True
        return False


def consume(queue: str) -> Callable[[Any], Any]:
    return lambda ch: ch.basic_consume(queue=queue, callback=lambda m: None)


def get(queue: str) -> Callable[[Any], Any]:
    return lambda ch: ch.basic_get(queue=queue)


def declare(queue: str) -> Callable[[Any], Any]:
    return lambda ch: ch.queue_declare(queue=queue, auto_delete=True)


def publish_to_default_exchange(queue: str) -> Callable[[Any], Any]:
    def action(ch: Any) -> None:
        ch.basic_publish(amqp.Message(b"{}"), exchange="", routing_key=queue)
        ch.basic_qos(0, 0, False)  # a refused publish closes the channel: this sees it

    return action


def serve_agent(layout: Layout, name: str, key: str | None = None) -> AgentService:
    agent = EEAgent(name=name, node_id="node1", slots=4, control=FakeProcessControl())
    service = AgentService(
        agent,
        broker=layout.broker("pd-agent"),
        pd_name="process_dispatcher",
        heartbeat=3600,
        verifier=None if key is None else SignatureVerifier(key, max_age=300),
    )
    service.start()
    return service


@pytest.fixture
def running(layout: Layout) -> Iterator[tuple[PdSink, AgentService]]:
    """A stand-in dispatcher (as pd-dispatcher) and an agent (as pd-agent)."""
    pd = PdSink(layout.broker("pd-dispatcher"))
    pd.service.start()
    agent = serve_agent(layout, AGENT)
    try:
        yield pd, agent
    finally:
        agent.stop()
        pd.service.stop()


def held(layout: Layout, name: str = AGENT) -> list[str]:
    with RpcClient(layout.broker("pd-dispatcher"), "process_dispatcher") as rpc:
        return [p["upid"] for p in rpc.call(name, "dump_state", rpc=True)["processes"]]


def launch(upid: str) -> dict[str, Any]:
    return {"u_pid": upid, "round": 1, "run_type": "supd", "parameters": sleeper()}


def test_every_role_can_do_its_work(layout: Layout, running: tuple[PdSink, AgentService]) -> None:
    pd, _ = running
    # Agents serve their queue and send heartbeats the dispatcher consumes
    message, sender = pd.next()
    assert sender == f"{SYSNAME}.{AGENT}" and message["eeagent_id"] == AGENT
    # The dispatcher commands agents and calls them (its reply queue is allowed)
    with RpcClient(layout.broker("pd-dispatcher"), "process_dispatcher") as dispatcher:
        dispatcher.fire(AGENT, "launch_process", **launch("p1"))
        assert dispatcher.call(AGENT, "get_process_logs", u_pid="p1", round=1) == ""
    assert held(layout) == ["p1"]
    # Clients call the dispatcher
    with RpcClient(layout.broker("pd-client"), "pd-cli") as client:
        assert client.call("process_dispatcher", "heartbeat", message={"probe": 1}) is None


def test_a_client_cannot_take_an_agents_queue_or_the_dispatchers(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    client = layout.uri("pd-client")
    for queue in (f"{SYSNAME}.{AGENT}", f"{SYSNAME}.process_dispatcher"):
        assert refused(client, consume(queue)), queue
        assert refused(client, get(queue)), queue
        assert refused(client, declare(queue)), queue
    # Nor declare a queue under an agent's name before the agent does
    assert refused(client, declare(f"{SYSNAME}.pd-default-9999999999-0"))
    assert refused(client, publish_to_default_exchange(f"{SYSNAME}.{AGENT}"))


def test_an_agent_cannot_take_the_dispatchers_queue_or_call_anything(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    agent = layout.uri("pd-agent")
    queue = f"{SYSNAME}.process_dispatcher"
    assert refused(agent, consume(queue))
    assert refused(agent, get(queue))
    assert refused(agent, declare(queue))
    # No reply queue: an agent can only fire
    assert refused(agent, declare(uuid.uuid4().hex))
    assert refused(agent, publish_to_default_exchange(queue))


def test_per_agent_users_cannot_take_each_others_queues(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    # Given a per-agent user as the page shows it, for OTHER_AGENT only
    user, password = f"{layout.vhost}-{OTHER_AGENT}", secrets.token_hex(8)
    regex = rf"^{SYSNAME}\.(default_dashi_exchange|{OTHER_AGENT})$"
    layout.ctl("add_user", user, password)
    try:
        layout.ctl("set_permissions", "-p", layout.vhost, user, regex, regex, regex)
        uri = f"amqp://{user}:{password}@127.0.0.1:{layout.rabbitmq.port}/{layout.vhost}"
        # Then it may declare its own queue but not consume another agent's
        assert not refused(uri, declare(f"{SYSNAME}.{OTHER_AGENT}"))
        assert refused(uri, consume(f"{SYSNAME}.{AGENT}"))
        # (the shared agent user can: the page says so)
        assert not refused(layout.uri("pd-agent"), get(f"{SYSNAME}.{AGENT}"))
    finally:
        layout.rabbitmq.ctl("rabbitmqctl", "delete_user", user)


def test_the_stated_limit_anyone_who_can_publish_reaches_every_agent_without_a_key(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    # Given a client that lies about its name, even with a topic permission that
    # would forbid every routing key on a topic exchange
    layout.ctl(
        "set_topic_permissions",
        "-p",
        layout.vhost,
        layout.users["pd-client"],
        f"{SYSNAME}.default_dashi_exchange",
        "^$",
        "^$",
    )
    with RpcClient(layout.broker("pd-client"), "process_dispatcher") as liar:
        liar.fire(AGENT, "launch_process", **launch("forged"))
    # Then an agent without a key carries the command out: the broker does not stop it
    wait_for(lambda: held(layout) == ["forged"])


def test_the_stated_limit_a_client_can_copy_an_agents_commands(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    # Given a client queue (a reply-queue name) bound under the agent's routing key
    with kombu.Connection(layout.uri("pd-client")) as connection:
        channel = connection.channel()
        spy = kombu.Queue(
            uuid.uuid4().hex,
            layout.broker("pd-client").kombu_exchange(),
            routing_key=f"{SYSNAME}.{AGENT}",
            exclusive=True,
        )(channel)
        spy.declare()
        # When the dispatcher commands the agent
        with RpcClient(layout.broker("pd-dispatcher"), "process_dispatcher") as dispatcher:
            dispatcher.fire(AGENT, "launch_process", **launch("p1"))
        # Then the client got a copy
        copy = wait_for(lambda: spy.get(no_ack=True))
        assert copy.decode()["args"]["u_pid"] == "p1"


def test_with_a_key_the_agent_refuses_what_the_broker_lets_through(
    layout: Layout, running: tuple[PdSink, AgentService]
) -> None:
    keyed = serve_agent(layout, OTHER_AGENT, KEY)
    try:
        with RpcClient(layout.broker("pd-client"), "process_dispatcher") as liar:
            with pytest.raises(BadRequestError, match="must carry a signature"):
                liar.call(OTHER_AGENT, "launch_process", args=launch("forged"))
            liar.fire(OTHER_AGENT, "launch_process", **launch("forged"))
        assert held(layout, OTHER_AGENT) == []
    finally:
        keyed.stop()
