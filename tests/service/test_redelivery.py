"""A request delivered twice (same id) is applied once: the second copy gets the first result.

A broker delivers a request again when the dispatcher that handled it died before
acknowledging it; here the second delivery is a second copy of the same message
(same body, headers and id), published after the process was terminated.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from dispatcher.rpc.broker import BrokerConfig
from dispatcher.service import DispatcherService
from dispatcher.settings import DEFAULT_SERVICE_NAME
from tests.service.conftest import DEFINITION, Harness, build_service, make_settings, wait_for

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
