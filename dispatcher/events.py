"""The event history of processes: every state change with its time, round, agent,
node and reason, and the output an agent sent when a round ended.

:class:`EventLog` is what the state machine (:mod:`dispatcher.transitions`) records
into. Events are kept in the store's ``process_events`` (one row each, apart from
the process record, so reading or writing a process never touches them), bounded
to the newest ``per_process`` of each process and the newest ``total`` overall.

Recording must not slow the paths it watches (``schedule_process``, heartbeats,
matchmaking): once :meth:`EventLog.run` is running (the daemon runs it), an event
is only appended to a buffer, written in batches every ``flush_interval`` seconds
(one insert for many events), and pruned every ``prune_interval`` seconds. A read
(:meth:`EventLog.list`) flushes first. The price: events of the last second or so
are lost if the dispatcher dies. Without :meth:`run` (unit tests,
tools), every event is written at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from dispatcher.model import Process
from dispatcher.store.base import Store
from pdcommon.errors import StoreError
from pdcommon.settings import DEFAULT_EVENTS_KEPT_TOTAL, DEFAULT_PROCESS_EVENTS_KEPT

__all__ = ["OUTPUT_TAIL", "EventLog"]

log = logging.getLogger(__name__)

#: Bytes of each stream kept with the event of an ended round (the agent's tail).
OUTPUT_TAIL: Final = 4096
#: Seconds between batch writes once running.
FLUSH_INTERVAL: Final = 1.0
#: Seconds between prunes.
PRUNE_INTERVAL: Final = 60.0
#: Buffered events beyond which the oldest are dropped while the store fails.
_MAX_BUFFERED: Final = 100_000


class EventLog:
    """Records process events into a store (see the module docstring).

    Args:
        store: where events are kept.
        per_process: events kept per process.
        total: events kept overall.
        clock: returns the current time in epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        *,
        per_process: int = DEFAULT_PROCESS_EVENTS_KEPT,
        total: int = DEFAULT_EVENTS_KEPT_TOTAL,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL,
        prune_interval: float = PRUNE_INTERVAL,
    ) -> None:
        self.store = store
        self.per_process = per_process
        self.total = total
        self.clock = clock
        self.flush_interval = flush_interval
        self.prune_interval = prune_interval
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._buffered = False
        self._written = 0

    def record(
        self,
        process: Process,
        *,
        reason: str | None = None,
        agent: str | None = None,
        node: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
        output: dict[str, str] | None = None,
        at: float | None = None,
    ) -> None:
        """Record that ``process`` (as just written) is in its state."""
        event = {
            "upid": process.upid,
            "round": process.round,
            "time": self.clock() if at is None else at,
            "state": process.state,
            "reason": reason,
            "agent": agent if agent is not None else process.assigned,
            "node": node,
            "exit_code": exit_code,
            "signal": signal,
            "output": output or None,
        }
        with self._lock:
            self._buffer.append(event)
            if len(self._buffer) > _MAX_BUFFERED:
                del self._buffer[0]
            buffered = self._buffered
        if not buffered:
            self.flush()

    def flush(self) -> None:
        """Write the buffered events now (a store failure keeps them for the next time)."""
        with self._flushing:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                self.store.add_process_events(batch)
            except StoreError as exc:
                log.warning("could not record %d process event(s): %s", len(batch), exc)
                with self._lock:
                    self._buffer[:0] = batch
                return
            self._written += len(batch)
            if not self._buffered and self._written >= self.per_process:
                self.prune()

    def prune(self) -> None:
        """Drop events beyond the per-process and total bounds."""
        self._written = 0
        try:
            removed = self.store.prune_process_events(self.per_process, self.total)
        except StoreError as exc:
            log.warning("could not prune process events: %s", exc)
            return
        if removed:
            log.debug("pruned %d process event(s)", removed)

    def list(self, upid: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` events of ``upid``, oldest first (written ones included)."""
        self.flush()
        return self.store.list_process_events(upid, limit)

    def run(self, stop: threading.Event) -> None:
        """Write events in batches until ``stop`` is set (then flush once more)."""
        self._buffered = True
        next_prune = time.monotonic() + self.prune_interval
        try:
            while not stop.wait(self.flush_interval):
                self.flush()
                if time.monotonic() >= next_prune:
                    self.prune()
                    next_prune = time.monotonic() + self.prune_interval
        finally:
            self._buffered = False
            self.flush()
