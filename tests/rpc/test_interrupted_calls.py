"""A call interrupted by Ctrl-C part-way through a frame leaves a client that closes at once.

An interrupt that lands inside a socket read leaves the connection's framing
unknown: the rest of the frame is still on the socket. A closing handshake on
such a connection would wait for a close-ok that never comes (about a minute,
the broker's own timeout). The client drops the socket instead, and the next
call opens a new connection.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from tests.rpc.conftest import Calculator

pytestmark = pytest.mark.rabbitmq

#: Seconds a close may take before it counts as hanging (a handshake waits ~60 s).
HANG = 15.0


def interrupt_inside_the_next_large_frame(client: RpcClient) -> None:
    """Make the client's socket raise KeyboardInterrupt after a large frame's header
    is read and before its payload is: the payload stays on the socket."""
    transport = client._call_channel.connection.connection.transport  # type: ignore[union-attr]
    read = transport._read

    def interrupted_read(n: int, *args: Any, **kwargs: Any) -> bytes:
        if n > 10_000:
            transport._read = read  # once
            raise KeyboardInterrupt
        return read(n, *args, **kwargs)

    transport._read = interrupted_read


def closes_promptly(client: RpcClient) -> bool:
    closer = threading.Thread(target=client.close, daemon=True)
    closer.start()
    closer.join(HANG)
    return not closer.is_alive()


@pytest.fixture
def rabbit(amqp_uri: str, sysname: str) -> BrokerConfig:
    return BrokerConfig(uri=amqp_uri, sysname=sysname, heartbeat=10)


def test_close_after_a_call_interrupted_mid_reply_returns(rabbit: BrokerConfig) -> None:
    from dashi.service import RpcService

    service = RpcService(rabbit, "calc", workers=1)
    service.handle("echo", Calculator().echo)
    service.start()
    client = RpcClient(rabbit, timeout=10)
    try:
        # Given a client with an open connection
        assert client.call("calc", "echo", value="warm") == "warm"
        # When Ctrl-C lands between the header and the payload of a large reply
        interrupt_inside_the_next_large_frame(client)
        with pytest.raises(KeyboardInterrupt):
            client.call("calc", "echo", value="x" * 100_000)
        # Then closing the client does not wait for a handshake on the broken connection
        assert closes_promptly(client)
        # And the client still works: the next call opens a new connection
        assert client.call("calc", "echo", value="again") == "again"
    finally:
        client.close()
        service.stop()
