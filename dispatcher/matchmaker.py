"""The matchmaker: queued processes onto free eeagent slots, and launches.

A leader singleton (docs/architecture.md, decision 8): every dispatcher instance builds one and the
instance holding leadership runs :meth:`Matchmaker.run` for its term.

A **pass** (:meth:`Matchmaker.matchmake`) reads the queue, the waiting processes,
the resources and the nodes, lets :func:`dispatcher.placement.plan` decide (a
pure function), then writes the decisions:

1. every resource that receives work is written once, with all its new
   assignments (optimistic versions: a resource changed meanwhile is not written,
   its processes stay queued and another pass follows at once);
2. ``node_exclusive`` tags are added to their nodes;
3. the assigned processes are written ``350-ASSIGNED`` (``assigned``,
   ``hostname``, ``dispatches``, ``dispatch_times``) and their subscribers told;
   a process that moved on meanwhile (e.g. it was terminated) has its slot and tag
   backed out and is not launched;
4. ``launch_process`` is fired to each agent, and the launch is tracked for
   retries (:class:`~dispatcher.launcher.DispatchRetries`);
5. entries that were placed, dropped or rejected leave the queue; processes with no
   slot become ``300-WAITING`` (or ``900-REJECTED``, by queueing mode).

A process left waiting for a slot is **stale**: it is not examined again until a
resource record changes (or an engine is added), because until then no slot can
appear for it. Throttled restarts (a process dispatched twice or more waits
``minimum_time_between_starts`` after its last dispatch) are re-examined when the
throttle ends.

A record that cannot be placed is **set aside** (:mod:`dispatcher.setaside`)
rather than allowed to stop placement for everyone: before planning, each
waiting process's JSON fields are checked against the request depth limit (a
database written before that limit existed may hold deeper values), and a record
whose planning, state write or launch raises anything but a store or transport
error is isolated the same way. A set-aside process is written ``850-FAILED``,
its slot freed, its queue entry removed, its reason logged and shown by ``dump``;
the pass goes on for every other process.

After a complete pass the engines' needs are computed
(:func:`dispatcher.needs.calculate_needs`) and handed to the
:class:`~dispatcher.needs.NeedRegistrar`, which tells the provisioner.

The leader also re-sends the terminates of processes that stay
``600-TERMINATING`` (:class:`~dispatcher.terminates.TerminateRetries`).

The loop sleeps until a store event (``queue``, ``resource``, ``engine``,
``state``), the next throttle expiry, the next launch or terminate retry, the end of a
need's scale-down grace (:meth:`~dispatcher.needs.NeedRegistrar.next_due`), or ``poll_interval``
(the safety net for writes made by other dispatcher instances, whose store events
this instance does not hear). Nothing is read while nothing changed: a poll that
finds the queue and the resources as they were does no pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from dashi.errors import NotFoundError, WriteRetriesExhaustedError
from dispatcher.culler import Culler
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import release_node_exclusive
from dispatcher.launcher import DispatchRetries, fire_launch
from dispatcher.messaging import Messenger
from dispatcher.model import Node, Process, Resource
from dispatcher.needs import NeedRegistrar, calculate_needs
from dispatcher.placement import (
    THROTTLE_KEY,
    Assign,
    Drop,
    Hold,
    Key,
    Plan,
    Wait,
    effective_constraints,
    effective_engine,
    plan,
)
from dispatcher.setaside import INFRASTRUCTURE_ERRORS, SetAside, describe_error, release_slot
from dispatcher.store.base import Store
from dispatcher.store.batch import batch_writer
from dispatcher.store.modify import modify, retry_conflicts
from dispatcher.terminates import TerminateRetries
from dispatcher.transitions import Assignment, ProcessStateMachine
from pdcommon.limits import DEFAULT_MAX_DEPTH
from pdcommon.states import ProcessDispatcherState, ProcessState

__all__ = ["Matchmaker", "PassResult"]

log = logging.getLogger(__name__)

#: The process states a queue entry can be waiting in (below ``400-PENDING``).
QUEUED_STATES: Final = (
    ProcessState.REQUESTED,
    ProcessState.DIED_REQUESTED,
    ProcessState.WAITING,
    ProcessState.ASSIGNED,
)
#: Seconds between looks for changes made by other dispatcher instances.
DEFAULT_POLL_INTERVAL: Final = 1.0
#: Seconds before retrying after an unexpected error (e.g. the database is down).
DEFAULT_ERROR_RETRY: Final = 2.0
#: Up to this many fresh entries, a pass reads their processes one by one.
_FEW_ENTRIES: Final = 32
#: Store event kinds that wake the matchmaker.
#: Seconds between looks at a pending boot initialisation before the first pass.
_INIT_POLL: Final = 0.25
_WAKING_KINDS: Final = frozenset({"queue", "resource", "engine", "state", "node"})


@dataclass
class PassResult:
    """What one matchmaking pass did (for logs, tests and benchmarks).

    Attributes:
        complete: every decision was written; False when a resource changed under
            the pass (another pass is due at once).
        assigned: ``(upid, round, resource_id)`` launched in this pass.
        waiting: ``(upid, round)`` left waiting (or rejected) for lack of a slot.
        dropped: stale queue entries removed.
        backed_out: assignments undone because the process moved on meanwhile.
        set_aside: processes failed because their record could not be placed.
    """

    complete: bool = True
    assigned: list[tuple[str, int, str]] = field(default_factory=list)
    waiting: list[Key] = field(default_factory=list)
    dropped: list[Key] = field(default_factory=list)
    backed_out: list[Key] = field(default_factory=list)
    set_aside: list[Key] = field(default_factory=list)


class Matchmaker:
    """Places queued processes and launches them (see the module docstring).

    Args:
        store: where processes, the queue, resources and nodes live.
        messenger: fires launches to agents and notifications to subscribers.
        engines: the engine registry (effective engines; ``add_engine`` extends it).
        run_type: the ``launch_type`` sent with every launch (``supd``).
        restart_throttling_config: the global throttling configuration
            (``minimum_time_between_starts``, seconds).
        dispatch_retry_seconds: re-send a launch this often while the process stays
            ``350-ASSIGNED``, and a terminate while it stays ``600-TERMINATING``
            (:mod:`dispatcher.terminates`); ``None`` or ``0`` disables retries.
        registrar: receives the engines' needs after each complete pass; ``None``
            when nothing is provisioned.
        transitions: the dispatcher's process state machine (writes every
            assignment and queueing decision).
        clock: returns the current time in epoch seconds.
        poll_interval: seconds between looks for other instances' writes.
        error_retry: seconds before retrying after an unexpected error.
        max_depth: a waiting process whose stored JSON nests deeper is set aside
            (the request limit, ``processdispatcher.limits.max_depth``).
        max_process_age: seconds any round may run (``processdispatcher.max_process_age``;
            :mod:`dispatcher.culler`), or ``None``.
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        engines: EngineRegistry,
        *,
        transitions: ProcessStateMachine,
        run_type: str = "supd",
        restart_throttling_config: dict[str, Any] | None = None,
        dispatch_retry_seconds: float | None = None,
        registrar: NeedRegistrar | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        error_retry: float = DEFAULT_ERROR_RETRY,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_process_age: float | None = None,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.engines = engines
        self.run_type = run_type
        self.throttle = (restart_throttling_config or {}).get(THROTTLE_KEY)
        self.retries = DispatchRetries(dispatch_retry_seconds)
        self.terminates = TerminateRetries(store, messenger, dispatch_retry_seconds)
        self.culler = Culler(
            store, messenger, transitions, max_process_age=max_process_age, clock=clock
        )
        self.registrar = registrar
        self.clock = clock
        self.poll_interval = poll_interval
        self.error_retry = error_retry
        self.max_depth = max_depth
        self.transitions = transitions
        self._writer = batch_writer(store)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._dirty = True
        self._stale: set[Key] = set()
        # Bumped whenever the stale set is cleared: a pass that started before a
        # slot appeared must not mark its entries stale afterwards.
        self._stale_generation = 0
        self._engine_of: dict[Key, str | None] = {}
        self._throttle_expiry: float | None = None
        self._fingerprint: Any = None
        self._passing: int | None = None  # the thread running a pass
        self._expected: Any = None  # the snapshot a pass expects to leave
        self.set_aside = SetAside(store, self.transitions, clock=clock, max_depth=max_depth)
        store.add_listener(self._on_change)

    # -- state of a term ----------------------------------------------------------------

    def initialize(self) -> None:
        """Forget everything cached; called at the start of each leadership term.

        Launch retries are rebuilt lazily: the first pass re-sends the launch of every
        queued ``350-ASSIGNED`` process (a previous leader may have lost it).
        """
        with self._lock:
            self._dirty = True
            self._clear_stale()
            self._engine_of.clear()
            self._throttle_expiry = None
            self._fingerprint = None
            self.set_aside.clear()
            self.retries.clear()
            self.terminates.clear()
            self.culler.clear()
            if self.registrar is not None:
                self.registrar.reset()

    def wake(self) -> None:
        """Make :meth:`run` look again now."""
        self._wake.set()

    def _on_change(self, kind: str) -> None:
        # A pass's own writes cannot free a slot (a back-out marks the matchmaker
        # dirty itself), so they neither wake it nor clear the stale set.
        if kind in _WAKING_KINDS and self._passing != threading.get_ident():
            if kind in ("resource", "engine", "node"):
                with self._lock:
                    self._clear_stale()  # a slot may have appeared for a waiting process
            self._dirty = True
            self._wake.set()

    def _clear_stale(self) -> None:
        """Make every waiting entry fresh again (the caller holds ``_lock``)."""
        self._stale.clear()
        self._stale_generation += 1

    # -- one pass -----------------------------------------------------------------------

    def matchmake(self) -> PassResult:
        """Run one matchmaking pass (see the module docstring)."""
        self._passing = threading.get_ident()
        try:
            return self._matchmake()
        finally:
            self._passing = None

    def _matchmake(self) -> PassResult:
        self._dirty = False
        self.engines.merge_stored(self.store.list_engines())
        entries = self.store.list_queued()
        now = self.clock()
        with self._lock:
            if self._throttle_expiry is not None and self._throttle_expiry <= now:
                self._throttle_expiry = None
            fresh = [key for key in entries if key not in self._stale]
            generation = self._stale_generation
        result = PassResult()
        processes = self._waiting_processes(fresh)
        self.set_aside.screen(processes, result.set_aside)
        resources = self.store.list_resources()
        nodes = {node.node_id: node for node in self.store.list_nodes()}
        decided = self._plan(fresh, processes, resources, nodes, now, result)
        queued_keys = set(entries)
        self._engine_of = {k: e for k, e in self._engine_of.items() if k in queued_keys}
        self._engine_of.update(decided.engines)
        by_id = {resource.resource_id: resource for resource in resources}
        assigns = [d for d in decided.decisions if isinstance(d, Assign)]
        placed = self._write_assignments(assigns, processes, by_id, nodes, now, result)
        leaving: list[Key] = list(placed)
        stale: list[Key] = []
        for decision in decided.decisions:
            key = (decision.upid, decision.round)
            if isinstance(decision, Drop):
                leaving.append(key)
                result.dropped.append(key)
                self.retries.forget(key)
                continue
            try:
                if isinstance(decision, Hold):
                    self._hold(processes[decision.upid], now)
                elif isinstance(decision, Wait):
                    if self._mark_waiting(processes[decision.upid], decision.state):
                        leaving.append(key)
                    result.waiting.append(key)
                    if decision.throttled_until is None:
                        stale.append(key)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                self._fail(
                    processes[decision.upid], f"update failed: {describe_error(exc)}", result
                )
                leaving.append(key)
        if leaving:
            # every duplicate of a placed, dropped or rejected entry goes too
            counts = Counter(entries)
            self._writer.remove_queued_many([k for k in set(leaving) for _ in range(counts[k])])
        with self._lock:
            if self._stale_generation == generation:
                self._stale.update(stale)
            if decided.throttle_expiry is not None and (
                self._throttle_expiry is None or decided.throttle_expiry < self._throttle_expiry
            ):
                self._throttle_expiry = decided.throttle_expiry
        if not result.complete:
            self._dirty = True
        elif self.registrar is not None:
            self._register_needs(entries, leaving, by_id, nodes)
        # What the store holds now if nobody else wrote meanwhile (see run_once).
        gone = set(leaving)
        self._expected = _fingerprint(
            [key for key in entries if key not in gone], list(by_id.values())
        )
        if result.assigned or result.dropped or result.backed_out or result.set_aside:
            log.debug(
                "matchmaking pass: %d assigned, %d waiting, %d dropped, %d backed out, "
                "%d set aside",
                len(result.assigned),
                len(result.waiting),
                len(result.dropped),
                len(result.backed_out),
                len(result.set_aside),
            )
        return result

    # -- records that cannot be placed ------------------------------------------------

    def _plan(
        self,
        fresh: list[Key],
        processes: dict[str, Process],
        resources: list[Resource],
        nodes: dict[str, Node],
        now: float,
        result: PassResult,
    ) -> Plan:
        """:func:`plan`; when it fails, the records it fails on are set aside first."""

        def decide(keys: list[Key], records: dict[str, Process]) -> Plan:
            return plan(
                keys, records, resources, nodes, self.engines, now=now, throttle=self.throttle
            )

        try:
            return decide(fresh, processes)
        except Exception:
            culprits: dict[str, Exception] = {}
            for upid, process in processes.items():
                try:
                    decide([(upid, process.round)], {upid: process})
                except Exception as error:
                    culprits[upid] = error
            if not culprits:
                raise
        for upid, failure in culprits.items():
            self._fail(processes.pop(upid), f"placement failed: {describe_error(failure)}", result)
        return decide(fresh, processes)

    def _fail(self, process: Process, reason: str, result: PassResult) -> None:
        """Set ``process`` aside (see :class:`~dispatcher.setaside.SetAside`)."""
        self.retries.forget((process.upid, process.round))
        self.set_aside.fail(process, reason, result.set_aside)

    def _waiting_processes(self, entries: list[Key]) -> dict[str, Process]:
        """The records of the processes of ``entries`` that wait in the queue.

        A few entries (the usual pass, after one new request) are read one by one;
        many (a first pass, a burst) in one listing of the queued states.
        """
        upids = {upid for upid, _ in entries}
        if len(upids) > _FEW_ENTRIES:
            return {p.upid: p for p in self.store.list_processes(QUEUED_STATES)}
        found = {}
        for upid in upids:
            process = self.store.get_process(upid)
            if process is not None and process.state in QUEUED_STATES:
                found[upid] = process
        return found

    def _write_assignments(
        self,
        assigns: list[Assign],
        processes: dict[str, Process],
        resources: dict[str, Resource],
        nodes: dict[str, Node],
        now: float,
        result: PassResult,
    ) -> list[Key]:
        """Write the slots, tags and processes of ``assigns``, then launch.

        Returns:
            The queue entries of the processes now ``ASSIGNED``.
        """
        if not assigns:
            return []
        # 1. resources: one write per resource, with all its new assignments
        touched: dict[str, Resource] = {}
        for decision in assigns:
            if decision.recovered:
                continue
            resource = touched.get(decision.resource_id)
            if resource is None:
                resource = _copy_resource(resources[decision.resource_id])
                touched[decision.resource_id] = resource
            resource.assigned.append((decision.upid, decision.round))
        records = list(touched.values())
        written = self._writer.update_many(records) if records else []
        failed = {r.resource_id for r, ok in zip(records, written, strict=True) if not ok}
        for record, ok in zip(records, written, strict=True):
            if ok:
                resources[record.resource_id] = record
        if failed:
            result.complete = False
            log.info("matchmaking: eeagent(s) %s changed during the pass", ", ".join(failed))
        kept = [d for d in assigns if d.recovered or d.resource_id not in failed]
        # 2. node_exclusive tags
        for decision in kept:
            tag = processes[decision.upid].node_exclusive
            if tag is not None:
                self._add_tag(decision.node_id, str(tag), nodes)
        # 3. processes
        outcomes = self.transitions.assign_many(
            [
                Assignment(
                    processes[decision.upid],
                    decision.resource_id,
                    (resources[decision.resource_id].properties or {}).get("hostname"),
                    now,
                )
                for decision in kept
            ]
        )
        placed: list[Key] = []
        for decision, (candidate, ok) in zip(kept, outcomes, strict=True):
            key = (decision.upid, decision.round)
            if not ok:
                retried = self._retry_assign(candidate)
                if retried is None:
                    self._back_out(decision, processes[decision.upid].node_exclusive)
                    result.backed_out.append(key)
                    continue
                candidate = retried
            processes[decision.upid] = candidate
            try:
                self.transitions.notify_process(candidate)
                # 4. launch
                fire_launch(self.messenger, candidate, decision.resource_id, self.run_type)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                self._fail(candidate, f"launch failed: {describe_error(exc)}", result)
                placed.append(key)  # FAILED now: its entry leaves the queue
                continue
            self.retries.track(key, self.clock())
            placed.append(key)
            result.assigned.append((decision.upid, decision.round, decision.resource_id))
        return placed

    def _retry_assign(self, candidate: Process) -> Process | None:
        """Write an assignment whose batched write lost a race, if still valid.

        None when the process moved on, or kept changing for every attempt: the
        assignment is then backed out and its queue entry planned again next pass.
        """

        def attempt() -> Process | None:
            fresh = self.store.get_process(candidate.upid)
            if (
                fresh is None
                or fresh.round != candidate.round
                or fresh.state >= ProcessState.ASSIGNED
                or fresh.state < ProcessState.REQUESTED
            ):
                return None
            assignment = Assignment(
                fresh, str(candidate.assigned), candidate.hostname, candidate.dispatch_times[-1]
            )
            try:
                retry = self.transitions.assign(assignment)
            except NotFoundError:
                return None
            return retry

        try:
            return retry_conflicts(f"process {candidate.upid!r}", attempt)
        except WriteRetriesExhaustedError as exc:
            log.warning("%s: backed out, planned again next pass", exc)
            return None

    def _add_tag(self, node_id: str, tag: str, nodes: dict[str, Node]) -> None:
        def add(node: Node) -> bool:
            if tag in node.node_exclusive:
                return False
            node.node_exclusive.append(tag)
            return True

        written = modify(
            lambda: self.store.get_node(node_id),
            self.store.update_node,
            add,
            record=f"node {node_id!r}",
        )
        if written is not None:
            nodes[node_id] = written

    def _back_out(self, decision: Assign, tag: str | None) -> None:
        """Undo the slot (and tag) of an assignment whose process moved on."""
        key = (decision.upid, decision.round)
        release_slot(self.store, decision.resource_id, key)
        if tag is not None:
            release_node_exclusive(self.store, decision.node_id, [tag])
        self._dirty = True  # the freed slot may suit a waiting process
        with self._lock:
            self._clear_stale()
        log.info("process %s round %d moved on during matchmaking: backed out", *key)

    def _hold(self, process: Process, now: float) -> None:
        """An ASSIGNED process still queued: make sure its launch is retried."""
        key = (process.upid, process.round)
        if self.retries.enabled and key not in self.retries and process.assigned:
            fire_launch(self.messenger, process, process.assigned, self.run_type)
            self.retries.track(key, now)

    def _mark_waiting(self, process: Process, state: str) -> bool:
        """Write WAITING or REJECTED; True when the entry must leave the queue."""
        if process.state != state:
            self.transitions.process_change_state(process, state)
        return state == ProcessState.REJECTED

    def _register_needs(
        self,
        entries: Iterable[Key],
        leaving: list[Key],
        resources: dict[str, Resource],
        nodes: dict[str, Node],
    ) -> None:
        assert self.registrar is not None
        gone = set(leaving)  # placed ones count through their resource
        queued = [(key[0], self._engine_of.get(key)) for key in entries if key not in gone]
        boot_pending: list[tuple[str, str | None]] = []
        if self.store.get_pd_state() == ProcessDispatcherState.SYSTEM_BOOTING:
            for process in self.store.list_processes([ProcessState.UNSCHEDULED_PENDING]):
                constraints = effective_constraints(self.engines, process)
                boot_pending.append((process.upid, effective_engine(constraints)))
        needs = calculate_needs(
            self.engines,
            queued=queued,
            resources=list(resources.values()),
            boot_pending=boot_pending,
        )
        self.registrar.report(needs, resources, nodes)

    # -- launch retries -----------------------------------------------------------------

    def retry_launches(self) -> int:
        """Re-send the launches that are due; returns how many were sent."""
        sent = 0
        now = self.clock()
        for key in self.retries.pop_due(now):
            process = self.store.get_process(key[0])
            if (
                process is None
                or process.round != key[1]
                or process.state != ProcessState.ASSIGNED
                or not process.assigned
            ):
                continue
            log.info("re-sending the launch of %s round %d to %s", *key, process.assigned)
            try:
                fire_launch(self.messenger, process, process.assigned, self.run_type)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                self._fail(process, f"launch failed: {describe_error(exc)}", PassResult())
                continue
            self.retries.track(key, now)
            sent += 1
        return sent

    # -- the loop -----------------------------------------------------------------------

    def _snapshot(self) -> Any:
        """What placement depends on, in short: the queue and the resources' slots."""
        return _fingerprint(self.store.list_queued(), self.store.list_resources())

    def next_deadline(self) -> float:
        """Epoch seconds of the next timed event (throttle expiry, retry, poll)."""
        deadline = self.clock() + self.poll_interval
        held = self.registrar.next_due() if self.registrar is not None else None
        for due in (
            self._throttle_expiry,
            self.retries.next_due(),
            self.terminates.next_due(),
            self.culler.next_due(),
            held,
        ):
            if due is not None:
                deadline = min(deadline, due)
        return deadline

    def run_once(self, look: bool = True) -> PassResult | None:
        """One loop step: a pass if anything changed, then the launch and terminate retries due.

        Changes this instance made are known from store events. Changes made by
        other instances are found by a look: the queue and the resources compared
        with what the last pass left (:meth:`_snapshot`).

        Args:
            look: take that look now (the loop does so once per ``poll_interval``).
        """
        result = None
        if look:
            snapshot = self._snapshot()
            if snapshot != self._fingerprint:
                if self._fingerprint is not None and snapshot[1] != self._fingerprint[1]:
                    with self._lock:
                        self._clear_stale()  # another instance changed a resource
                self._dirty = True
            self._fingerprint = snapshot
        now = self.clock()
        expired = self._throttle_expiry is not None and self._throttle_expiry <= now
        # a held need may drop (its scale-down grace ended): report it
        held = self.registrar.next_due() if self.registrar is not None else None
        expired = expired or (held is not None and held <= now)
        if self._dirty or expired:
            result = self.matchmake()
            # what the pass left, if nobody else wrote: the next look tells
            self._fingerprint = self._expected if result.complete else None
        self.retry_launches()
        self.terminates.run(self.clock())
        self.culler.run(self.clock())
        return result

    def run(self, stop_event: threading.Event) -> None:
        """Act as the matchmaker until ``stop_event`` is set (one leadership term).

        Errors are logged and retried after ``error_retry`` seconds; they never end
        the loop.
        """
        self.initialize()
        last_look = -float("inf")
        initialising = True
        while not stop_event.is_set():
            self._wake.clear()
            try:
                if initialising:
                    # A system boot begun offline: the doctor takes every process
                    # back first (dispatcher.doctor); placing now would be undone.
                    initialising = self.store.is_boot_init_pending()
                    if initialising:
                        _wait_either(self._wake, stop_event, _INIT_POLL)
                        continue
                look = time.monotonic() - last_look >= self.poll_interval
                if look:
                    last_look = time.monotonic()
                self.run_once(look)
                delay = max(0.0, self.next_deadline() - self.clock())
                if self._dirty:
                    delay = 0.0
            except Exception:
                log.exception("matchmaker: pass failed; retrying in %g s", self.error_retry)
                self._dirty = True
                delay = self.error_retry
            if delay > 0:
                _wait_either(self._wake, stop_event, delay)


def _wait_either(wake: threading.Event, stop: threading.Event, delay: float) -> None:
    """Sleep up to ``delay`` seconds, until ``wake`` or ``stop`` is set."""
    deadline = time.monotonic() + delay
    while not stop.is_set() and not wake.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        wake.wait(min(remaining, 0.25))


def _fingerprint(queue: Iterable[Key], resources: Iterable[Resource]) -> Any:
    """A comparable summary of the queue (as a multiset) and the resources' slots."""
    return (
        tuple(sorted(queue)),
        tuple(sorted((r.resource_id, r.state, r.slot_count, tuple(r.assigned)) for r in resources)),
    )


def _copy_resource(resource: Resource) -> Resource:
    return Resource(
        resource_id=resource.resource_id,
        node_id=resource.node_id,
        slot_count=resource.slot_count,
        state=resource.state,
        properties=dict(resource.properties or {}),
        assigned=list(resource.assigned),
        last_heartbeat=resource.last_heartbeat,
        version=resource.version,
    )
