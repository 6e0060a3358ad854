"""Calls carry their deadline: a request whose caller gave up is never applied.

On both transports (the ``broker`` fixture): a call made while its service is
stopped expires in the service's queue and is dropped unapplied when the service
starts again; a call made before the service's queue exists is sent again until
the queue appears; the timeout says whether the queue existed; requests without a
deadline (legacy callers) are served as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from dashi import codec
from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import RpcTimeoutError
from dashi.protocol import HEADER_DEADLINE
from dashi.service import RpcService
from dashi.transport.folder import BrokerFolder


class Recorder:
    def __init__(self) -> None:
        self.applied: list[object] = []

    def record(self, item: object) -> str:
        self.applied.append(item)
        return "recorded"


def _service(broker: BrokerConfig, recorder: Recorder) -> RpcService:
    # One worker: the queue is handled in order, so a reply to a later call
    # means every earlier request was handled (applied or dropped).
    service = RpcService(broker, "ledger", workers=1)
    service.handle("record", recorder.record)
    service.handle("echo", lambda value=None: value)
    return service


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def stopped_service(broker: BrokerConfig, recorder: Recorder) -> Iterator[RpcService]:
    """A service that ran once (its queue exists) and is stopped now."""
    service = _service(broker, recorder)
    service.start()
    service.stop()
    yield service
    service.stop()


def test_a_call_made_while_the_service_is_stopped_is_not_applied_when_it_starts(
    broker: BrokerConfig, recorder: Recorder, stopped_service: RpcService
) -> None:
    # Given a service whose queue exists but which is stopped
    with RpcClient(broker, "caller") as rpc:
        # When a call with a short timeout gives up waiting
        with pytest.raises(RpcTimeoutError) as info:
            rpc.call("ledger", "record", timeout=0.5, item="ghost")
        # And the service starts again and answers a later call
        stopped_service.start()
        assert rpc.call("ledger", "echo", timeout=10, value="after") == "after"
    # Then the expired request was never applied
    assert recorder.applied == []
    # And the timeout said the request had reached the service's queue
    assert "the request was delivered to the service's queue but no reply came" in str(info.value)


def test_a_call_made_before_the_service_queue_exists_is_delivered_once_it_starts(
    broker: BrokerConfig, recorder: Recorder, monkeypatch
) -> None:
    # Given no service queue yet (a fresh vhost, or a broker folder another
    # service created: a client creates none), and a client whose first attempt to
    # send is observed
    if broker.is_embedded:
        BrokerFolder(broker.embedded_folder).ensure()
    rpc = RpcClient(broker, "early")
    attempts = threading.Event()
    publish = rpc._publish

    def observed(*args: Any, **kwargs: Any) -> None:
        try:
            publish(*args, **kwargs)
        finally:
            attempts.set()

    monkeypatch.setattr(rpc, "_publish", observed)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = rpc.call("ledger", "record", timeout=15, item="early")
        except Exception as exc:  # reported below
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    service = _service(broker, recorder)
    try:
        # When the service starts after the request was first sent
        assert attempts.wait(15)
        service.start()
        caller.join(20)
        # Then the request is delivered and answered, once
        assert outcome == {"result": "recorded"}
        assert recorder.applied == ["early"]
    finally:
        caller.join(20)
        service.stop()
        rpc.close()


def test_a_timeout_says_when_the_service_queue_does_not_exist(broker: BrokerConfig) -> None:
    with RpcClient(broker, "caller") as rpc, pytest.raises(RpcTimeoutError) as info:
        rpc.call("process_dispatcher", "describe_processes", timeout=0.5)
    message = str(info.value)
    assert message.startswith("describe_processes on process_dispatcher: no reply within 0.5s")
    # (on a fresh state directory, the embedded broker's folder is what is missing)
    missing = "broker's folder" if broker.is_embedded else "queue"
    assert missing in message and "does not exist (is pd-dispatcher running?)" in message


def _raw_call(broker: BrokerConfig, headers: dict[str, Any], item: str) -> Any:
    """A call as a legacy dashi client makes it: no correlation id, no expiration."""
    with broker.connection() as connection:
        channel = connection.channel()
        exchange = broker.kombu_exchange()
        reply_key = broker.prefixed(f"legacy-reply-{item}")
        replies = kombu.Queue(reply_key, exchange, routing_key=reply_key, auto_delete=True)(channel)
        replies.declare()
        kombu.Producer(channel, exchange=exchange).publish(
            codec.encode({"op": "record", "args": {"item": item}}),
            routing_key=broker.prefixed("ledger"),
            content_type=codec.CONTENT_TYPE,
            content_encoding=codec.CONTENT_ENCODING,
            headers={"sender": "legacy", "reply-to": reply_key, **headers},
        )
        if headers.get(HEADER_DEADLINE, float("inf")) < time.time():
            return None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = replies.get(no_ack=True)
            if message is not None:
                return codec.decode(message)
            time.sleep(0.01)
        raise AssertionError("no reply")


def test_requests_without_a_deadline_are_served_and_expired_ones_dropped(
    broker: BrokerConfig, recorder: Recorder, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="dashi.service")
    service = _service(broker, recorder)
    service.start()
    try:
        # A legacy-style request (no deadline at all) is served
        assert _raw_call(broker, {}, "legacy") == {"result": "recorded", "error": None}
        # Requests whose x-deadline has passed are acknowledged and dropped
        for n in range(3):
            _raw_call(broker, {HEADER_DEADLINE: time.time() - 1}, f"late{n}")
        # (one worker handles the queue in order: this reply comes after them)
        assert _raw_call(broker, {HEADER_DEADLINE: time.time() + 30}, "timely")["result"]
    finally:
        service.stop()
    assert recorder.applied == ["legacy", "timely"]
    dropped = [r for r in caplog.records if "expired request" in r.getMessage()]
    # logged at INFO, rate-limited: one line for the burst
    assert [r.levelno for r in dropped] == [logging.INFO]
    assert "from 'legacy'" in dropped[0].getMessage()
