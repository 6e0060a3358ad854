"""Fixtures for the RPC layer: one broker per transport (embedded and RabbitMQ)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker(request: pytest.FixtureRequest, tmp_path, sysname: str) -> BrokerConfig:
    """A BrokerConfig on the embedded transport, then on a real RabbitMQ."""
    if request.param == "embedded":
        return BrokerConfig(uri="embedded://", state_dir=tmp_path, sysname=sysname)
    uri = request.getfixturevalue("amqp_uri")
    return BrokerConfig(uri=uri, sysname=sysname, heartbeat=10)


class Calculator:
    """Handlers used by the protocol tests."""

    def __init__(self) -> None:
        self.fired: list[object] = []

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: object = None) -> object:
        return value

    def whoami(self, sender: str | None = None) -> str | None:
        return sender

    def record(self, item: object) -> None:
        self.fired.append(item)


@pytest.fixture
def calculator() -> Calculator:
    return Calculator()


@pytest.fixture
def service(broker: BrokerConfig, calculator: Calculator) -> Iterator[RpcService]:
    svc = RpcService(broker, "calc", workers=2)
    svc.handle("add", calculator.add)
    svc.handle("echo", calculator.echo)
    svc.handle("whoami", calculator.whoami, sender_kwarg="sender")
    svc.handle("record", calculator.record)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def client(broker: BrokerConfig) -> Iterator[RpcClient]:
    with RpcClient(broker, "tester", timeout=10) as rpc:
        yield rpc
