"""The AMQP adapter of the core's ``Messenger``: one-way messages through an RpcClient.

Subscriber notifications and eeagent instructions are fire-and-forget, as in the
legacy system. A message that cannot be sent within the timeout raises
:class:`~dashi.errors.TransportError`; the core decides whether that matters
(an agent instruction) or not (a notification of an already stored state).
"""

from __future__ import annotations

from typing import Any

from dashi.client import RpcClient

__all__ = ["RpcMessenger"]

#: Seconds a one-way send may wait for an unreachable broker.
FIRE_TIMEOUT = 5.0


class RpcMessenger:
    """Send one-way dashi messages (``fire``) through ``client``."""

    def __init__(self, client: RpcClient, *, timeout: float = FIRE_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout

    def fire(self, target: str, op: str, **args: Any) -> None:
        """Send ``op`` to ``target``.

        Raises:
            TransportError: the broker stayed unreachable for the timeout.
        """
        self.client.fire(target, op, args=args or None, timeout=self.timeout)
