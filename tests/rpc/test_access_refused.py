"""Connection failures translated at the broker boundary: a refusal is fatal at once,
anything else is retried and named by its cause."""

from __future__ import annotations

import secrets
import socket
import uuid
from collections.abc import Iterator

import amqp.exceptions
import pytest

from dashi.broker import BrokerConfig, describe_failure, refusal
from dashi.client import RpcClient
from dashi.errors import AccessRefusedError, RpcTimeoutError, TransportError
from dashi.service import RpcService
from tests.infra import RabbitMQServer

URI = "amqp://pd%40ops:s3cret@broker.example:5672/prod"


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (
            socket.gaierror(-2, "Name or service not known"),
            "unknown host: Name or service not known",
        ),
        (TimeoutError("timed out"), "timed out"),
        (NotADirectoryError(20, "Not a directory", "/x/broker"), "Not a directory: /x/broker"),
        (
            amqp.exceptions.ConnectionForced("CONNECTION_FORCED - shutdown", (10, 50), "", 320),
            "CONNECTION_FORCED - shutdown",
        ),
        (RuntimeError("something\nelse"), "something"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_every_failure_is_described_on_one_line_without_the_url(exc, cause):
    assert describe_failure(exc) == cause
    assert refusal(exc, URI) is None


def test_a_refused_login_names_the_user_and_masks_the_password():
    # Given the handshake's refusal (no method: the login itself)
    exc = amqp.exceptions.AccessRefused("ACCESS_REFUSED - Login was refused", (0, 0), "", 403)
    # Then it is an AccessRefusedError (a TransportError) naming the unquoted user
    error = refusal(exc, URI)
    assert isinstance(error, AccessRefusedError) and isinstance(error, TransportError)
    assert str(error) == (
        "broker amqp://pd%40ops:***@broker.example:5672/prod refused the login of user "
        "'pd@ops' (ACCESS_REFUSED: wrong user name or password)"
    )


@pytest.mark.parametrize(
    "exc",
    [
        amqp.exceptions.NotAllowed(
            "NOT_ALLOWED - vhost prod not found", (10, 40), "Connection.open", 530
        ),
        amqp.exceptions.AccessRefused(
            "ACCESS_REFUSED - access to queue 'q' in vhost 'prod' refused for user 'pd@ops'",
            (50, 10),
            "Queue.declare",
            403,
        ),
    ],
)
def test_a_refused_vhost_or_permission_keeps_the_brokers_reason(exc):
    error = refusal(exc, URI)
    assert isinstance(error, AccessRefusedError)
    assert str(error) == (
        f"broker amqp://pd%40ops:***@broker.example:5672/prod refused access: {exc.reply_text}"
    )


def test_a_service_that_cannot_reach_the_broker_names_the_cause():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = RpcService(BrokerConfig(uri=f"amqp://guest:pw@127.0.0.1:{port}//"), "svc")
    # (kombu's connect() sleeps 2 s before its one retry: the first failure is
    # reported after that, well within the ready timeout)
    with pytest.raises(TransportError) as info:
        service.start(ready_timeout=6.0)
    assert not isinstance(info.value, AccessRefusedError)
    assert str(info.value) == (
        f"service svc: could not reach the broker at amqp://guest:***@127.0.0.1:{port}// "
        "within 6s: connection refused"
    )


# -- against RabbitMQ ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrong_password(rabbitmq: RabbitMQServer) -> Iterator[BrokerConfig]:
    """A broker config for a real user, with a wrong password."""
    from tests.conftest import ensure_running

    ensure_running(rabbitmq)
    vhost = f"refused-{uuid.uuid4().hex[:8]}"
    user = f"{vhost}-pd"
    for args in (
        ("add_vhost", vhost),
        ("add_user", user, secrets.token_hex(12)),
        ("set_permissions", "-p", vhost, user, ".*", ".*", ".*"),
    ):
        assert rabbitmq.ctl("rabbitmqctl", *args).returncode == 0
    try:
        uri = f"amqp://{user}:wrong-{secrets.token_hex(4)}@127.0.0.1:{rabbitmq.port}/{vhost}"
        yield BrokerConfig(uri=uri, sysname="refused")
    finally:
        rabbitmq.ctl("rabbitmqctl", "delete_vhost", vhost)
        rabbitmq.ctl("rabbitmqctl", "delete_user", user)


@pytest.mark.rabbitmq
def test_a_service_refused_by_the_broker_does_not_wait_for_its_ready_timeout(wrong_password):
    # Given a service of several workers whose broker refuses the password
    service = RpcService(wrong_password, "svc", workers=4)
    # When it starts with a long ready timeout / Then the refusal comes out, not a
    # "could not reach" after the timeout, and no worker is left running
    with pytest.raises(AccessRefusedError, match="ACCESS_REFUSED: wrong user name or password"):
        service.start(ready_timeout=300)
    assert not service.running


@pytest.mark.rabbitmq
def test_a_client_refused_by_the_broker_raises_the_refusal_not_a_timeout(wrong_password):
    with RpcClient(wrong_password, "c") as rpc:
        with pytest.raises(AccessRefusedError) as info:
            rpc.call("svc", "op", timeout=300)
        assert not isinstance(info.value, RpcTimeoutError)
        with pytest.raises(AccessRefusedError):
            rpc.fire("svc", "op", timeout=300)
    assert "wrong-" not in str(info.value)
