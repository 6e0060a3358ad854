"""Raw, malformed messages on the service queues of a real dispatcher and a real agent.

Given a ``pd-dispatcher`` (built as the daemon builds itself) and a ``pd-eeagent``
subprocess on RabbitMQ, when a message that is not a well-formed request is
published straight onto a service queue with kombu (bad JSON, another content
type, binary garbage, a body that is not an object, no ``op``, missing headers, a
huge or deeply nested body), then:

* a ``BadRequestError`` reply (``UnknownOperationError`` for an unknown ``op``)
  arrives wherever the message carried a ``reply-to``;
* the message is acknowledged: the queue drains and stays empty (no redelivery
  loop), and the service still consumes it;
* nothing is stored, and a normal call still works afterwards.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest
import yaml

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dispatcher.service import DispatcherService
from eeagent.supervisor import SupervisorControl
from pdcommon.settings import load_settings
from pdcommon.wire import broker_config
from tests.eeagent.conftest import AgentProcess, stop_supervisord, wait_for
from tests.faults.dispatcher_harness import snapshot
from tests.infra import RabbitMQServer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

AGENT = "rawagent"
#: Size of the huge bodies: large, but within RabbitMQ's default message size limit.
HUGE = 8 * 1024 * 1024
BAD_REQUEST = "dashi.exceptions.BadRequestError"
UNKNOWN_OPERATION = "dashi.exceptions.UnknownOperationError"
JSON = "application/json"


@dataclass(frozen=True)
class Raw:
    """One raw message: body bytes and AMQP properties as published."""

    name: str
    body: bytes
    content_type: str | None = JSON
    content_encoding: str | None = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    #: AMQP-level headers kombu treats specially (``compression``).
    compression: str | None = None
    #: The error type of the reply.
    expected: str = BAD_REQUEST


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


_GARBAGE = random.Random(8).randbytes(4096)
_DEEP = b"[" * 100_000 + b"]" * 100_000

COMMON = [
    Raw("malformed JSON", b'{"op": "dump", "args": {'),
    Raw("JSON with a trailing comma", b'{"op": "dump", "args": {},}'),
    Raw("plain text", b"hello, dispatcher", content_type="text/plain"),
    Raw("an unknown content type", _json({"op": "dump", "args": {}}), "application/x-unknown"),
    Raw("pickle is refused", b"\x80\x04K\x01.", "application/x-python-serialize", "binary"),
    Raw("binary data", _GARBAGE, "application/data", "binary"),
    Raw("binary garbage labelled JSON", _GARBAGE),
    Raw("invalid UTF-8 in JSON", b'{"op": "\xff\xfe", "args": {}}'),
    Raw("a bogus compression header", b"not gzip at all", compression="application/x-gzip"),
    Raw("an empty body", b""),
    Raw("a JSON array", b"[1, 2, 3]"),
    Raw("a JSON string", b'"dump"'),
    Raw("JSON null", b"null"),
    Raw("a JSON number", b"42"),
    Raw("no op", _json({"args": {}})),
    Raw("op not a string", _json({"op": 5, "args": {}})),
    Raw("args not an object", _json({"op": "dump", "args": [1, 2]})),
    Raw("an unknown op", _json({"op": "no_such_op", "args": {}}), expected=UNKNOWN_OPERATION),
    Raw("deeply nested JSON", _DEEP),
]

DISPATCHER_CASES = [
    *COMMON,
    Raw("no args for an operation that needs them", _json({"op": "describe_process"})),
    Raw("a lone surrogate", b'{"op": "describe_process", "args": {"upid": "\\ud800"}}'),
    Raw(
        "a malformed heartbeat without a sender",
        _json({"op": "heartbeat", "args": {"message": {"eeagent_id": "ghost", "processes": []}}}),
    ),
    Raw(
        "a huge body",
        _json({"op": "terminate_process", "args": {"upid": "x" * HUGE + "!"}}),
    ),
]

AGENT_CASES = [
    *COMMON,
    Raw("no args for an operation that needs them", _json({"op": "get_process_logs"})),
    Raw(
        "a lone surrogate",
        b'{"op": "get_process_logs", "args": {"u_pid": "\\ud800", "round": 0}}',
    ),
    Raw(
        "a command without a sender",
        _json(
            {
                "op": "launch_process",
                "args": {"u_pid": "p1", "round": 0, "run_type": "supd", "parameters": {}},
            }
        ),
    ),
    Raw(
        "a huge body",
        _json(
            {
                "op": "get_process_logs",
                "args": {"u_pid": "x" * HUGE, "round": 0, "stream": "nope"},
            }
        ),
    ),
]


class RawPublisher:
    """Publishes raw bytes to a service queue and collects the replies."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self.connection = kombu.Connection(broker.uri)
        self.channel = self.connection.channel()
        self.producer = kombu.Producer(self.channel, exchange=broker.kombu_exchange())
        self.reply_key = broker.prefixed(f"raw-reply-{uuid.uuid4().hex[:8]}")
        self.replies = kombu.Queue(
            self.reply_key,
            broker.kombu_exchange(),
            routing_key=self.reply_key,
            exclusive=True,
            auto_delete=True,
        )(self.channel)
        self.replies.declare()

    def publish(self, service: str, raw: Raw, *, reply: bool) -> None:
        headers = dict(raw.headers)
        if reply:
            headers["reply-to"] = self.reply_key
        properties: dict[str, Any] = {}
        if raw.compression is not None:
            headers["compression"] = raw.compression
        self.producer.publish(
            raw.body,
            routing_key=self.broker.prefixed(service),
            content_type=raw.content_type,
            content_encoding=raw.content_encoding,
            headers=headers,
            **properties,
        )

    def reply(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.replies.get(no_ack=True)
            if message is not None:
                return json.loads(message.body)
            time.sleep(0.01)
        raise AssertionError(f"no reply within {timeout}s")

    def no_reply(self, wait: float = 0.3) -> None:
        time.sleep(wait)
        message = self.replies.get(no_ack=True)
        assert message is None, f"unexpected reply: {message.body[:200]!r}"

    def queue_counts(self, service: str) -> tuple[int, int]:
        """``(messages ready, consumers)`` of a service queue (a passive declare)."""
        _, messages, consumers = self.channel.queue_declare(
            queue=self.broker.prefixed(service), passive=True
        )
        return messages, consumers

    def assert_drained(self, service: str) -> None:
        """The queue empties and stays empty (no redelivery), still consumed."""
        wait_for(lambda: self.queue_counts(service)[0] == 0, timeout=15)
        for _ in range(5):
            messages, consumers = self.queue_counts(service)
            assert messages == 0, "a message came back: redelivered"
            assert consumers >= 1, "the service stopped consuming its queue"
            time.sleep(0.05)

    def close(self) -> None:
        self.connection.release()


@dataclass
class Daemons:
    broker: BrokerConfig
    dispatcher: DispatcherService
    agent: AgentProcess
    client: RpcClient
    publisher: RawPublisher


@pytest.fixture(scope="module")
def daemons(
    rabbitmq: RabbitMQServer, supervisord_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemons]:
    tmp = tmp_path_factory.mktemp("raw")
    sysname = f"raw{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        overrides={
            "state_dir": str(tmp / "state"),
            "server.amqp.uri": rabbitmq.uri,
            "dashi.sysname": sysname,
            "processdispatcher.database_url": f"sqlite:///{tmp}/pd.db",
            "processdispatcher.engines": {"engine1": {"slots": 4}},
            "processdispatcher.default_engine": "engine1",
            "provisioner.driver": "static",
        }
    )
    dispatcher = DispatcherService.build(settings)
    dispatcher.start()
    config = tmp / "agent.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp / "agent-state"),
                "server": {"amqp": {"uri": rabbitmq.uri}},
                "dashi": {"sysname": sysname},
                "eeagent": {
                    "name": AGENT,
                    "node_id": "rawnode",
                    "slots": 2,
                    "heartbeat": 1,
                    "launch_type": {"name": "supd", "supd_directory": str(tmp / "supd")},
                },
                "pd": {"name": "process_dispatcher"},
            }
        )
    )
    agent = AgentProcess(config, tmp / "agent.log")
    agent.start()
    broker = broker_config(settings)
    client = RpcClient(broker, name="raw-test")
    publisher = RawPublisher(broker)
    try:
        # The agent serves once it answers a call.
        wait_for(lambda: _agent_answers(client), timeout=30)
        yield Daemons(broker, dispatcher, agent, client, publisher)
    finally:
        publisher.close()
        client.close()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.terminate()
            try:
                agent.wait(20)
            except Exception:
                agent.proc.kill()
        dispatcher.stop()
        for home in Path(tmp / "supd").glob("*"):
            stop_supervisord(SupervisorControl(home))


def _agent_answers(client: RpcClient) -> bool:
    try:
        client.call(AGENT, "dump_state", timeout=2, rpc=True)
    except Exception:
        return False
    return True


def _agent_state(daemons: Daemons) -> Any:
    beat = daemons.client.call(AGENT, "dump_state", timeout=10, rpc=True)
    return beat["processes"]


@pytest.mark.parametrize("reply", [True, False], ids=["with reply-to", "without reply-to"])
@pytest.mark.parametrize("raw", DISPATCHER_CASES, ids=[c.name for c in DISPATCHER_CASES])
def test_the_dispatcher_refuses_a_raw_message_and_keeps_serving(
    daemons: Daemons, raw: Raw, reply: bool
) -> None:
    # Given a running dispatcher and what it stores
    service = "process_dispatcher"
    before = snapshot(daemons.dispatcher.store)
    # When a malformed message is published onto its queue
    daemons.publisher.publish(service, raw, reply=reply)
    # Then a BadRequestError comes back where a reply was asked for
    if reply:
        answer = daemons.publisher.reply()
        assert answer["result"] is None
        assert answer["error"]["exc_type"] == raw.expected, answer
    else:
        daemons.publisher.no_reply()
    # And the message was acknowledged, nothing was stored, and a normal call works
    daemons.publisher.assert_drained(service)
    assert snapshot(daemons.dispatcher.store) == before
    assert daemons.client.call(service, "describe_processes", timeout=10) == []


@pytest.mark.parametrize("reply", [True, False], ids=["with reply-to", "without reply-to"])
@pytest.mark.parametrize("raw", AGENT_CASES, ids=[c.name for c in AGENT_CASES])
def test_the_agent_refuses_a_raw_message_and_keeps_serving(
    daemons: Daemons, raw: Raw, reply: bool
) -> None:
    # Given a running pd-eeagent and the processes it holds
    before = _agent_state(daemons)
    # When a malformed message is published onto its queue
    daemons.publisher.publish(AGENT, raw, reply=reply)
    # Then a BadRequestError comes back where a reply was asked for
    if reply:
        answer = daemons.publisher.reply()
        assert answer["result"] is None
        assert answer["error"]["exc_type"] == raw.expected, answer
    else:
        daemons.publisher.no_reply()
    # And the message was acknowledged, the agent is up and holds the same processes
    daemons.publisher.assert_drained(AGENT)
    assert daemons.agent.proc is not None and daemons.agent.proc.poll() is None
    assert _agent_state(daemons) == before


@pytest.mark.parametrize("target", ["process_dispatcher", AGENT])
def test_a_reply_to_that_is_not_a_string_gets_no_reply_and_the_message_is_acked(
    daemons: Daemons, target: str
) -> None:
    # Given a request whose reply-to header is a number
    raw = Raw("reply-to not a string", _json({"op": "dump", "args": {}}), headers={"reply-to": 5})
    # When it is published, then nothing is answered and the queue drains
    daemons.publisher.publish(target, raw, reply=False)
    daemons.publisher.no_reply()
    daemons.publisher.assert_drained(target)
