"""Eeagent heartbeats, node announcements, run-time engines and process logs.

:class:`HeartbeatHandler` serves four RPC operations with their legacy names and
arguments: ``heartbeat(message, sender)``, ``node_state(node_id,
domain_id, state, properties=None)``, ``add_engine(definition)`` and
``get_process_logs(upid, stream="stdout", tail_bytes=65536)`` (new). Every argument
is validated before anything is read or written (:mod:`pdcommon.heartbeat_messages`).

**First heartbeat** of an unknown agent: it is registered on its node with
the slot count of the node's engine, or dropped (with a log line) when the message
has no ``node_id``, the node is unknown, or the node's domain names no known
engine (:mod:`dispatcher.registration`). Its process list is not processed
(legacy); the next heartbeat is.

**Later heartbeats**: ``last_heartbeat`` moves forward only (a future
timestamp counts as now, one before year 1 in UTC as the earliest time), and each
reported ``(upid, round, state)`` is answered by the rules below, where *alive*
means a reported state below ``700-TERMINATED``. The rules are the pure function
:func:`dispatcher.heartbeat_decision.decide`; this handler applies its decisions
through the state machine (:class:`~dispatcher.transitions.ProcessStateMachine`):

====================================================  =======================================
report                                                outcome
====================================================  =======================================
unknown upid, or a round never issued (see below)     ``terminate_process`` if alive, else
                                                      ``cleanup``
older round, alive, process ``400-PENDING`` in a      nothing: a restart is in flight
newer round on this same agent                        (restart rule, below)
any other older round                                 ``terminate_process`` if alive, else
                                                      ``cleanup``
the process's state, terminal                         ``cleanup``
current round, process not on this agent              ``terminate_process`` if alive, else
                                                      ``cleanup``
PENDING/RUNNING for an ASSIGNED/PENDING process       forward to that state (RUNNING counts a
                                                      start); its queue entries are dropped
PENDING/RUNNING for a process at ``600-TERMINATING``  ``terminate_process`` again (its
or beyond                                             terminate was lost, or overtook its
                                                      launch on the way to the agent)
TERMINATED/FAILED/EXITED for a TERMINATING process    ``700-TERMINATED``, then ``cleanup``
TERMINATED/FAILED/EXITED for ASSIGNED..RUNNING        next round if the restart mode says so
                                                      (exit state = the report), else the
                                                      reported state; then ``cleanup``
anything else (``600-TERMINATING``, ``900-REJECTED``  ignored
...)
====================================================  =======================================

Processes that end release their ``node_exclusive`` tag before the resource is
written, and the resource's ``assigned`` list keeps only ``(upid, round)`` entries
whose process is still in that round and below ``700-TERMINATED``: that frees the
slots. An entry missing for a process this agent runs in its current round (a
``restart_process`` racing with this heartbeat) is put back.

Every write is optimistic and gives up after
:data:`~dispatcher.store.modify.WRITE_ATTEMPTS` lost races: a process whose record
kept changing is left as stored (logged) and the rest of the heartbeat applied; the
agent reports it again in its next heartbeat, which applies it then.

Where this differs from the legacy handling, deliberately:

* processes an agent reports alive that the dispatcher does not know are
  terminated (docs/architecture.md, decision 7), and so is a round the dispatcher never issued;
* a report of the current round counts only from the agent the process is assigned
  to: another agent's copy (for instance one still running after an evacuation
  marked the process FAILED or TERMINATED) is terminated rather than adopted;
* an ending that races with another writer (``terminate_process``, evacuation) is
  re-decided on the fresh record instead of being dropped, so a process is never
  left TERMINATING after its agent was told to clean it up;
* the resource is written once per heartbeat (timestamp and slots together), with
  conflict retries instead of giving up;
* a process the agent reports pending or running while the dispatcher holds it
  ``600-TERMINATING`` (or ended) is sent ``terminate_process`` again, where the
  legacy handling ignored the report: the order in which a launch and a terminate
  reach the agent does not matter.

**Restart rule** (docs/architecture.md, decision 4): ``restart_process`` stores ``400-PENDING`` with
``round + 1``, moves the agent's slot to the new round and tells the agent, which
replaces the old round by the new one. A heartbeat built before the agent did so
still reports the old round alive. Answering it with ``terminate_process`` would be
a no-op on our agent, but on an agent that did not restart (a legacy agent, whose
restart is disabled, or a lost message) it would kill the only running copy and
leave the process PENDING forever; so that report is left unanswered, and the slot
stays held under the new round. Any other older-round report is answered as legacy.
"""

from __future__ import annotations

import logging
import random
import reprlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from dashi.errors import (
    BadRequestError,
    NotFoundError,
    TransportError,
    WriteConflictError,
    WriteRetriesExhaustedError,
)
from dashi.operations import operation, operations_of
from dispatcher.engine_status import DriverOf, engine_statuses
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import release_node_exclusive
from dispatcher.heartbeat_decision import Action, Reason, decide, ending
from dispatcher.messaging import Messenger
from dispatcher.model import Process, Resource
from dispatcher.placement import effective_constraints, effective_engine
from dispatcher.process_logs import DEFAULT_LOGS_TIMEOUT, AgentCaller, ProcessLogs
from dispatcher.registration import Registration
from dispatcher.restart_policy import RestartDecision, decide_restart, effective_policy
from dispatcher.store.base import Store
from dispatcher.store.modify import retry_conflicts
from dispatcher.transitions import (
    WRITE_CONFLICT_RETRIES,
    ProcessStateMachine,
)
from pdcommon.heartbeat_messages import (
    AddEngineRequest,
    GetProcessLogsRequest,
    HeartbeatMessage,
    HeartbeatRequest,
    ListEnginesRequest,
    NodeStateRequest,
    ReportedProcess,
    resource_id_from_sender,
)
from pdcommon.limits import DEFAULT_LIMITS
from pdcommon.requests import Request
from pdcommon.settings import RestartPolicySettings
from pdcommon.states import InstanceState, ProcessState

__all__ = ["RPC_OPERATIONS", "HeartbeatHandler"]

log = logging.getLogger(__name__)

_R = TypeVar("_R", bound=Request)


@dataclass
class _Beat:
    """What one heartbeat decided, applied after the reported processes are handled."""

    #: The latest record read or written of each reported process.
    processes: dict[str, Process] = field(default_factory=dict)
    #: ``(upid, round)`` this agent runs in the process's current round.
    placed: list[tuple[str, int]] = field(default_factory=list)
    #: ``node_exclusive`` tags of processes that ended.
    tags: list[str] = field(default_factory=list)
    #: ``(op, upid, round)`` to fire to the agent.
    orders: list[tuple[str, str, int]] = field(default_factory=list)
    #: The node of the agent that sent the heartbeat.
    node: str | None = None


class HeartbeatHandler:
    """The health RPCs: heartbeats, node states, run-time engines and process logs.

    Register its operations (:func:`~dashi.operations.operations_of`) as
    RPC handlers with the service's annotation checking off (each validates its own
    arguments), and ``heartbeat`` with ``sender_kwarg="sender"``. Thread-safe: state lives in the
    store, except the recently sent cleanups (under a lock).

    Args:
        store: where processes, resources, nodes and engines live.
        messenger: sends subscriber notifications and eeagent commands.
        engines: the engines this dispatcher knows; ``add_engine`` extends it, and
            engines another instance added are merged in from the store on demand.
        transitions: the dispatcher's process state machine.
        registration: records nodes and first heartbeats (its evacuation is the
            doctor's).
        caller: calls eeagents (``get_process_logs``); an RPC client.
        logs_timeout: seconds ``get_process_logs`` waits for the agent.
        clock: returns the current time in epoch seconds.
        cleanup_resend_seconds: a ``cleanup`` the agent keeps asking for (its
            heartbeats still report the ended process) is sent again only this
            long after the last one (``dispatch_retry_seconds``); ``None``: on
            every heartbeat, as legacy did.
        driver_of: the provisioner driver of an engine's site (``list_engines``).
        restart_policy: the default restart policy (an engine's own, then a
            process's own, override it; :mod:`dispatcher.restart_policy`).

    Attributes:
        process_logs: serves ``get_process_logs``.
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        engines: EngineRegistry,
        *,
        transitions: ProcessStateMachine,
        registration: Registration,
        caller: AgentCaller | None = None,
        logs_timeout: float = DEFAULT_LOGS_TIMEOUT,
        clock: Callable[[], float] = time.time,
        cleanup_resend_seconds: float | None = None,
        driver_of: DriverOf | None = None,
        restart_policy: RestartPolicySettings | None = None,
    ) -> None:
        self.driver_of = driver_of
        self.store = store
        self.restart_policy = restart_policy or RestartPolicySettings()
        self.cleanup_resend_seconds = cleanup_resend_seconds
        self._cleanups_sent: dict[tuple[str, str, int], float] = {}
        self._cleanups_lock = threading.Lock()
        self.messenger = messenger
        self.engines = engines
        self.clock = clock
        self.process_logs = ProcessLogs(
            store, caller, timeout=logs_timeout, events=transitions.events
        )
        self.transitions = transitions
        self.registration = registration

    def parse_request(self, model: type[_R], args: dict[str, Any]) -> _R:
        """Validate an operation's raw arguments (within the default request limits).

        Raises:
            BadRequestError: an argument is invalid (the message names it).
        """
        return model.parse(DEFAULT_LIMITS, **args)

    # -- heartbeat ----------------------------------------------------------------------

    @operation(HeartbeatRequest)
    def heartbeat(self, req: HeartbeatRequest) -> None:
        """Take an eeagent's report (fired by the agent; see the module docstring).

        Args (of ``req``):
            message: the heartbeat (``eeagent_id``, ``node_id``, ``timestamp``,
                ``processes``).
            sender: the ``sender`` header, ``"<sysname>.<agent name>"``; the
                resource id is its text after the last ``.`` (without it, the
                message's ``eeagent_id``).

        Raises:
            BadRequestError: the message or sender is malformed; nothing is stored.
        """
        try:
            beat = HeartbeatMessage.parse(req.message)
            resource_id = resource_id_from_sender(req.sender, beat.eeagent_id)
        except BadRequestError as exc:
            log.warning("dropping heartbeat from %s: %s", reprlib.repr(req.sender), exc)
            raise
        stamp = _stamp(beat.timestamp, datetime.fromtimestamp(self.clock(), UTC))
        resource = self.store.get_resource(resource_id)
        if resource is None:
            self.registration.register_agent(resource_id, beat.node_id, stamp)
        else:
            self._report(resource, beat, stamp)

    def _report(self, resource: Resource, beat: HeartbeatMessage, stamp: datetime) -> None:
        """A heartbeat of a known agent."""
        result = _Beat(node=resource.node_id)
        for reported in beat.processes:
            try:
                self._apply(resource.resource_id, reported, result)
            except WriteRetriesExhaustedError as exc:
                # Nothing was written for it: the agent reports it again next time.
                log.warning("heartbeat of %s: %s; the next one retries", resource.resource_id, exc)
        if result.tags:
            # Before the resource write: the matchmaker, woken by it, may place a
            # process waiting for one of these tags.
            release_node_exclusive(self.store, resource.node_id, result.tags)
        self._write_resource(resource, stamp, result)
        for op, upid, round_ in result.orders:
            if op == "cleanup" and not self._cleanup_due(resource.resource_id, upid, round_):
                continue  # sent moments ago: the agent has not handled it yet
            try:
                self.messenger.fire(resource.resource_id, op, u_pid=upid, round=round_)
            except TransportError as exc:
                # The agent reports the process again; the next heartbeat retries.
                log.warning(
                    "could not send %s(%s, %d) to %s: %s",
                    op,
                    upid,
                    round_,
                    resource.resource_id,
                    exc,
                )

    def _cleanup_due(self, resource_id: str, upid: str, round_: int) -> bool:
        """Whether to send this ``cleanup`` now (not sent in the last resend period)."""
        period = self.cleanup_resend_seconds
        if not period:
            return True
        now = self.clock()
        with self._cleanups_lock:
            sent = self._cleanups_sent
            for key in [key for key, at in sent.items() if not 0 <= now - at < period]:
                del sent[key]
            if (resource_id, upid, round_) in sent:
                return False
            sent[(resource_id, upid, round_)] = now
            return True

    def _apply(self, resource_id: str, reported: ReportedProcess, result: _Beat) -> None:
        """Apply what one reported process means (:func:`~dispatcher.heartbeat_decision.decide`)."""
        upid, round_, state = reported.upid, reported.round, reported.state
        process = self.store.get_process(upid)
        decision = decide(process, resource_id, round_, state)
        if decision.reason is Reason.UNKNOWN:
            log.warning(
                "eeagent %s holds %s round %d (%s), unknown to the dispatcher: %s",
                resource_id,
                upid,
                round_,
                state,
                decision.order,
            )
        elif decision.reason is Reason.RESTARTING:
            log.debug("%s round %d still reported during its restart", upid, round_)
        elif decision.reason is Reason.OTHER_AGENT and process is not None:
            log.warning(
                "eeagent %s reports %s round %d %s, but the process is %s on %s: %s",
                resource_id,
                upid,
                round_,
                state,
                process.state,
                process.assigned,
                decision.order,
            )
        elif decision.reason is Reason.TERMINATING and process is not None:
            log.info(
                "eeagent %s reports %s round %d %s, but the process is %s: terminate_process",
                resource_id,
                upid,
                round_,
                state,
                process.state,
            )
        if process is None or not decision.known:
            if decision.order is not None:
                result.orders.append((decision.order, upid, round_))
            return
        result.processes[upid] = process
        if decision.reason is Reason.END:
            self._end(process, reported, result)
        elif decision.action is Action.ADVANCE:
            process, _ = self.transitions.process_change_state(process, state)
            result.processes[upid] = process
            self.transitions.dequeue_all(upid, round_)
        if decision.order is not None:
            result.orders.append((decision.order, upid, round_))
        if (
            decision.holds_slot
            and process.round == round_
            and process.state < ProcessState.TERMINATED
        ):
            result.placed.append((upid, round_))

    def _end(self, process: Process, report: ReportedProcess, result: _Beat) -> None:
        """The agent says the process's current round ended: record how (and why)."""
        round_ = process.round
        reported = report.state
        now = self.clock()
        note = {
            "node": result.node,
            "exit_code": report.exit_code,
            "signal": report.signal,
            "output": report.output,
        }
        outcome: dict[str, Any] = {
            "exit_code": report.exit_code,
            "signal": report.signal,
            "ended_at": now,
            "next_restart_at": None,
        }
        if process.state < ProcessState.RUNNING and report.started_at is not None:
            # ended before any heartbeat showed it running: the agent says when it began
            outcome["started_at"] = min(report.started_at, now)
        for _ in range(WRITE_CONFLICT_RETRIES):
            before = process.state
            action = ending(process, reported)
            why = report.why
            if action is Action.TERMINATED:
                why = process.reason or why
            if action is Action.NEXT_ROUND:
                decision = self._restart_decision(process, now)
                if decision.give_up:
                    log.warning(
                        "process %s round %d %s (%s): %s: not restarted",
                        process.upid,
                        round_,
                        reported,
                        why or "no reason given",
                        decision.reason,
                    )
                    why = decision.reason
                    action, reported = Action.ENDED, ProcessState.FAILED
                else:
                    process, written = self.transitions.process_next_round(
                        process,
                        note={**note, "reason": why},
                        ended=reported,
                        restart_reason=f"restarting by restart mode "
                        f"{process.restart_mode or 'ABNORMAL'} in {decision.delay:.3g} s",
                        reason=why,
                        restarts=process.restarts + 1,
                        failure_times=decision.failure_times,
                        **{**outcome, "next_restart_at": now + decision.delay},
                    )
            if action is Action.TERMINATED:
                process, written = self.transitions.process_change_state(
                    process,
                    ProcessState.TERMINATED,
                    note=note,
                    assigned=None,
                    reason=why,
                    **outcome,
                )
            elif action is Action.ENDED:
                process, written = self.transitions.process_change_state(
                    process, reported, note=note, assigned=None, reason=why, **outcome
                )
            elif action is not Action.NEXT_ROUND:
                return  # already ended (or never started): nothing to record
            result.processes[process.upid] = process
            if written:
                if process.node_exclusive:
                    result.tags.append(process.node_exclusive)
                return
            if process.round != round_ or process.state == before:
                return  # moved on meanwhile (restarted, evacuated ...)

    def _restart_decision(self, process: Process, now: float) -> RestartDecision:
        """The restart policy's answer for a restartable end of ``process`` at ``now``."""
        engine_id = effective_engine(effective_constraints(self.engines, process))
        engine = self.engines.get(engine_id) if engine_id is not None else None
        policy = effective_policy(
            self.restart_policy,
            engine.restart_policy if engine is not None else None,
            process.restart_policy,
        )
        # The jitter is drawn from the process and round: processes failing together
        # spread out, and the same report always gives the same record.
        draw = random.Random(f"{process.upid}:{process.round}").random
        return decide_restart(policy, process.failure_times, now, draw)

    def _write_resource(self, resource: Resource, stamp: datetime, result: _Beat) -> None:
        """Move ``last_heartbeat`` forward and free the slots of ended processes."""
        fresh = False

        def attempt() -> None:
            nonlocal resource, fresh
            last = _later(resource.last_heartbeat, stamp)
            assigned = self._rebuild(resource, result, fresh)
            if last == resource.last_heartbeat and assigned == resource.assigned:
                return
            resource.last_heartbeat, resource.assigned = last, assigned
            try:
                self.store.update_resource(resource)
            except NotFoundError:
                return  # evacuated meanwhile
            except WriteConflictError:
                current = self.store.get_resource(resource.resource_id)
                if current is None:
                    return
                resource, fresh = current, True
                raise

        try:
            retry_conflicts(f"resource {resource.resource_id!r}", attempt)
        except WriteRetriesExhaustedError:
            log.warning(
                "eeagent %s kept changing: the next heartbeat updates it", resource.resource_id
            )

    def _rebuild(self, resource: Resource, result: _Beat, fresh: bool) -> list[tuple[str, int]]:
        """The ``assigned`` list after this heartbeat (see the module docstring)."""
        cache: dict[str, Process | None] = {} if fresh else dict(result.processes)

        def process_of(upid: str) -> Process | None:
            if upid not in cache:
                cache[upid] = self.store.get_process(upid)
            return cache[upid]

        def holds(key: tuple[str, int]) -> bool:
            process = process_of(key[0])
            return (
                process is not None
                and process.round == key[1]
                and process.state < ProcessState.TERMINATED
            )

        def runs_here(key: tuple[str, int]) -> bool:
            process = process_of(key[0])
            return process is not None and process.assigned == resource.resource_id

        assigned = [key for key in resource.assigned if holds(key)]
        for key in result.placed:
            if key not in assigned and holds(key) and runs_here(key):
                assigned.append(key)
        return assigned

    # -- node_state ---------------------------------------------------------------------

    @operation(NodeStateRequest)
    def node_state(self, req: NodeStateRequest) -> None:
        """A node (VM) changed state (dead states as in docs/architecture.md, decision 3).

        * ``600-RUNNING``: an unknown node is recorded (``state_time`` = now); a
          known one is left unchanged (its properties are not updated).
        * ``700-TERMINATING``, ``800-TERMINATED``, ``900-FAILED``, ``950-REJECTED``:
          the node is evacuated (its agents disabled, their processes moved on by
          restart mode, the records removed); an unknown node is ignored.
        * anything else is ignored.

        Args (of ``req``):
            node_id: the node (VM) id.
            domain_id: ``pd_domain_<engine>``: the engine its agents serve.
            state: an :class:`~pdcommon.states.InstanceState` string.
            properties: node properties placement constraints can match (e.g.
                ``hostname``).

        Raises:
            BadRequestError: an argument is ill-typed.
        """
        if req.state == InstanceState.RUNNING:
            self.registration.node_running(req.node_id, req.domain_id, req.properties)
        elif req.state in InstanceState.DEAD:
            self.registration.node_dead(req.node_id, req.state)
        else:
            log.debug("node %s is %s: ignored", req.node_id, req.state)

    # -- add_engine ---------------------------------------------------------------------

    @operation(AddEngineRequest)
    def add_engine(self, req: AddEngineRequest) -> None:
        """Add an engine at run time; it is persisted and seen by every instance.

        Args (of ``req``):
            definition: ``{"engine_id", "slots", ...}`` with the legacy engine keys
                (``base_need``, ``config``, ``replicas``, ``spare_slots``,
                ``iaas_allocation``, ``maximum_vms``, ``heartbeat_period``,
                ``heartbeat_warning``, ``heartbeat_missing``, ``deployable_type``).

        Raises:
            BadRequestError: the definition is invalid (the message names the key).
            WriteConflictError: an engine with this id exists.
        """
        engine_id, engine = EngineRegistry.parse_definition(req.definition)
        if self.registration.engine(engine_id) is not None:
            raise WriteConflictError(f"engine {engine_id!r} already exists")
        self.store.add_engine(engine_id, engine.model_dump(mode="json", exclude_unset=True))
        if engine_id not in self.engines:
            self.engines.add(engine_id, engine)
        log.info("engine %s added (%d slots)", engine_id, engine.slots)

    @operation(ListEnginesRequest)
    def list_engines(self, req: ListEnginesRequest) -> dict[str, dict[str, Any]]:
        """Every engine this dispatcher knows: configured ones and those added at run time.

        Returns:
            Engine id → its settings (the legacy engine keys, JSON-ready), plus
            ``"status"``: its need, why, and its nodes
            (:mod:`dispatcher.engine_status`).
        """
        self.engines.merge_stored(self.store.list_engines())
        statuses = engine_statuses(self.store, self.engines, self.driver_of)
        return {
            engine_id: {**engine.model_dump(mode="json"), "status": statuses[engine_id]}
            for engine_id, engine in self.engines.items()
        }

    # -- get_process_logs ---------------------------------------------------------------

    @operation(GetProcessLogsRequest)
    def get_process_logs(self, req: GetProcessLogsRequest) -> str:
        """The end of a process's output, fetched from its agent.

        See :meth:`dispatcher.process_logs.ProcessLogs.get_process_logs` for the
        arguments and errors.
        """
        return self.process_logs.get_process_logs(req.upid, req.stream, req.tail_bytes)


#: The operations served by :class:`HeartbeatHandler`, in declaration order.
RPC_OPERATIONS: Final = tuple(op.name for op in operations_of(HeartbeatHandler))


#: The earliest time a heartbeat can carry once in UTC.
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)


def _stamp(reported: datetime, now: datetime) -> datetime:
    """A heartbeat's time in UTC, clamped to what can be stored.

    A time in the future counts as ``now``; a time before the first instant of
    year 1 in UTC (``0001-01-01T00:30:00+01:00``: its UTC conversion would leave
    the calendar) counts as that first instant, like any other very old time:
    it never moves ``last_heartbeat`` backwards.

    Args:
        reported: the message's timestamp (aware).
        now: the current time (aware, UTC).
    """
    if reported >= now:
        return now
    if reported <= _EARLIEST:
        return _EARLIEST
    return reported.astimezone(UTC)


def _later(stored: str | None, stamp: datetime) -> str:
    """The later of a stored ``last_heartbeat`` and ``stamp``, as stored text."""
    if stored is not None:
        try:
            previous = datetime.fromisoformat(stored)
        except ValueError:
            return stamp.isoformat()
        if previous.tzinfo is None:
            previous = previous.replace(tzinfo=UTC)
        if previous >= stamp:
            return stored
    return stamp.isoformat()
