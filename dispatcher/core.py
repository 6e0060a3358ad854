"""The dispatcher core: the definition and process RPCs (docs/rpc.md).

:class:`ProcessDispatcherCore` has one handler per RPC operation, registered with
``@operation(<request model>)`` (:mod:`dashi.operations`): the model of
:mod:`dispatcher.requests` declares the operation's name, arguments and flags, and
the handler takes the validated model. Called with the legacy arguments instead
(positional or keyword, as on the wire), a handler validates them first, so a
rejected request writes nothing. Each returns a JSON-ready value: ``None``, a
"process dict" (``upid, state, round, assigned``), a full record, or a list.

The core is synchronous and stateless apart from the store: it runs on every RPC
worker thread at once. Concurrent writers are reconciled with the store's
optimistic versions: each operation re-reads and re-decides on
:class:`~dashi.errors.WriteConflictError`, up to
:data:`~dispatcher.store.modify.WRITE_ATTEMPTS` times
(:func:`~dispatcher.store.modify.retry_conflicts`), then gives up with
``BadRequestError("process X could not be updated")`` as legacy did.

Where this core deliberately differs from the legacy one:

* unknown ``queueing_mode``/``restart_mode`` values, ill-typed arguments and an
  invalid ``definition_id`` given to ``schedule_process`` are rejected up front;
* ``restart_process`` moves the agent's slot to the new round (the agent
  really restarts, and the slot accounting follows the new round;
  docs/architecture.md, decision 4);
* queue entries of a process that ``terminate_process`` ended are all removed
  (duplicates included), and a ``schedule_process`` that raced with a
  termination removes the entry it just added, so a terminated process is never
  left in the queue.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, TypeVar

from dashi.errors import (
    BadRequestError,
    NotFoundError,
    TransportError,
    WriteConflictError,
    WriteRetriesExhaustedError,
)
from dashi.gcpause import collector_paused
from dashi.jsontree import tree_copy
from dashi.operations import operation, operations_of
from dispatcher.culler import scheduled_max_runtime
from dispatcher.engine_status import DriverOf, engine_statuses, system_status
from dispatcher.engines import EngineRegistry
from dispatcher.messaging import Messenger
from dispatcher.model import Definition, Process
from dispatcher.requests import (
    CreateDefinitionRequest,
    CreateProcessRequest,
    DescribeDefinitionRequest,
    DescribeProcessesRequest,
    DescribeProcessEventsRequest,
    DescribeProcessRequest,
    DumpRequest,
    ListDefinitionsRequest,
    RemoveDefinitionRequest,
    RestartProcessRequest,
    ScheduleProcessRequest,
    SetGroupTtlRequest,
    SetSystemBootRequest,
    TerminateProcessesRequest,
    TerminateProcessRequest,
    UpdateDefinitionRequest,
)
from dispatcher.store.base import Store
from dispatcher.store.modify import retry_conflicts
from dispatcher.transitions import ProcessStateMachine
from pdcommon.limits import DEFAULT_LIMITS, RequestLimits
from pdcommon.requests import Request
from pdcommon.states import ProcessState

__all__ = ["RPC_OPERATIONS", "ProcessDispatcherCore"]

log = logging.getLogger(__name__)

_R = TypeVar("_R", bound=Request)
_T = TypeVar("_T")

_TERMINAL: Final = frozenset(ProcessState.TERMINAL_STATES)
#: Seconds ``schedule_process`` waits for a pending system-boot initialisation
#: (the doctor's, at the first start after ``pd-dispatcher system-boot begin``).
DEFAULT_BOOT_WAIT: Final = 5.0
#: Seconds between looks at the pending initialisation while waiting for it.
_BOOT_POLL: Final = 0.1


class ProcessDispatcherCore:
    """Definition and process RPCs over a store.

    Register its operations (:func:`~dashi.operations.operations_of`) as
    RPC handlers with the service's own annotation checking turned off: every
    handler validates its arguments itself and gives the legacy error messages.

    Args:
        store: where definitions, processes, the queue, resources and nodes live.
        messenger: sends eeagent commands.
        transitions: the dispatcher's process state machine (the one writer of
            process states), over the same store.
        limits: the depth and size limits of every argument (see
            :mod:`pdcommon.limits`).
        engines: the engines; with them ``schedule_process`` refuses a process
            whose engine is unknown, and ``dump`` shows each engine's status
            (``None``: neither, for unit tests of other behaviour).
        driver_of: the provisioner driver of an engine's site (shown in ``dump``).
        boot_wait: see :data:`DEFAULT_BOOT_WAIT`.
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        *,
        transitions: ProcessStateMachine,
        limits: RequestLimits = DEFAULT_LIMITS,
        engines: EngineRegistry | None = None,
        driver_of: DriverOf | None = None,
        boot_wait: float = DEFAULT_BOOT_WAIT,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.limits = limits
        self.transitions = transitions
        self.engines = engines
        self.driver_of = driver_of
        self.boot_wait = boot_wait
        # Once seen done, a boot initialisation cannot become pending again while
        # this dispatcher runs (``system-boot begin`` refuses while one leads).
        self._initialised = False

    def parse_request(self, model: type[_R], args: dict[str, Any]) -> _R:
        """Validate an operation's raw arguments within :attr:`limits`.

        Raises:
            BadRequestError: an argument is invalid (the message names it).
        """
        return model.parse(self.limits, **args)

    # -- definitions ------------------------------------------------------------------

    @operation(CreateDefinitionRequest)
    def create_definition(self, req: CreateDefinitionRequest) -> None:
        """Store a new process definition (not idempotent).

        Args (of ``req``):
            definition_id: the new definition's id.
            definition_type: the launch type it is meant for (``supd``, ``pyon`` ...).
            executable: what to run (for ``supd`` a dict such as
                ``{"exec": "/bin/sleep", "argv": ["5"]}``); any JSON value.
            name: a display name.
            description: free text.
            max_runtime_seconds: new, optional: the default ``max_runtime_seconds``
                of the processes scheduled with it (> 0, at most a year).

        Raises:
            BadRequestError: an argument is invalid.
            WriteConflictError: a definition with this id exists.
        """
        self.store.add_definition(_definition(req))

    @operation(DescribeDefinitionRequest)
    def describe_definition(self, req: DescribeDefinitionRequest) -> dict[str, Any] | None:
        """Return a definition record.

        Args (of ``req``):
            definition_id: the definition's id.

        Raises:
            BadRequestError: the id is invalid.

        Returns:
            ``{definition_id, definition_type, executable, name, description,
            version}`` (and ``max_runtime_seconds`` when it is set), or ``None``
            if there is no such definition.
        """
        definition = self.store.get_definition(req.definition_id)
        return None if definition is None else definition.to_dict()

    @operation(UpdateDefinitionRequest)
    def update_definition(self, req: UpdateDefinitionRequest) -> None:
        """Replace a definition wholesale (omitted ``name``/``description`` become None).

        Existing processes keep the copy of the definition taken at their creation;
        a new ``max_runtime_seconds`` applies to the rounds scheduled from now on.

        Args (of ``req``):
            definition_id: the definition's id.
            definition_type: as for :meth:`create_definition`.
            executable: as for :meth:`create_definition`.
            name: a display name.
            description: free text.
            max_runtime_seconds: as for :meth:`create_definition` (omitted: none).

        Raises:
            BadRequestError: an argument is invalid.
            NotFoundError: there is no such definition.
        """
        self.store.update_definition(_definition(req))

    @operation(RemoveDefinitionRequest)
    def remove_definition(self, req: RemoveDefinitionRequest) -> None:
        """Remove a definition; existing processes are unaffected.

        Args (of ``req``):
            definition_id: the definition's id.

        Raises:
            BadRequestError: the id is invalid.
            NotFoundError: there is no such definition.
        """
        self.store.remove_definition(req.definition_id)

    @operation(ListDefinitionsRequest)
    def list_definitions(self, req: ListDefinitionsRequest) -> list[str]:
        """Return the ids of every definition."""
        return self.store.list_definition_ids()

    # -- processes: create and schedule -----------------------------------------------

    @operation(CreateProcessRequest)
    def create_process(self, req: CreateProcessRequest) -> dict[str, Any]:
        """Create a process in ``100-UNSCHEDULED``, round 0 (idempotent; no notification).

        If the process exists (in any state) nothing is written and its current
        process dict is returned, provided the request matches it.

        Args (of ``req``):
            upid: the new process's id.
            definition_id: the definition it runs (copied into the process).
            name: a display name.

        Raises:
            BadRequestError: an argument is invalid; or the process exists with a
                different ``name`` (when one is given) or ``definition_id``.
            NotFoundError: there is no such definition.

        Returns:
            The process dict.
        """
        definition = self._get_definition(req.definition_id)
        process = self.transitions.new_process(
            req.upid,
            definition.to_dict(),
            name=req.name,
            max_runtime_seconds=definition.max_runtime_seconds,
        )
        try:
            self.store.add_process(process)
            self.transitions.record(process, reason="created")
            return process.summary()
        except WriteConflictError:
            existing = self.store.get_process(req.upid)
            if existing is None:  # pragma: no cover - processes are never removed
                raise
        _check_same_creation(existing, req.definition_id, req.name)
        return existing.summary()

    @operation(ScheduleProcessRequest)
    def schedule_process(self, req: ScheduleProcessRequest) -> dict[str, Any]:
        """Request that a process run; idempotent for in-play processes.

        The fields ``configuration, subscribers, constraints, queueing_mode,
        restart_mode, node_exclusive, name`` are written wholesale (``constraints``
        ``None`` becomes ``{}``; ``execution_engine_id`` becomes
        ``constraints["engine"]``):

        * unknown process: created (``definition_id`` required) in ``200-REQUESTED``,
          round 0;
        * ``100-UNSCHEDULED``: ``definition_id``, if given, must match; REQUESTED,
          same round;
        * any other terminal state: REQUESTED, ``round + 1``; a ``definition_id``
          other than the stored one replaces the process's definition (the new
          round runs it; its event says so);
        * in play (REQUESTED ... TERMINATING): nothing is written, but every field
          except ``name`` must equal the stored value, and so must
          ``definition_id`` when given.

        In every successful case ``(upid, round)`` is appended to the queue (a
        harmless nudge for an in-play process). Subscribers are not notified of
        REQUESTED.

        Without ``max_runtime_seconds`` a process takes its definition's default:
        the one the definition has now when it is created or rescheduled (recorded
        in the process's copy of its definition, so a later ``update_definition``
        does not change it), and the recorded one when an in-play process is
        scheduled again (so the repeat stays idempotent).

        Args (of ``req``):
            upid: the process's id.
            definition_id: the definition, required when the process is unknown.
            configuration: the process configuration (a JSON object).
            subscribers: ``[name, operation]`` pairs notified of state changes.
            constraints: resource properties the placement must match.
            queueing_mode: one of ``NEVER, ALWAYS, START_ONLY, RESTART_ONLY``.
            restart_mode: one of ``NEVER, ALWAYS, ABNORMAL``.
            execution_engine_id: the engine to run on (``constraints["engine"]``).
            node_exclusive: a tag at most one process per node may carry.
            name: a display name (ignored for an in-play process).
            restart_policy: new, optional: the process's own restart policy.
            max_runtime_seconds: new, optional: seconds a round may run (default:
                the definition's, see :func:`~dispatcher.culler.scheduled_max_runtime`).

        Raises:
            BadRequestError: an argument is invalid; a parameter differs from an
                in-play process's; ``definition_id`` differs from an unscheduled
                process's; the effective engine (explicit, mapped or default)
                is not configured or added (the message names the known
                engines); a system-boot initialisation did not end within
                ``boot_wait`` seconds; or the write kept conflicting.
            NotFoundError: the process is unknown and no ``definition_id`` is given,
                or the definition is unknown.

        Returns:
            The process dict.
        """
        self._wait_initialisation()
        created = self._try_create(req)
        if created is not None:
            return created.summary()
        process, queued = self._retrying(req.upid, lambda: self._try_schedule(req))
        if not queued:
            self._enqueue_scheduled(process)
        return process.summary()

    def _retrying(self, upid: str, attempt: Callable[[], _T]) -> _T:
        """Run an optimistic attempt on process ``upid`` until it does not conflict.

        Raises:
            BadRequestError: every attempt conflicted (the legacy error and message).
        """
        try:
            return retry_conflicts(f"process {upid!r}", attempt)
        except WriteRetriesExhaustedError as exc:
            raise BadRequestError(f"process {upid} could not be updated") from exc

    def _try_create(self, req: ScheduleProcessRequest) -> Process | None:
        """Create the process, queued, if it is new; None if it exists (or no definition).

        The common case, a new upid, in two store calls: read the definition, then
        add the process with its queue entry atomically (a terminate that sees the
        process sees its entry too, so nothing has to be re-read). An existing upid
        or an unknown definition leaves the decision to :meth:`_try_schedule`.
        """
        if req.definition_id is None:
            return None
        definition = self.store.get_definition(req.definition_id)
        if definition is None:
            return None  # an existing process needs no definition; else NotFound there
        process = self._requested(req, definition)
        self._check_engine(process)
        try:
            self.store.add_process_queued(process)
        except WriteConflictError:
            return None
        self.transitions.record(process, reason="scheduled")
        return process

    def _wait_initialisation(self) -> None:
        """Wait up to ``boot_wait`` seconds for a pending boot initialisation.

        Raises:
            BadRequestError: it is still pending.
        """
        if self._initialised:
            return
        deadline = time.monotonic() + self.boot_wait
        while self.store.is_boot_init_pending():
            if time.monotonic() >= deadline:
                raise BadRequestError(
                    "the dispatcher is initialising a system boot; try again shortly"
                )
            time.sleep(_BOOT_POLL)
        self._initialised = True

    def _check_engine(self, process: Process) -> None:
        """Refuse a process whose effective engine is unknown.

        Raises:
            BadRequestError: names the engine and the known ones.
        """
        if self.engines is None:
            return
        wanted = self._engines_of(process)
        if all(engine_id in self.engines for engine_id in wanted):
            return
        # maybe added on another dispatcher instance since this one last looked
        self.engines.merge_stored(self.store.list_engines())
        unknown = [engine_id for engine_id in wanted if engine_id not in self.engines]
        if unknown:
            raise BadRequestError(
                f"unknown execution engine {unknown[0]!r}; known engines: "
                + ", ".join(sorted(self.engines))
            )

    def _engines_of(self, process: Process) -> list[str]:
        """The engines a process may run on: explicit (one or a one-of list), mapped
        or default."""
        assert self.engines is not None
        explicit = (process.constraints or {}).get("engine")
        if explicit is None:
            chosen = self.engines.engine_for_process(None, process.definition)
            return [] if chosen is None else [chosen]
        if isinstance(explicit, list):
            return [str(engine_id) for engine_id in explicit]
        return [str(explicit)]

    def _try_schedule(self, req: ScheduleProcessRequest) -> tuple[Process, bool]:
        """One optimistic attempt of :meth:`schedule_process`.

        Raises:
            WriteConflictError: a write lost a race (the attempt is made again).

        Returns:
            The process as scheduled, and whether its queue entry is written already.
        """
        updates = req.updates()
        process = self.store.get_process(req.upid)
        if process is None:
            if req.definition_id is None:
                raise NotFoundError(f"process {req.upid} does not exist")
            process = self._requested(req, self._get_definition(req.definition_id))
            self._check_engine(process)
            self.store.add_process_queued(process)
            self.transitions.record(process, reason="scheduled")
            return process, True

        stored_id = process.definition.get("definition_id")
        changed = req.definition_id is not None and req.definition_id != stored_id
        if process.state in _TERMINAL:
            reason = None
            if changed and process.state == ProcessState.UNSCHEDULED:
                raise BadRequestError(
                    f"process {req.upid} exists with different definition_id '{stored_id}'"
                )
            if changed and req.definition_id is not None:
                updates["definition"] = self._get_definition(req.definition_id).to_dict()
                reason = f"definition changed from {stored_id} to {req.definition_id}"
            else:
                self._refresh_default_runtime(process, updates)
            updates["max_runtime_seconds"] = scheduled_max_runtime(
                req.max_runtime_seconds, updates.get("definition", process.definition)
            )
            self._check_engine(
                replace(
                    process,
                    constraints=updates["constraints"],
                    definition=updates.get("definition", process.definition),
                )
            )
            process = self.transitions.reschedule(process, updates, reason=reason)
            return process, False

        # In play: an idempotent repeat of the request that put it there (without
        # max_runtime_seconds, that request took the default recorded in the copy).
        updates["max_runtime_seconds"] = scheduled_max_runtime(
            req.max_runtime_seconds, process.definition
        )
        if changed:
            raise BadRequestError(
                f"process {req.upid} is {process.state} but definition_id parameter value "
                f"doesn't match request (it runs '{stored_id}')"
            )
        for key in ScheduleProcessRequest.UPDATE_FIELDS:
            if key != "name" and getattr(process, key) != updates[key]:
                raise BadRequestError(
                    f"process {req.upid} is {process.state} but {key} parameter value "
                    "doesn't match request"
                )
        return process, False

    def _refresh_default_runtime(self, process: Process, updates: dict[str, Any]) -> None:
        """Put the definition's current ``max_runtime_seconds`` default into the copy
        ``process`` is rescheduled with (``updates["definition"]``), if it changed.

        Only that key is refreshed: the rest of the copy stays as taken at the
        process's creation (legacy). A definition removed since leaves the copy as
        it is (its last known default).
        """
        definition_id = process.definition.get("definition_id")
        if not isinstance(definition_id, str):
            return
        current = self.store.get_definition(definition_id)
        if current is None:
            return
        if process.definition.get("max_runtime_seconds") == current.max_runtime_seconds:
            return
        copy = tree_copy(process.definition)
        copy.pop("max_runtime_seconds", None)
        if current.max_runtime_seconds is not None:
            copy["max_runtime_seconds"] = current.max_runtime_seconds
        updates["definition"] = copy

    def _enqueue_scheduled(self, process: Process) -> None:
        """Queue ``(upid, round)``; take it back if the process ended meanwhile.

        A concurrent ``terminate_process`` may end the process between our write and
        our enqueue, after it already cleared the queue; re-reading after the
        enqueue closes that window.
        """
        self.store.enqueue(process.upid, process.round)
        current = self.store.get_process(process.upid)
        if current is None or current.round != process.round or current.state in _TERMINAL:
            # NotFound: the terminating caller removed it already.
            with contextlib.suppress(NotFoundError):
                self.store.remove_queued(process.upid, process.round)

    # -- processes: describe ----------------------------------------------------------

    @operation(DescribeProcessRequest)
    def describe_process(self, req: DescribeProcessRequest) -> dict[str, Any] | None:
        """Return the full record of a process, or ``None`` if there is no such process.

        Args (of ``req``):
            upid: the process's id (a string; not checked against the identifier rule).

        Raises:
            BadRequestError: ``upid`` is not a string.
        """
        process = self.store.get_process(req.upid)
        return None if process is None else process.to_dict()

    @operation(DescribeProcessEventsRequest)
    def describe_process_events(self, req: DescribeProcessEventsRequest) -> list[dict[str, Any]]:
        """The last events of a process, oldest first (new operation).

        Each event: ``{id, upid, round, time, state, reason, agent, node, exit_code,
        signal, output}``; ``time`` in epoch seconds; ``output`` is ``{"stdout",
        "stderr"}`` (their last few KiB) on the event of a round that ended on an
        agent that sent them, else None.

        Args (of ``req``):
            upid: the process's id.
            limit: how many events at most (1 to 1000, default 20).

        Raises:
            BadRequestError: an argument is invalid.
            NotFoundError: there is no such process.
        """
        self._get_process(req.upid)
        return self.transitions.events.list(req.upid, req.limit)

    @operation(DescribeProcessesRequest)
    def describe_processes(self, req: DescribeProcessesRequest) -> list[dict[str, Any]]:
        """Return the full record of every process, or of those the filter selects.

        Args (of ``req``), all new and optional (see :mod:`dispatcher.selectors`):
            states: a list of states (``500-RUNNING`` or ``RUNNING``).
            engine: the engine the process asked for.
            group: the process's group.
            label_selector: a label selector (``app=web,tier!=db``).
            name_prefix: the start of the process's name.
            upid_prefix: the start of its upid.

        Raises:
            BadRequestError: an argument is invalid (a bad selector, an unknown state).
        """
        return self.store.list_process_dicts(req.process_filter())

    # -- processes: restart and terminate ---------------------------------------------

    @operation(RestartProcessRequest)
    def restart_process(self, req: RestartProcessRequest) -> dict[str, Any]:
        """Restart a RUNNING process in place under a new round (docs/architecture.md, decision 4).

        The process becomes ``400-PENDING`` with ``round + 1`` and keeps its
        assignment; its agent's slot is moved to the new round; then the agent is
        told ``restart_process(u_pid, round)``. Subscribers are not notified
        (legacy). A process that is not RUNNING is returned unchanged.

        Args (of ``req``):
            upid: the process's id.

        Raises:
            BadRequestError: ``upid`` is invalid, or the write kept conflicting.
            NotFoundError: there is no such process.
            TransportError: the agent could not be told (the new round is stored).

        Returns:
            The process dict.
        """

        def attempt() -> dict[str, Any]:
            process = self._get_process(req.upid)
            if process.state != ProcessState.RUNNING:
                log.warning(
                    "process %s is %s, not %s: not restarting",
                    req.upid,
                    process.state,
                    ProcessState.RUNNING,
                )
                return process.summary()
            old_key = (process.upid, process.round)
            restarted = self.transitions.restart_in_place(process)
            if restarted.assigned is None:  # RUNNING implies assigned; be defensive
                log.warning("process %s is RUNNING but not assigned: no agent to restart", req.upid)
                return restarted.summary()
            try:
                self.transitions.move_assignment(
                    restarted.assigned, old_key, (restarted.upid, restarted.round)
                )
            except WriteRetriesExhaustedError as exc:
                # The agent's heartbeats put its slot list right (see dispatcher.heartbeats).
                log.warning("restart of %s: %s; the agent's next heartbeat moves it", req.upid, exc)
            self.messenger.fire(
                restarted.assigned, "restart_process", u_pid=restarted.upid, round=restarted.round
            )
            return restarted.summary()

        return self._retrying(req.upid, attempt)

    @operation(TerminateProcessRequest)
    def terminate_process(self, req: TerminateProcessRequest) -> dict[str, Any]:
        """Terminate a process.

        * Terminal: returned unchanged; no message, no notification.
        * Not assigned to an agent: ``700-TERMINATED`` at once, subscribers notified,
          its queue entries for the current round removed.
        * Assigned: ``600-TERMINATING`` is stored (notified if it changed), then the
          agent is told ``terminate_process(u_pid, round)``; this is re-sent on
          every call, so repeating the call retries, and by the leader every
          ``dispatch_retry_seconds`` while the process stays TERMINATING
          (:mod:`dispatcher.terminates`). The agent's heartbeat brings the final
          state.

        Args (of ``req``):
            upid: the process's id.

        Raises:
            BadRequestError: ``upid`` is invalid, or the write kept conflicting.
            NotFoundError: there is no such process.
            TransportError: the agent could not be told (TERMINATING is stored).

        Returns:
            The process dict.
        """

        return self._terminate(req.upid)

    @operation(TerminateProcessesRequest)
    def terminate_processes(self, req: TerminateProcessesRequest) -> dict[str, Any]:
        """Terminate every process the filter selects (new operation).

        Each selected process is terminated as by ``terminate_process`` (one at a
        time, in creation order); those already ended are left as they are. A
        process that could not be updated (its write kept conflicting) is listed in
        ``failed`` and the others are still terminated. A terminate the agent could
        not be sent is re-sent by the leader, so that process counts as terminated.

        Args (of ``req``): the filter arguments of ``describe_processes``, and
            all: must be true to terminate every process (an empty filter).

        Raises:
            BadRequestError: an argument is invalid, or the filter is empty and
                ``all`` is not true (nothing is terminated).

        Returns:
            ``{"terminated": [upid, ...], "already_ended": [upid, ...],
            "failed": [upid, ...]}``: the processes this call ended or began
            terminating, those it found ended, and those it could not update.
        """
        selected = req.process_filter()
        if selected.empty and not req.all:
            raise BadRequestError(
                "terminate_processes needs a filter (states, engine, group, "
                "label_selector, name_prefix or upid_prefix), or all=true to "
                "terminate every process"
            )
        terminated: list[str] = []
        already_ended: list[str] = []
        failed: list[str] = []
        for record in self.store.list_process_dicts(selected):
            upid = record["upid"]
            if record["state"] in _TERMINAL:
                already_ended.append(upid)
                continue
            try:
                self._terminate(upid)
            except TransportError as exc:
                log.warning("terminate of %s: %s; the leader re-sends it", upid, exc)
            except (BadRequestError, NotFoundError) as exc:
                log.warning("terminate of %s failed: %s", upid, exc)
                failed.append(upid)
                continue
            terminated.append(upid)
        log.info(
            "terminate_processes: %d terminated, %d already ended, %d failed",
            len(terminated),
            len(already_ended),
            len(failed),
        )
        return {"terminated": terminated, "already_ended": already_ended, "failed": failed}

    def _terminate(self, upid: str) -> dict[str, Any]:
        """:meth:`terminate_process` of ``upid``, its one code path."""

        def attempt() -> dict[str, Any]:
            process = self._get_process(upid)
            # On a conflict, re-decide: it may have been assigned meanwhile.
            ended = self.transitions.terminate(process)
            if ended.state not in _TERMINAL and process.assigned is not None:
                self.messenger.fire(
                    process.assigned, "terminate_process", u_pid=ended.upid, round=ended.round
                )
            return ended.summary()

        return self._retrying(upid, attempt)

    @operation(SetGroupTtlRequest)
    def set_group_ttl(self, req: SetGroupTtlRequest) -> dict[str, Any]:
        """Give a group a time to live (new operation; see :mod:`dispatcher.culler`).

        ``ttl_seconds`` from now, every process of the group still in play is
        terminated with the reason ``group time to live exceeded`` and not restarted,
        and so is any process scheduled into the group after that, until the deadline
        is replaced or cleared. A new call replaces the deadline.

        Args (of ``req``):
            group: the group (it need not have processes yet).
            ttl_seconds: seconds from now (> 0, at most a year); ``None`` clears it.

        Raises:
            BadRequestError: an argument is invalid.

        Returns:
            ``{"group": group, "expires_at": epoch seconds or None}``.
        """
        expires_at = None
        if req.ttl_seconds is not None:
            expires_at = self.transitions.clock() + req.ttl_seconds
        self.store.set_group_expiry(req.group, expires_at)
        log.info("group %s: expires at %s", req.group, expires_at)
        return {"group": req.group, "expires_at": expires_at}

    # -- dispatcher-wide ----------------------------------------------------------------

    @operation(SetSystemBootRequest)
    def set_system_boot(self, req: SetSystemBootRequest) -> None:
        """Set or clear the system-boot flag (the doctor watches it).

        Args (of ``req``):
            system_boot: exactly ``True`` or ``False``.

        Raises:
            BadRequestError: ``system_boot`` is not a boolean.
        """
        self.store.set_system_boot(req.system_boot)
        log.info("system-boot mode %s", "on" if req.system_boot else "off")

    @operation(DumpRequest)
    def dump(self, req: DumpRequest) -> dict[str, Any]:
        """Return every resource, process and node record.

        Returns:
            ``{"resources": {resource_id: record}, "processes": {upid: record},
            "nodes": {node_id: record}, "vms": {node_id: record}}``: the legacy
            three, and the provisioner's node lifecycle records (state, provider id,
            last error, attempts). When the matchmaker has set processes aside,
            ``"set_aside": {upid: {"round", "reason", "time"}}`` too; when groups
            have a time to live, ``"group_expiries": {group: epoch seconds}``.
            ``"system"``: the dispatcher state, the boot flag, a pending boot
            initialisation and the held-back process count
            (:func:`~dispatcher.engine_status.system_status`); with engines,
            ``"engines"``: each engine's status, need and why
            (:mod:`dispatcher.engine_status`). The queue and definitions are not
            included.
        """
        resources, processes = self.store.list_resources(), self.store.list_process_dicts()
        nodes, vms = self.store.list_nodes(), self.store.list_vms()
        set_aside = self.store.list_set_aside()
        # One dict tree per stored process (100,000 and more), without cycles.
        with collector_paused():
            dumped: dict[str, Any] = {
                "resources": {r.resource_id: r.to_dict() for r in resources},
                "processes": {p["upid"]: p for p in processes},
                "nodes": {n.node_id: n.to_dict() for n in nodes},
                "vms": {vm.node_id: vm.to_dict() for vm in vms},
            }
        if set_aside:
            dumped["set_aside"] = set_aside
        group_expiries = self.store.list_group_expiries()
        if group_expiries:
            dumped["group_expiries"] = group_expiries
        dumped["system"] = system_status(self.store)
        if self.engines is not None:
            self.engines.merge_stored(self.store.list_engines())
            dumped["engines"] = engine_statuses(self.store, self.engines, self.driver_of)
        return dumped

    # -- helpers ----------------------------------------------------------------------

    def _requested(self, req: ScheduleProcessRequest, definition: Definition) -> Process:
        """A new process for ``req``, in ``200-REQUESTED`` at round 0."""
        copy = definition.to_dict()
        updates = req.updates()
        updates["max_runtime_seconds"] = scheduled_max_runtime(req.max_runtime_seconds, copy)
        return self.transitions.new_process(req.upid, copy, requested=True, **updates)

    def _get_definition(self, definition_id: str) -> Definition:
        definition = self.store.get_definition(definition_id)
        if definition is None:
            raise NotFoundError(f"Couldn't find process definition {definition_id}")
        return definition

    def _get_process(self, upid: str) -> Process:
        process = self.store.get_process(upid)
        if process is None:
            raise NotFoundError(f"process {upid} does not exist")
        return process


#: The operations served by :class:`ProcessDispatcherCore`, in declaration order.
RPC_OPERATIONS: Final = tuple(op.name for op in operations_of(ProcessDispatcherCore))


def _definition(req: CreateDefinitionRequest) -> Definition:
    return Definition(
        definition_id=req.definition_id,
        definition_type=req.definition_type,
        executable=tree_copy(req.executable),
        name=req.name,
        description=req.description,
        max_runtime_seconds=req.max_runtime_seconds,
    )


def _check_same_creation(existing: Process, definition_id: str, name: str | None) -> None:
    """Raise unless a repeated ``create_process`` matches the existing process."""
    if name is not None and existing.name != name:
        raise BadRequestError(
            f"process {existing.upid} exists with different name '{existing.name}'"
        )
    stored_id = existing.definition.get("definition_id")
    if stored_id != definition_id:
        raise BadRequestError(
            f"process {existing.upid} exists with different definition_id '{stored_id}'"
        )
