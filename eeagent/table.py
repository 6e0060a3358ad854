"""The agent's process table: records, retiring programs, and their persistence.

The table knows nothing of requests or backends. It keeps two flags for the agent:
*dirty* (something must be saved) and *changed* (what a heartbeat would say
changed); :meth:`ProcessTable.commit` acts on both.

It also remembers the terminates that named a round the agent had not been
launched with (the dispatcher may send a terminate before the launch it follows
reaches the agent): at most :data:`MAX_REMEMBERED_TERMINATES`, each for
:data:`REMEMBER_TERMINATE_SECONDS`, saved with the records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from eeagent.errors import PersistenceError
from eeagent.persistence import AgentSnapshot, StateStore
from eeagent.records import (
    TERMINAL_STATES,
    ProcessRecord,
    RememberedTerminate,
    RetiringProgram,
)
from pdcommon.states import ProcessState

__all__ = ["MAX_REMEMBERED_TERMINATES", "REMEMBER_TERMINATE_SECONDS", "ProcessTable"]

log = logging.getLogger(__name__)

#: Most terminates of unlaunched rounds remembered at once (the oldest go first):
#: they are rare (one per terminate that overtakes its launch), and each is saved
#: in ``state.json`` on every write.
MAX_REMEMBERED_TERMINATES = 1000
#: Seconds a terminate of an unlaunched round is remembered: far longer than a
#: launch takes to follow it, even from a queue the agent was not reading.
REMEMBER_TERMINATE_SECONDS = 3600.0


class ProcessTable:
    """Records by ``(upid, round)`` in launch order, and programs being retired.

    Args:
        agent: the agent's name (saved in the state file).
        store: where to persist (``None``: nowhere).
        on_change: called by :meth:`commit` when the reported state changed.
        clock: seconds since the epoch (stamps ``ended_at``).

    Not thread-safe: the agent calls it under its lock.
    """

    def __init__(
        self,
        agent: str,
        store: StateStore | None,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.store = store
        self.on_change = on_change
        self.records: dict[tuple[str, int], ProcessRecord] = {}
        self.retiring: dict[str, RetiringProgram] = {}
        #: ``(upid, round)`` → when a terminate of that unlaunched round arrived,
        #: oldest first.
        self.terminates: dict[tuple[str, int], float] = {}
        self.backend: str | None = None
        self.dirty = False
        self.changed = False
        #: A round ended since the agent last looked (it checks the log budget).
        self.ended = False

    # -- records ------------------------------------------------------------------

    def get(self, upid: str, round: int) -> ProcessRecord | None:
        return self.records.get((upid, round))

    def by_upid(self, upid: str) -> ProcessRecord | None:
        """The record of ``upid`` at any round (the agent holds at most one)."""
        for record in self.records.values():
            if record.upid == upid:
                return record
        return None

    def add(self, record: ProcessRecord) -> None:
        self.records[(record.upid, record.round)] = record
        self.dirty = self.changed = True

    def remove(self, record: ProcessRecord) -> None:
        del self.records[(record.upid, record.round)]
        self.dirty = self.changed = True

    def live_count(self) -> int:
        return sum(1 for record in self.records.values() if record.live)

    def set_state(self, record: ProcessRecord, state: str, msg: str | None = None) -> None:
        """Move ``record`` to ``state``; ``msg`` replaces its message when given.

        Entering ``400-PENDING`` or ``500-RUNNING`` clears the message; entering a
        terminal state for the first time stamps ``ended_at``.
        """
        if record.state == state and (msg is None or record.msg == msg):
            return
        suffix = f" ({msg})" if msg else ""
        log.info("%s round %d: %s -> %s%s", record.upid, record.round, record.state, state, suffix)
        record.state = state
        if msg is not None or state in (ProcessState.PENDING, ProcessState.RUNNING):
            record.msg = msg
        if state in TERMINAL_STATES and record.ended_at is None:
            record.ended_at = self.clock()
            self.ended = True
        self.dirty = self.changed = True

    # -- terminates of unlaunched rounds ---------------------------------------------

    def remember_terminate(self, upid: str, round: int, now: float) -> None:
        """Remember that ``(upid, round)`` was terminated before its launch arrived."""
        self.forget_old_terminates(now)
        self.terminates.pop((upid, round), None)
        self.terminates[(upid, round)] = now
        while len(self.terminates) > MAX_REMEMBERED_TERMINATES:
            del self.terminates[next(iter(self.terminates))]
        self.dirty = True

    def terminate_remembered(self, upid: str, round: int, now: float) -> bool:
        """Whether ``(upid, round)`` was terminated before its launch, recently enough."""
        at = self.terminates.get((upid, round))
        return at is not None and now - at < REMEMBER_TERMINATE_SECONDS

    def forget_old_terminates(self, now: float) -> None:
        """Drop the remembered terminates older than :data:`REMEMBER_TERMINATE_SECONDS`."""
        expired = [
            key for key, at in self.terminates.items() if now - at >= REMEMBER_TERMINATE_SECONDS
        ]
        for key in expired:
            del self.terminates[key]
        if expired:
            self.dirty = True

    # -- persistence --------------------------------------------------------------

    def load(self) -> None:
        """Replace the table with the saved state; an unreadable file is moved aside."""
        if self.store is None:
            return
        try:
            snapshot = self.store.load()
        except PersistenceError as exc:
            moved = self.store.quarantine()
            log.error("%s; moved it to %s and starting with no processes", exc, moved)
            return
        if snapshot is None:
            return
        self.records = {(r.upid, r.round): r for r in snapshot.processes}
        self.retiring = {p.name: p for p in snapshot.retiring}
        remembered = sorted(snapshot.terminates, key=lambda t: t.at)
        self.terminates = {(t.upid, t.round): t.at for t in remembered}
        self.backend = snapshot.backend

    def save(self) -> None:
        """Persist now.

        Raises:
            PersistenceError: the state file cannot be written.
        """
        self.dirty = False
        if self.store is not None:
            self.store.save(
                AgentSnapshot(
                    agent=self.agent,
                    backend=self.backend,
                    processes=list(self.records.values()),
                    retiring=list(self.retiring.values()),
                    terminates=[
                        RememberedTerminate(upid=upid, round=round_, at=at)
                        for (upid, round_), at in self.terminates.items()
                    ],
                )
            )

    def commit(self) -> None:
        """Persist if anything changed, then announce a change of the reported state.

        A write failure is logged, not raised: the agent keeps running and reporting.
        """
        if self.dirty:
            try:
                self.save()
            except PersistenceError as exc:
                log.error("cannot save the agent state: %s", exc)
        if self.changed:
            self.changed = False
            self.on_change()
