"""Broker outages: clear errors while it is down, recovery once it is back."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import RpcTimeoutError, TransportError
from dashi.service import RpcService


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_call_while_the_broker_is_unreachable_fails_at_its_timeout_naming_the_broker():
    # Given a broker URI where nothing listens (with a password that must not leak)
    broker = BrokerConfig(uri=f"amqp://guest:s3cret@127.0.0.1:{_closed_port()}//")
    started = time.monotonic()
    # When a call is made / Then it fails once its timeout expires, not before, not never
    with RpcClient(broker, "c") as rpc, pytest.raises(RpcTimeoutError) as info:
        rpc.call("svc", "op", timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 6
    assert "unreachable" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_fire_while_the_broker_is_unreachable_raises_a_transport_error():
    broker = BrokerConfig(uri=f"amqp://guest:guest@127.0.0.1:{_closed_port()}//")
    with RpcClient(broker, "c") as rpc, pytest.raises(TransportError, match="unreachable"):
        rpc.fire("svc", "op", timeout=0.5)


def test_a_service_that_cannot_reach_the_broker_fails_to_start_clearly():
    broker = BrokerConfig(uri=f"amqp://guest:pw@127.0.0.1:{_closed_port()}//")
    service = RpcService(broker, "svc")
    with pytest.raises(TransportError, match="could not reach the broker"):
        service.start(ready_timeout=1.0)
    assert not service.running


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_service_and_client_carry_on_after_a_broker_restart(rabbitmq, sysname):
    # Given a service and a client that have talked once
    broker = BrokerConfig(uri=rabbitmq.uri, sysname=sysname, heartbeat=10)
    service = RpcService(broker, "svc", workers=2)
    service.handle("ping", lambda value: value)
    service.start()
    try:
        with RpcClient(broker, "c") as rpc:
            assert rpc.call("svc", "ping", value=1) == 1
            # When the broker restarts under them
            rabbitmq.restart()
            # Then a call succeeds again without anyone reconnecting by hand
            assert rpc.call("svc", "ping", value=2, timeout=60) == 2
            rpc.fire("svc", "ping", value=3, timeout=30)
    finally:
        service.stop()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_call_made_during_an_outage_succeeds_when_the_broker_returns_in_time(rabbitmq, sysname):
    broker = BrokerConfig(uri=rabbitmq.uri, sysname=sysname, heartbeat=10)
    service = RpcService(broker, "svc")
    service.handle("ping", lambda value: value)
    service.start()
    result: dict[str, object] = {}
    try:
        with RpcClient(broker, "c") as rpc:
            assert rpc.call("svc", "ping", value=0) == 0
            rabbitmq.stop()

            def call() -> None:
                try:
                    result["value"] = rpc.call("svc", "ping", value=7, timeout=90)
                except Exception as exc:  # recorded for the assertion below
                    result["error"] = exc

            thread = threading.Thread(target=call)
            thread.start()
            time.sleep(1.0)
            rabbitmq.start()
            thread.join(120)
        assert result == {"value": 7}
    finally:
        service.stop()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_an_idle_service_keeps_its_connection_by_servicing_heartbeats(rabbitmq, sysname, caplog):
    # Given a service and client with a 3 s AMQP heartbeat (the broker drops a peer
    # that misses two)
    broker = BrokerConfig(uri=rabbitmq.uri, sysname=sysname, heartbeat=3)
    service = RpcService(broker, "idle")
    service.handle("ping", lambda: "pong")
    service.start()
    try:
        with RpcClient(broker, "c") as rpc:
            assert rpc.call("idle", "ping") == "pong"
            # When both stay idle for several heartbeat periods
            time.sleep(10)
            # Then the service never had to reconnect, and calls still work
            assert rpc.call("idle", "ping") == "pong"
        reconnects = [r for r in caplog.records if r.name == "dashi.service"]
        assert not [r for r in reconnects if "unavailable" in r.getMessage()]
    finally:
        service.stop()


@pytest.mark.rabbitmq
def test_a_call_to_a_service_that_is_not_running_says_so(rabbitmq, sysname):
    broker = BrokerConfig(uri=rabbitmq.uri, sysname=sysname)
    with RpcClient(broker, "c") as rpc, pytest.raises(RpcTimeoutError, match="service running"):
        rpc.call("absent", "ping", timeout=1.0)
