"""One-way messages the dispatcher core sends: subscriber notifications and eeagent commands.

The core never talks to the broker itself. It hands every outgoing one-way message
to a :class:`Messenger`: a single ``fire(target, op, **args)`` call, the dashi
"fire" (no reply, no retry). Two kinds of messages go through it:

* subscriber notifications: for each ``[name, operation]`` pair in a process's
  ``subscribers``, ``fire(name, operation, process={"upid", "round", "state",
  "assigned"})``;
* eeagent commands: ``fire(resource_id, "terminate_process", u_pid=..., round=...)``,
  ``fire(resource_id, "restart_process", u_pid=..., round=...)`` (and, from the
  matchmaker and heartbeat handling, ``launch_process`` and ``cleanup``).

Implementations: the AMQP adapter over the RPC client (written at the edge, not in
this module) and :class:`RecordingMessenger`, the in-memory fake for tests.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from pdcommon.errors import DispatcherError

__all__ = ["FiredMessage", "Messenger", "RecordingMessenger"]


class Messenger(Protocol):
    """Sends one-way (fire-and-forget) messages to a named dashi service."""

    def fire(self, target: str, op: str, **args: Any) -> None:
        """Send ``{"op": op, "args": args}`` to the service ``target``.

        Called by the core after the state change the message reports has been
        written, from whatever thread handles the request. Implementations must be
        thread-safe, must not block for long, and must not wait for a reply. They
        prefix ``target`` with the configured sysname themselves.

        Args:
            target: the receiving service's name (a subscriber name or an eeagent's
                resource id), without sysname prefix.
            op: the operation the receiver runs.
            **args: JSON-serializable keyword arguments of the operation.

        Raises:
            TransportError: the message could not be handed to the broker. No other
                exception may escape: adapters translate library errors.
        """


@dataclass(frozen=True)
class FiredMessage:
    """One message recorded by :class:`RecordingMessenger`."""

    target: str
    op: str
    args: dict[str, Any] = field(default_factory=dict)


class RecordingMessenger:
    """A :class:`Messenger` that records every message instead of sending it.

    Thread-safe. Arguments are deep-copied when recorded, so later mutation by the
    sender does not change what a test sees.

    Attributes:
        error: when set, every ``fire`` records the message and then raises this
            error (to test how callers handle an unreachable broker).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[FiredMessage] = []
        self.error: DispatcherError | None = None

    def fire(self, target: str, op: str, **args: Any) -> None:
        """Record the message; raise :attr:`error` if one is set."""
        message = FiredMessage(target, op, copy.deepcopy(args))
        with self._lock:
            self._messages.append(message)
            error = self.error
        if error is not None:
            raise error

    @property
    def messages(self) -> list[FiredMessage]:
        """Every message recorded so far, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    def sent_to(self, target: str, op: str | None = None) -> list[FiredMessage]:
        """The messages sent to ``target`` (only operation ``op`` when given)."""
        return [m for m in self.messages if m.target == target and (op is None or m.op == op)]

    def clear(self) -> None:
        """Forget every recorded message."""
        with self._lock:
            self._messages.clear()
