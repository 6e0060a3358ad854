"""What a transport without ``basic.return`` raises for a mandatory, unroutable publish."""

from __future__ import annotations

__all__ = ["UnroutableError"]


class UnroutableError(Exception):
    """A ``mandatory`` message matched no queue: nothing was delivered.

    The embedded transport raises it from the publishing call, where RabbitMQ
    would return the message (``basic.return``); sending it again is safe.
    """
