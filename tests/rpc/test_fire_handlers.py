"""Fire handlers: a request without ``reply-to`` runs the operation's ``fire`` handler.

Over both transports (and ``dispatch`` directly): calls keep running the
operation's handler and get its reply; fires run the fire handler, after the guard
and the argument check.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError
from dashi.service import RpcService


class Calls:
    def __init__(self) -> None:
        self.handled: list[tuple[str, Any, Any]] = []
        self.seen = threading.Event()

    def handler(self, value: Any, sender: Any = None) -> str:
        self.handled.append(("handler", value, sender))
        self.seen.set()
        return f"handled {value}"

    def fire(self, value: Any, sender: Any = None) -> None:
        self.handled.append(("fire", value, sender))
        self.seen.set()


def refuse_odd(op: str, args: Any, headers: Mapping[str, Any]) -> None:
    if isinstance(args, dict) and args.get("value", 0) % 2:
        raise BadRequestError("odd values are refused")


def make_service(broker: BrokerConfig, calls: Calls) -> RpcService:
    service = RpcService(broker, "svc")
    service.handle(
        "op",
        calls.handler,
        sender_kwarg="sender",
        validate=False,
        guard=refuse_odd,
        fire=calls.fire,
    )
    return service


def test_dispatch_runs_the_fire_handler_only_for_one_way_requests() -> None:
    # Given a service with a fire handler for op
    calls = Calls()
    service = make_service(BrokerConfig(), calls)
    # When op is dispatched as a call, then as a fire, then as a fire with a bad argument
    reply = service.dispatch({"op": "op", "args": {"value": 2}}, {"sender": "s"})
    fired = service.dispatch({"op": "op", "args": {"value": 4}}, {"sender": "s"}, one_way=True)
    refused = service.dispatch({"op": "op", "args": {"value": 3}}, {}, one_way=True)
    unknown = service.dispatch({"op": "op", "args": {"nope": 1}}, {}, one_way=True)
    # Then the call ran the handler, the fire the fire handler, and the guard and
    # the argument check came first
    assert reply == {"result": "handled 2", "error": None}
    assert fired["error"] is None
    assert refused["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert unknown["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert calls.handled == [("handler", 2, "s"), ("fire", 4, "s")]


@pytest.fixture
def fire_service(broker: BrokerConfig) -> Iterator[Calls]:
    calls = Calls()
    service = make_service(broker, calls)
    service.start()
    try:
        yield calls
    finally:
        service.stop()


def test_fires_reach_the_fire_handler_and_calls_the_handler(
    broker: BrokerConfig, fire_service: Calls
) -> None:
    calls = fire_service
    with RpcClient(broker, "client") as client:
        # When op is fired (a refused value first), Then the fire handler gets the good one
        client.fire("svc", "op", value=1)
        client.fire("svc", "op", value=6)
        assert calls.seen.wait(30)
        assert calls.handled == [("fire", 6, broker.prefixed("client"))]
        # When op is called, Then the handler answers
        assert client.call("svc", "op", value=8) == "handled 8"
    assert calls.handled[-1] == ("handler", 8, broker.prefixed("client"))
