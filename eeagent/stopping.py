"""Stopping programs: stop signals, lost ones sent again, and retired programs.

A program is *retired* when no record reports it any more (``cleanup``, a newer
round, a restart) or when the backend runs a program the agent does not know. A
retired program is stopped if it runs, then removed from the backend with its
logs; a successor with the same name, or one that must not overlap with it,
starts only once it is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from eeagent.control import ProcessControl, ProgramState, ProgramStatus
from eeagent.errors import BackendFaultError, BackendUnavailableError
from eeagent.records import ProcessRecord, RetiringProgram
from eeagent.table import ProcessTable
from eeagent.transitions import RESIGNAL_AFTER, resignal_due

__all__ = ["Stopper"]

log = logging.getLogger(__name__)

Target = ProcessRecord | RetiringProgram


def _name(target: Target) -> str | None:
    return target.program if isinstance(target, ProcessRecord) else target.name


class Stopper:
    """Stops and retires programs for the agent (called under its lock).

    Args:
        control: the process backend.
        table: the agent's process table (retired programs live in it).
        clock: seconds since the epoch.
    """

    def __init__(
        self, control: ProcessControl, table: ProcessTable, clock: Callable[[], float]
    ) -> None:
        self.control = control
        self.table = table
        self.clock = clock

    def stop(self, target: Target) -> bool:
        """Send the stop signal to a record's or a retired program's process.

        Returns:
            Whether it was sent (``False``: not running, or the backend failed).
        """
        name = _name(target)
        if name is None:
            return False
        try:
            sent = self.control.stop(name)
        except (BackendUnavailableError, BackendFaultError) as exc:
            log.warning("could not stop %s: %s", name, exc)
            return False
        if sent:
            target.stop_sent_at = self.clock()
            target.resignaled = False
            self.table.dirty = True
        return sent

    def maybe_resignal(self, target: Target) -> None:
        """Send SIGTERM again, once, if a stop sent right after the spawn seems lost."""
        name = _name(target)
        due = resignal_due(
            stop_sent_at=target.stop_sent_at,
            started_at=target.started_at,
            resignaled=target.resignaled,
            now=self.clock(),
        )
        if not due or name is None:
            return
        log.info("%s is still stopping after a stop sent at spawn: signalling it again", name)
        self.control.resignal(name)
        target.resignaled = True
        self.table.dirty = True

    def retire(self, record: ProcessRecord, successor: str | None = None) -> str | None:
        """Drop ``record`` from the table and retire its program.

        Returns:
            The program a successor named ``successor`` must wait for: the old one
            while it may still run, and always when the names are the same.
        """
        self.table.remove(record)
        name = record.program
        if name is None:
            return None
        running = record.live and not record.needs_start
        if not running:
            try:
                self.control.remove(name)
                return None
            except (BackendUnavailableError, BackendFaultError) as exc:
                log.warning("could not remove program %s yet: %s", name, exc)
        retiree = RetiringProgram(
            name=name,
            started_at=record.started_at,
            stop_sent_at=record.stop_sent_at,
            resignaled=record.resignaled,
        )
        self.table.retiring[name] = retiree
        if running and retiree.stop_sent_at is None:
            self.stop(retiree)
        return name if running or name == successor else None

    def advance(self, retiree: RetiringProgram, status: ProgramStatus | None) -> bool:
        """Stop a retired program, wait for it to stop, then remove it.

        Returns:
            Whether it was removed from the backend just now.
        """
        if status is not None and status.state in (ProgramState.STARTING, ProgramState.RUNNING):
            sent = retiree.stop_sent_at
            if sent is None or self.clock() - sent >= RESIGNAL_AFTER:
                self.stop(retiree)
            return False
        if status is not None and status.state is ProgramState.STOPPING:
            self.maybe_resignal(retiree)
            return False
        try:
            self.control.remove(retiree.name)
        except BackendFaultError as exc:
            log.warning("could not remove program %s: %s", retiree.name, exc)
            return False
        del self.table.retiring[retiree.name]
        self.table.dirty = True
        return status is not None
