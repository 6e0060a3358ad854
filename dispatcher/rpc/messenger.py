"""The AMQP adapter of the core's ``Messenger``: one-way messages through an RpcClient.

Subscriber notifications and eeagent instructions are fire-and-forget, as in the
legacy system: a message that cannot be sent is logged and dropped, because the
state it reflects is already stored and the next heartbeat or retry repeats it.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.errors import TransportError
from dispatcher.rpc.client import RpcClient

__all__ = ["RpcMessenger"]

log = logging.getLogger(__name__)

#: Seconds a one-way send may wait for an unreachable broker.
FIRE_TIMEOUT = 5.0


class RpcMessenger:
    """Send one-way dashi messages (``fire``) through ``client``."""

    def __init__(self, client: RpcClient, *, timeout: float = FIRE_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout

    def fire(self, target: str, op: str, **args: Any) -> None:
        try:
            self.client.fire(target, op, args=args or None, timeout=self.timeout)
        except TransportError as exc:
            log.warning("could not send %s to %s: %s", op, target, exc)
