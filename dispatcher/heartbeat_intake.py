"""Fired heartbeats taken off the RPC workers and coalesced per agent.

Agents fire their heartbeats onto the dispatcher's own service queue (op
``heartbeat``, no ``reply-to``; see docs/rpc.md), the queue client requests
arrive on. Applying a heartbeat reads and writes the store; when the RPC workers
applied each one in turn, a flood of heartbeats held every worker and a client
request queued behind it waited until the whole flood was applied.

:class:`HeartbeatIntake` is what the RPC service runs for a *fired* heartbeat
(:meth:`~dashi.service.RpcService.handle` with ``fire=``), on the
consuming thread, before the message is acknowledged:

1. the message and sender are validated (:class:`~pdcommon.heartbeat_messages.
   HeartbeatMessage`, :func:`~pdcommon.heartbeat_messages.resource_id_from_sender`);
   an invalid heartbeat is dropped there, with at most one warning per
   :data:`REJECT_LOG_SECONDS` (which counts the ones not logged);
2. a valid one is put in a buffer keyed by the agent's resource id: it replaces
   the agent's pending heartbeat, if any, unless that one is stamped later, and
   keeps its place in line (latest wins, and an agent that beats fast never
   overtakes the others).

``workers`` applier threads take the pending heartbeats in that order and apply
each with the health handler (:meth:`~dispatcher.heartbeats.HeartbeatHandler.
heartbeat`); one agent's heartbeats are never applied concurrently, and each is
applied at most once. An agent that beats faster than its heartbeats are applied
(its pending heartbeat was replaced) is applied at most once per ``pace`` seconds
(:data:`DEFAULT_PACE`): during a flood, applying (a store transaction, and a
matchmaker pass woken by the resource write) would otherwise take the CPU the RPC
workers need to read the queue. An agent that beats no faster is never held back.

**Why latest wins is sound.** A heartbeat is a full snapshot: it lists every
process the agent holds, terminal ones included until a ``cleanup`` removes them,
and ``last_heartbeat`` only moves forward. Applying the latest of
several pending heartbeats therefore leaves the state that applying each in turn
would leave, except for the states a process only passed through between them
(``400-PENDING`` then ``800-EXITED`` is seen as ``800-EXITED``), which is also what
happens when an agent's own poll misses a short-lived state. "Latest" is the later
``timestamp`` (the later arrival on a tie): heartbeats published on several
connections may arrive out of order, and a snapshot taken earlier must not replace
a later one (nor hold ``last_heartbeat`` back). The first heartbeat of an unknown agent
registers it and its process list is not processed; if a later
heartbeat of the agent replaced it while pending, that one registers the agent.

Heartbeats the agents *call* (with a ``reply-to``) are still applied by the RPC
worker before the reply, so a caller sees the outcome, errors included.

Limits: at most ``capacity`` agents have a heartbeat pending; a heartbeat of
another agent that arrives while the buffer is full is dropped (logged, rate
limited), and so are the heartbeats still pending when the intake stops. Either
way the agent's next heartbeat carries the same information.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from dashi.errors import BadRequestError
from pdcommon.heartbeat_messages import HeartbeatMessage, resource_id_from_sender

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_PACE",
    "DEFAULT_WORKERS",
    "REJECT_LOG_SECONDS",
    "HeartbeatIntake",
    "IntakeCounts",
]

log = logging.getLogger(__name__)

#: Agents that may have a heartbeat pending at once (a heartbeat is a few hundred
#: bytes per process it reports).
DEFAULT_CAPACITY: Final = 10_000
#: Applier threads: heartbeats of different agents are applied in parallel.
DEFAULT_WORKERS: Final = 2
#: Seconds between two warnings about dropped heartbeats (the others are counted).
REJECT_LOG_SECONDS: Final = 10.0
#: Seconds between two applications of the heartbeats of an agent that beats faster
#: than its heartbeats are applied (one of them replaced another while pending).
DEFAULT_PACE: Final = 0.5
#: Seconds :meth:`HeartbeatIntake.stop` waits for each applier thread.
_JOIN_TIMEOUT: Final = 10.0

#: Applies one heartbeat: called as ``apply(message, sender)``.
Apply = Callable[[Any, Any], None]


@dataclass
class IntakeCounts:
    """What the intake did since it was built (monotonic counters)."""

    #: Valid heartbeats put in the buffer.
    accepted: int = 0
    #: Valid heartbeats that met a pending one of the same agent (one of the two
    #: was dropped).
    coalesced: int = 0
    #: Invalid heartbeats dropped on arrival.
    rejected: int = 0
    #: Valid heartbeats dropped because the buffer was full.
    overflowed: int = 0
    #: Heartbeats applied (whatever the outcome).
    applied: int = 0


class _Throttled:
    """A warning logged at most once per ``interval`` seconds; the rest are counted."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def warning(self, text: str, *args: Any) -> None:
        with self._lock:
            now = self.clock()
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped, self._next = self._skipped, 0, now + self.interval
        if skipped:
            log.warning(text + " (and %d more since the last such warning)", *args, skipped)
        else:
            log.warning(text, *args)


class HeartbeatIntake:
    """Validate fired heartbeats at once, keep the latest per agent, apply them on threads.

    Args:
        apply: applies one heartbeat, as ``apply(message, sender)``
            (:meth:`~dispatcher.heartbeats.HeartbeatHandler.heartbeat`).
        workers: applier threads started by :meth:`start`.
        capacity: agents that may have a heartbeat pending at once.
        pace: seconds an agent whose pending heartbeat was replaced waits after its
            previous heartbeat was applied before the next one is.
        clock: monotonic seconds (rate-limited warnings and pacing).

    Until :meth:`start` is called nothing is applied except by :meth:`drain`.
    """

    def __init__(
        self,
        apply: Apply,
        *,
        workers: int = DEFAULT_WORKERS,
        capacity: int = DEFAULT_CAPACITY,
        pace: float = DEFAULT_PACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be at least 1")
        self._apply = apply
        self.workers = workers
        self.capacity = capacity
        self.pace = pace
        self._clock = clock
        self.counts = IntakeCounts()
        #: resource id -> (timestamp, message, sender) of its pending heartbeat.
        self._pending: dict[str, tuple[datetime, Any, Any]] = {}
        self._busy: set[str] = set()
        #: Agents whose pending heartbeat replaced another, and when each agent's
        #: last heartbeat was applied (kept for ``pace`` seconds).
        self._hot: set[str] = set()
        self._applied_at: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._rejections = _Throttled(REJECT_LOG_SECONDS, clock)
        self._overflows = _Throttled(REJECT_LOG_SECONDS, clock)

    # -- the fire handler (RPC consuming thread) ------------------------------------------

    def heartbeat(self, message: Any, sender: Any = None) -> None:
        """Take a fired heartbeat: drop it if invalid, else make it its agent's pending one.

        Runs on the RPC service's consuming thread: it reads nothing and raises nothing.

        Args:
            message: the heartbeat as received.
            sender: the ``sender`` header.
        """
        try:
            beat = HeartbeatMessage.parse(message)
            resource_id = resource_id_from_sender(sender, beat.eeagent_id)
        except BadRequestError as exc:
            with self._changed:
                self.counts.rejected += 1
            self._rejections.warning(
                "dropping heartbeat from %.80s: %.200s", reprlib.repr(sender), exc
            )
            return
        with self._changed:
            pending = self._pending.get(resource_id)
            if pending is not None:
                self.counts.accepted += 1
                self.counts.coalesced += 1
                self._hot.add(resource_id)
                if beat.timestamp >= pending[0]:
                    # Assigning to an existing key keeps its place in the dict's order.
                    self._pending[resource_id] = (beat.timestamp, message, sender)
                return
            if len(self._pending) < self.capacity:
                self._pending[resource_id] = (beat.timestamp, message, sender)
                self.counts.accepted += 1
                self._changed.notify()
                return
            self.counts.overflowed += 1
        self._overflows.warning(
            "dropping heartbeat of %s: %d agents have a heartbeat pending",
            resource_id,
            self.capacity,
        )

    # -- applying ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Heartbeats waiting to be applied (one per agent at most)."""
        with self._changed:
            return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing is pending and nothing is being applied."""
        with self._changed:
            return not self._pending and not self._busy

    def drain(self, *, paced: bool = False) -> int:
        """Apply the pending heartbeats on the calling thread; return how many.

        Args:
            paced: only those due (see ``pace``); by default, every one.
        """
        applied = 0
        while (taken := self._take(wait=False, paced=paced)) is not None:
            self._run(*taken)
            applied += 1
        return applied

    def _take(self, *, wait: bool, paced: bool = True) -> tuple[str, Any, Any] | None:
        """The oldest pending heartbeat that is due, of an agent not being applied."""
        with self._changed:
            while not self._stopping:
                now = self._clock()
                due: float | None = None
                for resource_id in self._pending:
                    if resource_id in self._busy:
                        continue
                    last = self._applied_at.get(resource_id)
                    if paced and resource_id in self._hot and last is not None:
                        ready = last + self.pace
                        if now < ready:
                            due = ready if due is None else min(due, ready)
                            continue
                    _, message, sender = self._pending.pop(resource_id)
                    self._busy.add(resource_id)
                    self._hot.discard(resource_id)
                    return resource_id, message, sender
                if not wait:
                    return None
                self._changed.wait(None if due is None else due - now)
            return None

    def _run(self, resource_id: str, message: Any, sender: Any) -> None:
        try:
            self._apply(message, sender)
        except Exception:
            # As an RPC worker would: log it, and go on with the next heartbeat.
            log.exception("could not apply the heartbeat of %s", resource_id)
        finally:
            with self._changed:
                self._busy.discard(resource_id)
                self.counts.applied += 1
                now = self._clock()
                self._applied_at[resource_id] = now
                if len(self._applied_at) > self.capacity:
                    stale = [k for k, at in self._applied_at.items() if at + self.pace <= now]
                    for key in stale:
                        del self._applied_at[key]
                # A heartbeat of this agent may have waited for this one to finish.
                self._changed.notify_all()

    def _worker(self) -> None:
        while (taken := self._take(wait=True)) is not None:
            self._run(*taken)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the applier threads."""
        with self._changed:
            self._stopping = False
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._worker, name=f"pd-heartbeats-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = _JOIN_TIMEOUT) -> None:
        """Stop the applier threads once their heartbeat in hand is applied.

        Heartbeats still pending are dropped: each agent's next one carries the
        same information.
        """
        with self._changed:
            self._stopping = True
            dropped = len(self._pending)
            self._pending.clear()
            self._hot.clear()
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if dropped:
            log.info("heartbeat intake stopped: %d pending heartbeats dropped", dropped)
