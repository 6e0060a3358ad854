"""A request delivered twice (same id) is applied once: the second copy gets the first result.

A broker delivers a request again when the dispatcher that handled it died before
acknowledging it; here the second delivery is a second copy of the same message
(same body, headers and id), published after the process was terminated.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Definition
from dispatcher.replay import RequestReplay
from dispatcher.service import DispatcherService
from dispatcher.store.sql import SqlStore
from pdcommon.settings import DEFAULT_SERVICE_NAME
from tests.service.conftest import DEFINITION, Harness, build_service, make_settings, wait_for
from tests.support.wiring import make_core

TRANSPORTS = ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=TRANSPORTS)
def harness(request: pytest.FixtureRequest, tmp_path) -> Iterator[Harness]:
    """A dispatcher (no agents) on the embedded transport, then on RabbitMQ."""
    uri = "embedded://" if request.param == "embedded" else request.getfixturevalue("amqp_uri")
    settings = make_settings(tmp_path, uri)
    service: DispatcherService = build_service(settings)
    harness = Harness(settings, service)
    try:
        harness.define()
        yield harness
    finally:
        harness.client.close()
        service.stop()


class RawCaller:
    """Publishes exact copies of one request and reads each reply (as a redelivery would)."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self.reply_queue = uuid.uuid4().hex

    def send(
        self, op: str, args: dict[str, Any], correlation_id: str | None, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Publish the request (``correlation_id`` None: the legacy dashi form) and wait."""
        broker = self.broker
        exchange = broker.kombu_exchange()
        replies: list[Any] = []
        properties = {"correlation_id": correlation_id} if correlation_id else {}
        with broker.connection() as connection:
            queue = kombu.Queue(
                self.reply_queue,
                exchange,
                routing_key=self.reply_queue,
                durable=False,
                queue_arguments=None if broker.is_embedded else {"x-expires": 60_000},
            )
            with kombu.Consumer(
                connection, [queue], callbacks=[lambda body, m: (replies.append(body), m.ack())]
            ):
                with kombu.Producer(connection, exchange=exchange) as producer:
                    producer.publish(
                        {"op": op, "args": args},
                        routing_key=broker.prefixed(DEFAULT_SERVICE_NAME),
                        headers={"reply-to": self.reply_queue, "sender": "redelivery-test"},
                        serializer="json",
                        **properties,
                    )
                deadline = time.monotonic() + timeout
                while not replies and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.5)
        assert replies, f"no reply to {op}"
        reply: dict[str, Any] = replies[0]
        return reply


@pytest.mark.parametrize("id_source", ["correlation_id", "legacy_reply_to"])
def test_a_schedule_delivered_again_after_a_terminate_does_not_start_a_new_round(
    harness: Harness, id_source: str
):
    # Given a process scheduled by a request with an id
    caller = RawCaller(harness.broker)
    correlation_id = uuid.uuid4().hex if id_source == "correlation_id" else None
    args = {"upid": "p1", "definition_id": DEFINITION, "execution_engine_id": "engine1"}
    first = caller.send("schedule_process", args, correlation_id)
    assert first["error"] is None
    assert first["result"]["round"] == 0
    # And then terminated (it never got a slot: no agents)
    assert harness.client.terminate_process("p1")["state"] == "700-TERMINATED"
    # When the broker delivers the same schedule request again
    again = caller.send("schedule_process", args, correlation_id)
    # Then it is answered with its first result
    assert again == first
    # And the process stays terminated, in its first round
    record = harness.client.describe_process("p1")
    assert (record["state"], record["round"]) == ("700-TERMINATED", 0)
    # While a new schedule request (another id) does start a new round
    if correlation_id is not None:
        fresh = caller.send("schedule_process", args, uuid.uuid4().hex)
        assert fresh["result"]["round"] == 1
        wait_for(lambda: harness.client.describe_process("p1")["round"] == 1)


def test_a_request_id_reused_for_other_arguments_is_applied(harness: Harness):
    # Given a terminated process scheduled with some id
    caller = RawCaller(harness.broker)
    request_id = uuid.uuid4().hex
    args = {"upid": "p2", "definition_id": DEFINITION}
    assert caller.send("schedule_process", args, request_id)["error"] is None
    harness.client.terminate_process("p2")
    # When a different request carries the same id
    other = caller.send("schedule_process", {**args, "name": "renamed"}, request_id)
    # Then it is not taken for a redelivery: it starts a new round
    assert other["error"] is None
    assert other["result"]["round"] == 1


class _Unacknowledged:
    """A delivery whose acknowledgement is lost (the process died before sending it)."""

    def __init__(self, message: Any) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ack(self) -> None:
        pass


class DiesBeforeAck(RpcService):
    """A service that commits and replies to ``schedule_process``, then dies before the ack.

    The worker then stays blocked until :meth:`stop`, which closes its connection:
    the broker delivers the unacknowledged request again, as after a ``kill -9``.
    """

    def __init__(self, broker: BrokerConfig, name: str) -> None:
        super().__init__(broker, name, workers=1)
        self.died = threading.Event()

    def _reply(self, message, producer, headers, reply, op=None):  # type: ignore[no-untyped-def]
        if op != "schedule_process" or self.died.is_set():
            return super()._reply(message, producer, headers, reply, op)
        super()._reply(_Unacknowledged(message), producer, headers, reply, op)
        self.died.set()
        self._stop.wait()
        return None


def serve_core(rpc: RpcService, core: ProcessDispatcherCore, replay: Any) -> RpcService:
    for op in ("schedule_process", "terminate_process", "describe_process"):
        rpc.handle(op, getattr(core, op), validate=False, replay=replay)
    return rpc


@pytest.mark.rabbitmq
def test_a_schedule_redelivered_after_the_dispatcher_died_before_its_ack_is_not_applied_again(
    tmp_path, amqp_uri: str, sysname: str
):
    # Given a dispatcher's store, and a first dispatcher that dies after committing and
    # replying to a schedule_process, before acknowledging it
    store = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    core = make_core(store, RecordingMessenger())
    store.add_definition(Definition(DEFINITION, "supd", {"exec": "/bin/true"}))
    broker = BrokerConfig(uri=amqp_uri, sysname=sysname, heartbeat=10)
    first = serve_core(DiesBeforeAck(broker, "pd"), core, RequestReplay(store))
    seen: list[str] = []
    replay = RequestReplay(store)

    def watched(request_id: str, op: str, args: Any, call: Any) -> Any:
        seen.append(op)
        return replay(request_id, op, args, call)

    second = serve_core(RpcService(broker, "pd", workers=1), core, watched)
    first.start()
    try:
        with RpcClient(broker, "caller", timeout=20) as client:
            reply = client.call("pd", "schedule_process", upid="p1", definition_id=DEFINITION)
        assert reply["round"] == 0
        assert first.died.wait(20)
        # And the process is terminated meanwhile
        assert core.terminate_process("p1")["state"] == "700-TERMINATED"
        # When the first dispatcher is gone and the next one gets the request again
        first.stop()
        second.start()
        wait_for(lambda: "schedule_process" in seen, what="the redelivered schedule")
        # Then it answers with the first result without applying it: no new round
        process = store.get_process("p1")
        assert process is not None
        assert (process.state, process.round) == ("700-TERMINATED", 0)
        assert store.list_queued() == []
    finally:
        first.stop()
        second.stop()
        store.close()
