"""The process state machine: guarded transitions, restart policy and queueing decisions.

:class:`ProcessStateMachine` is the only writer of a process's ``state``, ``round``
and ``assigned`` fields, and the factory of new process records
(:meth:`~ProcessStateMachine.new_process`). The daemon's wiring builds exactly one
and passes it by constructor to the RPC core (:mod:`dispatcher.core`), the
matchmaker, the heartbeat handler, the evacuation, the set-aside and the doctor.
Everything here is synchronous and works only through the
:class:`~dispatcher.store.base.Store` and :class:`~dispatcher.messaging.Messenger`
interfaces.

Two kinds of writes:

* guarded transitions (:meth:`~ProcessStateMachine.process_change_state`,
  :meth:`~ProcessStateMachine.process_next_round`) re-read and re-check their
  guard on a write conflict themselves;
* single attempts (:meth:`~ProcessStateMachine.reschedule`,
  :meth:`~ProcessStateMachine.restart_in_place`,
  :meth:`~ProcessStateMachine.terminate_unassigned`,
  :meth:`~ProcessStateMachine.begin_terminating`,
  :meth:`~ProcessStateMachine.assign`) write the record derived from the one the
  caller read and raise :class:`~dashi.errors.WriteConflictError` when it
  changed meanwhile: the caller re-reads and re-decides;
* :meth:`~ProcessStateMachine.assign_many` writes the matchmaker's assignments
  of one pass in one batch.

A process's ``(round, state)`` only moves forward: a state moves backwards only
together with ``round += 1``. Writers read a record, decide, and write it back with
the version they read; on :class:`~dashi.errors.WriteConflictError` they re-read
and re-check their guard, so a stale or out-of-order event becomes a no-op instead
of overwriting newer state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from dashi.errors import NotFoundError, TransportError, WriteConflictError
from dashi.jsontree import tree_copy
from dispatcher.events import EventLog
from dispatcher.messaging import Messenger
from dispatcher.model import Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.batch import batch_writer
from dispatcher.store.modify import WRITE_ATTEMPTS, modify, retry_conflicts
from pdcommon.states import ProcessState, QueueingMode, RestartMode

__all__ = [
    "WRITE_CONFLICT_RETRIES",
    "Assignment",
    "ProcessStateMachine",
    "get_queueing_decision",
    "process_should_restart",
]

log = logging.getLogger(__name__)

#: Optimistic attempts an RPC makes before giving up (legacy ``_WRITE_CONFLICT_RETRIES``);
#: the one bound of every optimistic write, :data:`dispatcher.store.modify.WRITE_ATTEMPTS`.
WRITE_CONFLICT_RETRIES: Final = WRITE_ATTEMPTS

#: Fields a transition must not set through ``**updates`` (it sets them itself, or they
#: identify the record).
_PROTECTED_FIELDS: Final = frozenset({"upid", "state", "round", "version"})
_PROCESS_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Process))


def process_should_restart(
    process: Process, exit_state: str, is_system_restart: bool = False
) -> bool:
    """Whether a process that ended in ``exit_state`` is restarted.

    1. During a system restart, a truthy ``configuration["process"]
       ["omit_from_system_restart"]`` means no restart. A malformed configuration
       (``process`` not a dict, or no dict at all) is ignored and evaluation goes on.
    2. ``restart_mode`` ``None`` or ``ABNORMAL``: restart unless ``exit_state`` is
       ``800-EXITED`` (TERMINATED, TERMINATING and FAILED count as abnormal).
    3. ``ALWAYS``: restart whatever the exit state.
    4. ``NEVER`` (and any other value, as legacy): do not restart.

    Args:
        process: the process record.
        exit_state: the state the process ended in (the reported state for heartbeat
            deaths, ``850-FAILED`` for evacuations, ``700-TERMINATED`` at system boot).
        is_system_restart: the dispatcher is restarting the whole system (doctor).

    Returns:
        True if the process should go to a new round.
    """
    if is_system_restart:
        configuration = process.configuration
        section = configuration.get("process") if isinstance(configuration, dict) else None
        if isinstance(section, dict) and section.get("omit_from_system_restart"):
            return False
    mode = process.restart_mode
    if mode is None or mode == RestartMode.ABNORMAL:
        return exit_state != ProcessState.EXITED
    return mode == RestartMode.ALWAYS


def get_queueing_decision(queueing_mode: str | None, starts: int) -> str:
    """The state of a process that cannot be placed now.

    Consulted by the matchmaker when no slot matches, or when a restart is
    throttled. ``starts`` counts the process's transitions into RUNNING.

    ========================  ============  ===========
    mode                      starts == 0   starts > 0
    ========================  ============  ===========
    ``NEVER``                 REJECTED      REJECTED
    ``ALWAYS``                WAITING       WAITING
    ``START_ONLY``            WAITING       REJECTED
    ``RESTART_ONLY``          REJECTED      WAITING
    ``None`` (or unknown)     WAITING       WAITING
    ========================  ============  ===========

    Args:
        queueing_mode: the process's ``queueing_mode``.
        starts: the process's ``starts`` counter.

    Returns:
        ``"300-WAITING"`` or ``"900-REJECTED"``.
    """
    started = starts > 0
    if queueing_mode == QueueingMode.NEVER:
        may_wait = False
    elif queueing_mode == QueueingMode.START_ONLY:
        may_wait = not started
    elif queueing_mode == QueueingMode.RESTART_ONLY:
        may_wait = started
    else:  # ALWAYS, None; unknown values cannot be stored (requests reject them)
        may_wait = True
    return ProcessState.WAITING if may_wait else ProcessState.REJECTED


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """A placement the matchmaker decided: ``process`` goes to ``resource_id``.

    Attributes:
        process: the record as the matchmaker read it (not modified).
        resource_id: the eeagent the process is assigned to.
        hostname: the agent's ``hostname`` property, or None.
        at: the dispatch time, epoch seconds (appended to ``dispatch_times``).
    """

    process: Process
    resource_id: str
    hostname: str | None
    at: float


class ProcessStateMachine:
    """The one writer of process states: guarded, notifying writes of process records.

    Build one per dispatcher (per store) and pass it to every component that
    changes a process's ``state``, ``round`` or ``assigned``.

    Args:
        store: where processes and the queue live.
        messenger: sends subscriber notifications.
        clock: returns the current time in epoch seconds (for ``start_times``).
        events: where every written state change is recorded (default: an
            unbuffered :class:`~dispatcher.events.EventLog` over ``store``).
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        *,
        clock: Callable[[], float] = time.time,
        events: EventLog | None = None,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.clock = clock
        self.events = events if events is not None else EventLog(store, clock=clock)
        self._writer = batch_writer(store)

    def record(self, process: Process, **note: Any) -> None:
        """Record ``process``'s state (just written) in its event history.

        Args:
            process: the record as written.
            **note: the event's other keys (``reason``, ``agent``, ``node``,
                ``exit_code``, ``signal``, ``output``).
        """
        self.events.record(process, **note)

    # -- new records ------------------------------------------------------------------

    @staticmethod
    def new_process(
        upid: str,
        definition: dict[str, Any],
        *,
        requested: bool = False,
        **fields: Any,
    ) -> Process:
        """A new process record at round 0, not yet stored.

        Args:
            upid: the process's id.
            definition: the copy of its definition (``Definition.to_dict()``).
            requested: ``200-REQUESTED`` (``schedule_process`` of an unknown upid)
                rather than ``100-UNSCHEDULED`` (``create_process``).
            **fields: other fields (``name``, ``configuration`` ...).

        Raises:
            TypeError: ``fields`` names an unknown or protected field, or
                ``assigned``.
        """
        _check_update_fields(fields)
        if "assigned" in fields:
            raise TypeError("a new process is not assigned")
        state = ProcessState.REQUESTED if requested else ProcessState.UNSCHEDULED
        return Process(upid=upid, definition=definition, state=state, **fields)

    # -- notifications ----------------------------------------------------------------

    def notify_process(self, process: Process) -> None:
        """Tell each subscriber of ``process`` its state just written.

        Fires ``(name, operation, process={"upid", "round", "state", "assigned"})``
        for each ``[name, operation]`` pair; nothing when there are no subscribers.
        Call it only after the write it reports succeeded. A pair that is not a
        two-element sequence is skipped. Delivery failures are logged, not raised:
        the state change is already committed and notifications are never retried.

        Args:
            process: the record as written.
        """
        if not process.subscribers:
            return
        payload = process.summary()
        for subscriber in process.subscribers:
            if not isinstance(subscriber, list | tuple) or len(subscriber) != 2:
                log.warning(
                    "process %s: ignoring malformed subscriber %r", process.upid, subscriber
                )
                continue
            name, operation = subscriber
            try:
                self.messenger.fire(str(name), str(operation), process=dict(payload))
            except TransportError as exc:
                log.warning(
                    "process %s: could not notify subscriber %s/%s of %s: %s",
                    process.upid,
                    name,
                    operation,
                    process.state,
                    exc,
                )

    # -- guarded transitions ----------------------------------------------------------

    def process_change_state(
        self,
        process: Process,
        new_state: str,
        *,
        note: dict[str, Any] | None = None,
        **updates: Any,
    ) -> tuple[Process, bool]:
        """Move a process forward to ``new_state`` unless it has moved on meanwhile.

        The write happens only while the stored state is lower than ``new_state`` and
        the round is still ``process.round``; on a write conflict the record is
        re-read and the guard re-checked. Entering ``500-RUNNING`` increments
        ``starts`` and appends the clock's time to ``start_times``. Subscribers are
        notified only when the write happened.

        Args:
            process: the record as last read (not modified).
            new_state: the target state.
            note: the event's other keys (see :meth:`record`); its ``reason``
                defaults to the ``reason`` in ``updates``.
            **updates: other fields to set in the same write (e.g. ``assigned=None``).

        Raises:
            TypeError: ``updates`` names an unknown or protected field.
            NotFoundError: the process record disappeared during the write.
            WriteRetriesExhaustedError: every write attempt lost its race (nothing
                written; the caller's next pass or heartbeat decides again).

        Returns:
            ``(record, written)``: the record as written, or as last read when the
            guard stopped the write, and whether the write happened.
        """
        _check_update_fields(updates)
        expected_round = process.round
        current = process.copy()

        def attempt() -> tuple[Process, bool]:
            nonlocal current
            if not (current.state < new_state and current.round == expected_round):
                return current, False
            candidate = current.copy()
            candidate.state = new_state
            for key, value in updates.items():
                setattr(candidate, key, tree_copy(value))
            if new_state == ProcessState.RUNNING:
                now = self.clock()
                candidate.starts += 1
                candidate.start_times.append(now)
                candidate.started_at = now
                candidate.next_restart_at = None
            try:
                self.store.update_process(candidate)
            except WriteConflictError:
                fresh = self.store.get_process(process.upid)
                if fresh is None:
                    return current, False
                current = fresh
                raise  # the next attempt re-checks the guard on the fresh record
            details = dict(note or {})
            details.setdefault("reason", updates.get("reason"))
            details.setdefault("agent", current.assigned)
            self.record(candidate, **details)
            self.notify_process(candidate)
            return candidate, True

        return retry_conflicts(f"process {process.upid!r}", attempt)

    def process_next_round(
        self,
        process: Process,
        newstate: str = ProcessState.DIED_REQUESTED,
        enqueue: bool = True,
        *,
        note: dict[str, Any] | None = None,
        ended: str | None = None,
        restart_reason: str | None = None,
        **updates: Any,
    ) -> tuple[Process, bool]:
        """Send a dead process round again: ``round += 1``, unassigned, re-queued.

        Applied only while the stored state is lower than ``600-TERMINATING`` and the
        round is still ``process.round`` (re-read on write conflict). On success the
        entry ``(upid, new round)`` is appended to the queue tail (unless
        ``enqueue`` is False: the doctor's system-boot path) and subscribers are
        notified.

        Args:
            process: the record as last read (not modified).
            newstate: ``250-DIED_REQUESTED``, or ``150-UNSCHEDULED_PENDING`` at
                system boot.
            enqueue: whether to queue the new round for the matchmaker.
            note: the event's other keys (see :meth:`record`).
            ended: the state the old round ended in: recorded as its own event
                (with ``note``) before the new round's (with ``restart_reason``).
            restart_reason: the new round's event reason when ``ended`` is given.
            **updates: other fields to set in the same write (``restarts``,
                ``next_restart_at`` ...).

        Raises:
            TypeError: ``updates`` names an unknown or protected field.
            NotFoundError: the process record disappeared during the write.
            WriteRetriesExhaustedError: every write attempt lost its race (nothing
                written; the caller's next pass or heartbeat decides again).

        Returns:
            ``(record, written)`` as for :meth:`process_change_state`.
        """
        _check_update_fields(updates)
        expected_round = process.round
        current = process.copy()

        def attempt() -> tuple[Process, bool]:
            nonlocal current
            if not (current.state < ProcessState.TERMINATING and current.round == expected_round):
                return current, False
            candidate = current.copy()
            candidate.state = newstate
            candidate.assigned = None
            candidate.round = expected_round + 1
            for key, value in updates.items():
                setattr(candidate, key, tree_copy(value))
            try:
                self.store.update_process(candidate)
            except WriteConflictError:
                fresh = self.store.get_process(process.upid)
                if fresh is None:
                    return current, False
                current = fresh
                raise  # the next attempt re-checks the guard on the fresh record
            if enqueue:
                self.store.enqueue(candidate.upid, candidate.round)
            details = dict(note or {})
            details.setdefault("agent", current.assigned)
            if ended is not None:
                # the end of the old round, then the new round (without the output)
                gone = current.copy()
                gone.state = ended
                self.record(gone, **details)
                details = {"reason": restart_reason}
            self.record(candidate, **details)
            self.notify_process(candidate)
            return candidate, True

        return retry_conflicts(f"process {process.upid!r}", attempt)

    # -- single attempts (the caller re-reads and re-decides on a conflict) -------------

    def reschedule(
        self, process: Process, updates: dict[str, Any], *, reason: str | None = None
    ) -> Process:
        """Request an ended process again (``schedule_process``): ``200-REQUESTED``.

        ``100-UNSCHEDULED`` keeps its round; any other terminal state goes to
        ``round + 1``. Not notified (legacy).

        Args:
            process: the record as last read, in a terminal state (not modified).
            updates: the request's fields (``configuration``, ``subscribers`` ...),
                set as given.
            reason: recorded with the event (e.g. a changed definition).

        Raises:
            TypeError: ``updates`` names an unknown or protected field.
            WriteConflictError: the record changed since it was read.
            NotFoundError: the record disappeared.

        Returns:
            The record as written.
        """
        _check_update_fields(updates)
        candidate = process.copy()
        if candidate.state != ProcessState.UNSCHEDULED:
            candidate.round += 1
        candidate.state = ProcessState.REQUESTED
        candidate.next_restart_at = None
        candidate.failure_times = []
        for key, value in updates.items():
            setattr(candidate, key, value)
        self.store.update_process(candidate)
        self.record(candidate, reason=reason)
        return candidate

    def restart_in_place(self, process: Process) -> Process:
        """``restart_process`` (decision 4): ``400-PENDING`` at ``round + 1``, still assigned.

        Not notified (legacy). The caller moves the agent's slot to the new round
        (:meth:`move_assignment`) and tells the agent.

        Args:
            process: the RUNNING record as last read (not modified).

        Raises:
            WriteConflictError: the record changed since it was read.
            NotFoundError: the record disappeared.

        Returns:
            The record as written.
        """
        candidate = process.copy()
        candidate.state = ProcessState.PENDING
        candidate.round += 1
        self.store.update_process(candidate)
        self.record(candidate, reason="restarted by restart_process")
        return candidate

    def terminate(self, process: Process, reason: str | None = None) -> Process:
        """End ``process`` as ``terminate_process`` does, without telling its agent.

        Terminal: returned unchanged. On no agent: ``700-TERMINATED`` at once and its
        queue entries of the round removed (:meth:`terminate_unassigned`). Assigned
        below TERMINATING: ``600-TERMINATING`` (:meth:`begin_terminating`). Already
        TERMINATING: unchanged. The caller tells the agent of an assigned result.

        Args:
            process: the record as last read (not modified).
            reason: the reason written (default: the ``terminate_process`` ones).

        Raises:
            WriteConflictError: the record changed since it was read.
            NotFoundError: the record disappeared.
        """
        if process.state in ProcessState.TERMINAL_STATES:
            return process
        if process.assigned is None:
            ended = (
                self.terminate_unassigned(process)
                if reason is None
                else self.terminate_unassigned(process, reason)
            )
            self.dequeue_all(ended.upid, ended.round)
            return ended
        if process.state < ProcessState.TERMINATING:
            if reason is None:
                return self.begin_terminating(process)
            return self.begin_terminating(process, reason)
        return process

    def terminate_unassigned(
        self, process: Process, reason: str = "terminated by terminate_process"
    ) -> Process:
        """``terminate_process`` of a process on no agent: ``700-TERMINATED`` at once.

        Subscribers are notified after the write.

        Args:
            process: the unassigned, non-terminal record as last read (not modified).

        Raises:
            WriteConflictError: the record changed since it was read (it may have
                been assigned meanwhile).
            NotFoundError: the record disappeared.

        Returns:
            The record as written.
        """
        candidate = process.copy()
        candidate.state = ProcessState.TERMINATED
        candidate.reason = reason
        candidate.ended_at = self.clock()
        candidate.next_restart_at = None
        self.store.update_process(candidate)
        self.record(candidate, reason=reason)
        self.notify_process(candidate)
        return candidate

    def begin_terminating(
        self, process: Process, reason: str = "stopped by the dispatcher (terminate_process)"
    ) -> Process:
        """``terminate_process`` of an assigned process: ``600-TERMINATING``.

        Subscribers are notified after the write; the agent's heartbeat brings the
        final state.

        Args:
            process: the assigned record below TERMINATING as last read (not
                modified).

        Raises:
            WriteConflictError: the record changed since it was read.
            NotFoundError: the record disappeared.

        Returns:
            The record as written.
        """
        candidate = process.copy()
        candidate.state = ProcessState.TERMINATING
        candidate.reason = reason
        self.store.update_process(candidate)
        self.record(candidate, reason=reason)
        self.notify_process(candidate)
        return candidate

    def assign(self, assignment: Assignment) -> Process:
        """Write one assignment (``350-ASSIGNED``); see :meth:`assign_many`.

        Not notified: the caller notifies once the launch is on its way.

        Raises:
            WriteConflictError: the record changed since it was read.
            NotFoundError: the record disappeared.

        Returns:
            The record as written.
        """
        candidate = _assigned(assignment)
        self.store.update_process(candidate)
        self.record(candidate)
        return candidate

    def assign_many(self, assignments: Sequence[Assignment]) -> list[tuple[Process, bool]]:
        """Write the assignments of one matchmaking pass in one batch.

        Each process becomes ``350-ASSIGNED`` on its resource, with its
        ``hostname``, ``dispatches + 1`` and the dispatch time appended. A record
        whose version changed since it was read is not written (the caller
        re-checks it and retries with :meth:`assign`). Not notified: the caller
        notifies once the launch is on its way.

        Args:
            assignments: the placements, each with the record as read.

        Returns:
            For each assignment, in order: the record as written (or as it would
            have been) and whether it was written.
        """
        if not assignments:
            return []
        candidates = [_assigned(assignment) for assignment in assignments]
        written = self._writer.update_many(candidates)
        for candidate, done in zip(candidates, written, strict=True):
            if done:
                self.record(candidate)
        return list(zip(candidates, written, strict=True))

    # -- resources ------------------------------------------------------------------

    def move_assignment(
        self, resource_id: str, old_key: tuple[str, int], new_key: tuple[str, int]
    ) -> None:
        """Move a process's slot on a resource from ``old_key`` to ``new_key``.

        Used when a process changes round in place (``restart_process``; docs/architecture.md,
        decision 4):
        ``old_key`` is removed if present (a heartbeat may already have pruned it as
        stale) and ``new_key`` added, so the slot stays reserved under the round the
        process now runs in. Retries on write conflict; a resource that disappeared
        (evacuated meanwhile) is left alone.

        Args:
            resource_id: the eeagent holding the process.
            old_key: ``(upid, old round)``.
            new_key: ``(upid, new round)``.
        """

        def move(resource: Resource) -> bool:
            assigned = [key for key in resource.assigned if key != old_key]
            if new_key not in assigned:
                assigned.append(new_key)
            if assigned == resource.assigned:
                return False
            resource.assigned = assigned
            return True

        modify(
            lambda: self.store.get_resource(resource_id),
            self.store.update_resource,
            move,
            record=f"resource {resource_id!r}",
        )

    # -- queue ------------------------------------------------------------------------

    def dequeue_all(self, upid: str, round_: int) -> int:
        """Remove every queue entry ``(upid, round_)`` (duplicates included).

        Args:
            upid: the process.
            round_: the round whose entries go.

        Returns:
            How many entries were removed.
        """
        removed = 0
        while True:
            try:
                self.store.remove_queued(upid, round_)
            except NotFoundError:
                return removed
            removed += 1


def _assigned(assignment: Assignment) -> Process:
    """The record of ``assignment.process`` once assigned (not written)."""
    candidate = assignment.process.copy()
    candidate.state = ProcessState.ASSIGNED
    candidate.assigned = assignment.resource_id
    candidate.hostname = assignment.hostname
    candidate.dispatches += 1
    candidate.dispatch_times.append(assignment.at)
    return candidate


def _check_update_fields(updates: dict[str, Any]) -> None:
    unknown = sorted(set(updates) - _PROCESS_FIELDS)
    if unknown:
        raise TypeError(f"unknown process field(s): {', '.join(unknown)}")
    protected = sorted(set(updates) & _PROTECTED_FIELDS)
    if protected:
        raise TypeError(f"a transition sets these itself: {', '.join(protected)}")
