"""Replies too large to send: the caller gets ReplyTooLargeError, the request is not redelivered."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError, ReplyTooLargeError
from dashi.protocol import DEFAULT_MAX_MESSAGE_SIZE, error_from_payload, error_payload
from dashi.service import CONFIRM_FROM_BYTES, RpcService
from tests.infra import RabbitMQServer


class Lister:
    """A handler whose reply is as large as asked, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def listing(self, size: int) -> str:
        self.calls += 1
        return "x" * size

    def ping(self) -> str:
        return "pong"


def serve(broker: BrokerConfig, lister: Lister) -> RpcService:
    service = RpcService(broker, "lister", workers=1)
    service.handle("listing", lister.listing)
    service.handle("ping", lister.ping)
    service.start()
    return service


def waiting_requests(broker: BrokerConfig) -> int:
    """Messages left in the (stopped) service's queue: a request not acknowledged comes back."""
    name = broker.prefixed("lister")
    with broker.connection() as connection:
        declared = kombu.Queue(name, broker.kombu_exchange(), routing_key=name)(
            connection.channel()
        )
        _, count, _ = declared.queue_declare(passive=True)
    return int(count)


def test_a_reply_over_the_limit_is_answered_with_a_readable_error_and_not_sent_again(
    broker: BrokerConfig, caplog: pytest.LogCaptureFixture
):
    # Given a service whose message limit is 100 kB, on either transport
    limited = dataclasses.replace(broker, max_message_size=100_000)
    lister = Lister()
    service = serve(limited, lister)
    try:
        with (
            RpcClient(limited, "caller", timeout=10) as client,
            caplog.at_level(logging.WARNING, logger="dashi.service"),
        ):
            # When a call's reply would be 200 kB
            with pytest.raises(ReplyTooLargeError) as raised:
                client.call("lister", "listing", size=200_000)
            # Then the caller reads why, and what to do
            assert "too large" in raised.value.value
            assert "paging or a filter" in raised.value.value
            # And the service goes on serving, replies under the limit included
            assert client.call("lister", "ping") == "pong"
            assert client.call("lister", "listing", size=1000) == "x" * 1000
    finally:
        service.stop()
    # And the request was handled once, acknowledged, and the broker never looked lost
    assert lister.calls == 2
    assert waiting_requests(limited) == 0
    assert "reconnecting" not in caplog.text


@pytest.fixture
def small_broker_limit(rabbitmq: RabbitMQServer) -> Iterator[int]:
    """The session broker refuses messages over 1 MiB while the test runs."""
    limit = CONFIRM_FROM_BYTES
    rabbitmq.set_max_message_size(limit)
    try:
        yield limit
    finally:
        rabbitmq.set_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)


@pytest.mark.rabbitmq
def test_a_reply_the_broker_refuses_is_answered_with_an_error_and_not_redelivered(
    small_broker_limit: int, amqp_uri: str, sysname: str, caplog: pytest.LogCaptureFixture
):
    # Given a RabbitMQ whose max_message_size (1 MiB) is lower than the service's limit
    broker = BrokerConfig(uri=amqp_uri, sysname=sysname, heartbeat=10)
    assert broker.max_message_size > small_broker_limit
    lister = Lister()
    service = serve(broker, lister)
    try:
        with (
            RpcClient(broker, "caller", timeout=10) as client,
            caplog.at_level(logging.WARNING, logger="dashi.service"),
        ):
            # When a call's reply is 2 MiB: the broker refuses it (406 PRECONDITION_FAILED)
            with pytest.raises(ReplyTooLargeError) as raised:
                client.call("lister", "listing", size=2 * small_broker_limit)
            # Then the caller gets the broker's reason and what to do
            assert "PRECONDITION_FAILED" in raised.value.value
            assert "paging or a filter" in raised.value.value
            # And the service keeps serving on the same connection
            assert client.call("lister", "ping") == "pong"
    finally:
        service.stop()
    # And the handler ran once: the request was acknowledged, not redelivered
    assert lister.calls == 1
    assert waiting_requests(broker) == 0
    assert "reconnecting" not in caplog.text
    assert "refused the reply to listing" in caplog.text


def test_reply_too_large_travels_as_a_bad_request_with_an_additive_subtype():
    # Given the error a service sends instead of a reply too large
    payload = error_payload(ReplyTooLargeError("the reply to dump is too large"), None)
    # Then a legacy dashi client sees a known type (it passes unknown members on as
    # keyword arguments, which DashiError accepts)
    assert payload["exc_type"] == "dashi.exceptions.BadRequestError"
    assert payload["subtype"] == "ReplyTooLargeError"
    # And our client rebuilds the subtype, which still is a BadRequestError
    rebuilt = error_from_payload(payload)
    assert type(rebuilt) is ReplyTooLargeError
    assert isinstance(rebuilt, BadRequestError)
    assert rebuilt.value == "the reply to dump is too large"


@pytest.mark.parametrize("subtype", [None, "NoSuchError", "WriteConflictError"])
def test_an_unknown_or_mismatched_subtype_rebuilds_the_known_base(subtype):
    payload = {"exc_type": "dashi.exceptions.BadRequestError", "value": "v", "subtype": subtype}
    assert type(error_from_payload(payload)) is BadRequestError


def test_other_errors_carry_no_subtype():
    assert "subtype" not in error_payload(BadRequestError("bad"), None)
