"""Broker outages: clear errors while it is down, recovery once it is back."""

from __future__ import annotations

import socket
import threading
import time

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import FIRST_CONNECT_ATTEMPTS, RpcClient
from dashi.errors import BrokerUnreachableError, RpcTimeoutError, TransportError
from dashi.service import RpcService


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def connection_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URI of every attempt to open a kombu connection, in order."""
    attempts: list[str] = []
    original = kombu.Connection.ensure_connection

    def counted(self: kombu.Connection, *args: object, **kwargs: object) -> kombu.Connection:
        attempts.append(self.as_uri())
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kombu.Connection, "ensure_connection", counted)
    return attempts


def test_a_refused_first_connection_fails_after_a_few_attempts_naming_the_broker_once(
    connection_attempts: list[str],
) -> None:
    # Given a broker URI where nothing listens (with a password that must not leak)
    port = _closed_port()
    broker = BrokerConfig(uri=f"amqp://guest:s3cret@127.0.0.1:{port}//")
    # When a call is made with a long timeout
    with RpcClient(broker, "c") as rpc, pytest.raises(BrokerUnreachableError) as info:
        rpc.call("svc", "op", timeout=600)
    # Then it gives up after a few attempts, not at its timeout (not a reply timeout)
    assert len(connection_attempts) == FIRST_CONNECT_ATTEMPTS
    assert not isinstance(info.value, RpcTimeoutError)
    assert str(info.value) == (
        f"broker amqp://guest:***@127.0.0.1:{port}// unreachable (connection refused)"
    )


def test_an_unknown_broker_host_fails_after_a_few_attempts(connection_attempts: list[str]):
    broker = BrokerConfig(uri="amqp://guest:guest@no-such-host.invalid:5672//")
    with RpcClient(broker, "c") as rpc, pytest.raises(BrokerUnreachableError, match="unknown host"):
        rpc.call("svc", "op", timeout=600)
    assert len(connection_attempts) == FIRST_CONNECT_ATTEMPTS


def test_a_broker_that_drops_the_connection_is_retried_until_the_timeout():
    # Given something that accepts connections and closes them at once (not a refusal)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        stop = threading.Event()

        def hang_up() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    continue
                connection.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        broker = BrokerConfig(uri=f"amqp://guest:s3cret@127.0.0.1:{port}//")
        try:
            # When a call is made / Then it keeps trying until its timeout
            with RpcClient(broker, "c") as rpc, pytest.raises(RpcTimeoutError) as info:
                rpc.call("svc", "op", timeout=1.0)
        finally:
            stop.set()
            thread.join(5)
    assert "unreachable for 1s" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert info.value.operation == "op" and info.value.service == "svc"


def test_fire_while_the_broker_is_unreachable_raises_a_transport_error(
    connection_attempts: list[str],
) -> None:
    broker = BrokerConfig(uri=f"amqp://guest:guest@127.0.0.1:{_closed_port()}//")
    with RpcClient(broker, "c") as rpc, pytest.raises(TransportError, match="unreachable"):
        rpc.fire("svc", "op", timeout=600)
    assert len(connection_attempts) == FIRST_CONNECT_ATTEMPTS


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
