"""The execution engine agent's logic: requests, process states and heartbeats.

:class:`EEAgent` is plain, synchronous Python over a
:class:`~eeagent.control.ProcessControl` and a
:class:`~eeagent.persistence.StateStore`; :mod:`eeagent.service` puts it on the
wire and calls :meth:`EEAgent.poll` several times a second.

State machine of one record (legacy state strings; backend details in
:mod:`eeagent.transitions`)::

    launch ──▶ 400-PENDING ──spawned──▶ 500-RUNNING ──exit 0──▶ 800-EXITED
       │          │   │                     │  └──────exit≠0───▶ 850-FAILED ("exited with code N")
       │          │   └─cannot spawn─▶ 850-FAILED ("cannot start: ...")
       │          └──────terminate──────────┴─▶ 600-TERMINATING ──▶ 700-TERMINATED
       ├─ run_type is not "supd", bad parameters ─▶ 850-FAILED (reason in msg)
       ├─ no free slot ─▶ 900-REJECTED ──terminate──▶ 700-TERMINATED
       └─ terminated before it came ─▶ 700-TERMINATED

    terminate of a round never launched ─▶ 700-TERMINATED (the launch is refused if it comes)

    supervisord died ─▶ every live record 850-FAILED ("lost: ..."), a new one is started
    cleanup ─▶ record removed (its program stopped and removed)

An ended record keeps its program and log files until ``cleanup``, within the
agent's log budget (:mod:`eeagent.logbudget`): checked every
:data:`~eeagent.logbudget.CHECK_INTERVAL` seconds and whenever a round ends, it
deletes the log files of rounds that ended too long ago, then of the oldest ended
rounds while their logs take too much space. Such a record keeps the tail of its
output captured when it ended, and ``get_process_logs`` answers with that tail.

Request rules (legacy, except that ``restart_process`` really restarts:
docs/architecture.md, decision 4):

* ``launch_process`` of a (upid, round) the agent holds is a retry and is ignored,
  except after ``900-REJECTED`` (admission is tried again); an older round is
  ignored; a newer round replaces the old one: the old process is stopped and
  forgotten, and the new one starts once the old one has exited.
* ``restart_process`` relaunches the stored parameters under the new round, the
  same way (the slot moves to the new round).
* Slots: a launch that would make more than ``slots`` records live is rejected.
* ``terminate_process`` of a round not held (a terminate can overtake its launch)
  records it ``700-TERMINATED`` at once, replacing an older round as a launch
  would, and is remembered (:mod:`eeagent.table`): that round's launch or restart
  is refused and reported ``700-TERMINATED``. Of an older round than the one held,
  or of a process already stopping, it does nothing; a ``900-REJECTED`` record
  becomes ``700-TERMINATED``.

An unknown run type and invalid parameters are reported ``850-FAILED`` rather than
``900-REJECTED``: the dispatcher ignores REJECTED reports from agents but acts on
FAILED (its restart policy), and a broken definition is a failure of the process,
not a lack of room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dashi.errors import BadRequestError, NotFoundError
from eeagent.control import ProcessControl, ProgramState, ProgramStatus
from eeagent.errors import (
    BackendFaultError,
    BackendStartError,
    BackendUnavailableError,
    SpawnError,
)
from eeagent.logbudget import CHECK_INTERVAL, EndedLogs, LogBudget, plan_drops
from eeagent.parameters import ParameterError, parse_parameters, program_name
from eeagent.persistence import StateStore
from eeagent.records import OUTPUT_TAIL, ProcessRecord, RetiringProgram
from eeagent.stopping import Stopper
from eeagent.table import ProcessTable
from eeagent.transitions import RESIGNAL_AFTER, observe
from pdcommon.states import ProcessState

__all__ = ["MAX_LOG_TAIL", "RUN_TYPE", "EEAgent"]

log = logging.getLogger(__name__)

#: The one run type this agent executes (legacy ``launch_type.name``).
RUN_TYPE = "supd"
#: Largest ``tail_bytes`` that ``get_process_logs`` accepts.
MAX_LOG_TAIL = 4 * 1024 * 1024
#: Seconds between attempts to start a new supervisord when starting one failed.
RECOVERY_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Extra seconds a clean shutdown waits beyond supervisord's stop timeout.
SHUTDOWN_GRACE = 2.0
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


class EEAgent:
    """Runs processes on one node for the dispatcher.

    Args:
        name: the agent's name (``eeagent.name``), sent as ``eeagent_id``.
        node_id: the node's id, sent in heartbeats when set.
        slots: how many processes may be live at once.
        control: the process backend.
        store: where records are persisted (``None``: nowhere, for tests).
        default_directory: working directory of processes that name none.
        default_user: the account processes that name no ``user`` run as
            (``None``: the backend's own).
        stop_wait: seconds the backend waits between SIGTERM and SIGKILL.
        on_change: called whenever the heartbeat content changes, under the
            agent's lock: it must return at once (e.g. set an event).
        clock: seconds since the epoch (injectable for tests).
        log_budget: how much disk the log files of ended rounds may take
            (``None``: the defaults of :class:`~eeagent.logbudget.LogBudget`).

    Every public method is thread-safe.
    """

    def __init__(
        self,
        *,
        name: str,
        node_id: str | None,
        slots: int,
        control: ProcessControl,
        store: StateStore | None = None,
        default_directory: str | None = None,
        default_user: str | None = None,
        stop_wait: float = 10.0,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self.slots = slots
        self.control = control
        self.default_directory = default_directory
        self.default_user = default_user
        self.stop_wait = stop_wait
        self.on_change = on_change
        self.clock = clock
        self.log_budget = log_budget if log_budget is not None else LogBudget()
        self.table = ProcessTable(name, store, lambda: self.on_change(), clock)
        self.stopper = Stopper(control, self.table, clock)
        self._lock = threading.RLock()
        self._backend_down = False
        self._recovery_attempts = 0
        self._next_recovery = 0.0
        self._next_budget_check = 0.0

    # -- lifecycle ----------------------------------------------------------------

    def open(self) -> None:
        """Load the saved state, attach to (or start) the backend and reconcile.

        Processes of a backend instance other than the saved one are reported lost.

        Raises:
            BackendStartError: no backend runs and none could be started.
            PersistenceError: the state cannot be saved.
        """
        with self._lock:
            self.table.load()
            self.table.forget_old_terminates(self.clock())
            for record in self.table.records.values():
                if not record.live and record.ended_at is None:
                    # saved by an agent that did not stamp it: its age counts from now
                    record.ended_at = self.clock()
                    self.table.dirty = True
            attachment = self.control.open()
            if attachment.fresh or attachment.instance != self.table.backend:
                self._lose_all("lost: supervisord was not running when the agent started")
            self.table.backend = attachment.instance
            self.table.save()
        self.poll()

    def shutdown(self, *, leave_running: bool) -> None:
        """Disconnect from the backend, leaving the processes running or stopping them all.

        Stopping reports each live process ``850-FAILED`` "stopped: the agent shut
        down" (``700-TERMINATED`` if a terminate was already requested), stops
        supervisord, and keeps the records, so the next agent still reports them
        until they are cleaned up. The monitor must no longer call :meth:`poll`.
        """
        table = self.table
        if leave_running:
            with self._lock:
                table.dirty = True
                table.commit()
                self.control.close(stop_programs=False)
            return
        deadline = time.monotonic() + self.stop_wait + SHUTDOWN_GRACE
        with self._lock:
            for record in table.records.values():
                if record.live and record.program and not record.needs_start:
                    self.stopper.stop(record)
            for retiree in table.retiring.values():
                self.stopper.stop(retiree)
        while time.monotonic() < deadline and self._anything_alive():
            time.sleep(0.05)
        with self._lock:
            for record in table.records.values():
                if record.live:
                    if record.stop_requested:
                        table.set_state(record, ProcessState.TERMINATED)
                    else:
                        table.set_state(record, ProcessState.FAILED, "stopped: the agent shut down")
                    record.needs_start, record.waiting_for, record.pid = False, None, 0
            table.retiring.clear()
            self.control.close(stop_programs=True)
            table.backend = None
            table.dirty = True
            table.commit()

    # -- requests (the RPC operations) --------------------------------------------

    def launch_process(self, u_pid: str, round: int, run_type: str, parameters: Any) -> None:
        """Start ``parameters`` as process ``(u_pid, round)``; see the module docstring."""
        _check_upid(u_pid)
        with self._lock:
            existing = self.table.by_upid(u_pid)
            if existing is not None:
                if round < existing.round:
                    log.warning(
                        "ignoring launch of %s round %d: holding round %d",
                        u_pid,
                        round,
                        existing.round,
                    )
                    return
                if round == existing.round and existing.state != ProcessState.REJECTED:
                    log.info("ignoring duplicate launch of %s round %d", u_pid, round)
                    return
            self._admit(u_pid, round, run_type, parameters, replaces=existing)

    def restart_process(self, u_pid: str, round: int) -> None:
        """Stop the process of ``u_pid`` and run its stored parameters again as ``round``."""
        _check_upid(u_pid)
        with self._lock:
            existing = self.table.by_upid(u_pid)
            if existing is None:
                log.warning("cannot restart %s: this agent does not hold it", u_pid)
                return
            if round < existing.round or (round == existing.round and existing.live):
                log.info(
                    "ignoring restart of %s round %d: holding round %d (%s)",
                    u_pid,
                    round,
                    existing.round,
                    existing.state,
                )
                return
            self._admit(u_pid, round, existing.run_type, existing.parameters, replaces=existing)

    def terminate_process(self, u_pid: str, round: int) -> None:
        """Stop process ``(u_pid, round)``, or refuse it if it comes; see the module docstring."""
        with self._lock:
            record = self.table.get(u_pid, round)
            if record is None:
                self._terminate_unlaunched(u_pid, round)
                self.table.commit()
                return
            if record.state == ProcessState.REJECTED:
                # never started, and the dispatcher will not launch it again
                self.table.set_state(
                    record, ProcessState.TERMINATED, "terminated before it started"
                )
                self.table.commit()
                return
            if not record.live:
                log.info("terminate: %s round %d is %s; nothing to do", u_pid, round, record.state)
                return
            if record.stop_requested and record.state == ProcessState.TERMINATING:
                log.debug("terminate: %s round %d is already stopping", u_pid, round)
                return
            if record.needs_start:
                record.needs_start, record.waiting_for = False, None
                record.stop_requested = True
                self.table.set_state(
                    record, ProcessState.TERMINATED, "terminated before it started"
                )
            elif record.program:
                if self.stopper.stop(record):
                    record.stop_requested = True
                    self.table.set_state(record, ProcessState.TERMINATING)
                else:
                    self._refresh()  # it ended by itself: report how
            self.table.commit()

    def _terminate_unlaunched(self, u_pid: str, round: int) -> None:
        """A terminate of a round this agent holds no record of."""
        existing = self.table.by_upid(u_pid)
        if existing is not None and existing.round > round:
            log.info(
                "terminate: %s round %d is older than the round %d held; nothing to do",
                u_pid,
                round,
                existing.round,
            )
            return
        log.info("terminate: %s round %d is not launched yet: it will not start", u_pid, round)
        self.table.remember_terminate(u_pid, round, self.clock())
        self._add_terminated(u_pid, round, "", None, replaces=existing)

    def _add_terminated(
        self, u_pid: str, round: int, run_type: str, parameters: Any, replaces: ProcessRecord | None
    ) -> None:
        """Record ``(u_pid, round)`` ``700-TERMINATED`` unstarted; ``replaces`` is retired."""
        if replaces is not None:
            self.stopper.retire(replaces)
        record = ProcessRecord(
            upid=u_pid, round=round, run_type=run_type, parameters=parameters, stop_requested=True
        )
        self.table.add(record)
        self.table.set_state(record, ProcessState.TERMINATED, "terminated before it was launched")

    def cleanup(self, u_pid: str, round: int) -> None:
        """Forget process ``(u_pid, round)``, stopping it first if it still runs."""
        with self._lock:
            record = self.table.get(u_pid, round)
            if record is None:
                return
            if record.live:
                log.warning(
                    "cleanup of %s round %d while %s: stopping it", u_pid, round, record.state
                )
            self.stopper.retire(record)
            self.table.commit()

    def dump_state(self, rpc: bool = False) -> dict[str, Any] | None:
        """With ``rpc``, return the heartbeat message; else have one sent now."""
        if rpc:
            return self.heartbeat()
        self.on_change()
        return None

    def get_process_logs(
        self, u_pid: str, round: int, stream: str = "stdout", tail_bytes: int = 65536
    ) -> str:
        """The last ``tail_bytes`` bytes a process wrote to ``stream``, as text.

        Invalid UTF-8 is replaced by U+FFFD; a character cut by the tail is dropped.
        For a round whose log files were deleted to keep the log budget, the tail
        kept when it ended (at most :data:`~eeagent.records.OUTPUT_TAIL` bytes).

        Raises:
            BadRequestError: ``stream`` is not ``stdout``/``stderr``, or ``tail_bytes``
                is out of range.
            NotFoundError: the agent holds no such process.
        """
        if stream not in ("stdout", "stderr"):
            raise BadRequestError(
                f"invalid argument stream: must be 'stdout' or 'stderr', not {stream!r}"
            )
        if not 0 <= tail_bytes <= MAX_LOG_TAIL:
            raise BadRequestError(
                f"invalid argument tail_bytes: must be between 0 and {MAX_LOG_TAIL}"
            )
        with self._lock:
            record = self.table.get(u_pid, round)
            if record is None:
                raise NotFoundError(f"no process {u_pid} round {round} on agent {self.name}")
            if record.program is None or record.needs_start:
                return ""
            if record.logs_dropped:
                kept = (record.output or {}).get(stream, "").encode()
                data = kept[len(kept) - tail_bytes :] if tail_bytes < len(kept) else kept
            else:
                data = self.control.read_log(
                    record.program, "stdout" if stream == "stdout" else "stderr", tail_bytes
                )
        if len(data) >= tail_bytes:
            data = data.lstrip(_CONTINUATION_BYTES)
        return data.decode("utf-8", "replace")

    # -- reporting ----------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        """The legacy heartbeat message for the current state.

        ``{"eeagent_id", "node_id" (when configured), "timestamp" (ISO 8601, UTC
        offset), "processes": [{"upid", "round" (string), "state" ([code, NAME]),
        "msg" (string, "None" when there is none)}]}``
        """
        with self._lock:
            processes = [record.report() for record in self.table.records.values()]
        message: dict[str, Any] = {"eeagent_id": self.name}
        if self.node_id is not None:
            message["node_id"] = self.node_id
        message["timestamp"] = datetime.now(UTC).isoformat()
        message["processes"] = processes
        return message

    def records(self) -> list[ProcessRecord]:
        """Copies of every record, in launch order."""
        with self._lock:
            return [record.model_copy() for record in self.table.records.values()]

    def record(self, u_pid: str, round: int) -> ProcessRecord | None:
        """A copy of one record, or ``None``."""
        with self._lock:
            record = self.table.get(u_pid, round)
            return record.model_copy() if record is not None else None

    # -- monitoring ---------------------------------------------------------------

    def poll(self) -> None:
        """Look at the backend once: follow process states, stop and remove retired
        programs, start pending launches, and replace a backend that died.

        Called by the service every poll interval. Never raises for backend trouble.
        """
        with self._lock:
            if self._backend_down:
                if self.clock() >= self._next_recovery:
                    self._recover()
            else:
                self._refresh()
            if self.table.ended or self.clock() >= self._next_budget_check:
                self._keep_log_budget()
            self.table.commit()

    def _keep_log_budget(self) -> None:
        """Delete the log files of ended rounds beyond the budget (see the module
        docstring); the record stays, with the tail of its output."""
        table = self.table
        now = self.clock()
        table.ended = False
        self._next_budget_check = now + CHECK_INTERVAL
        candidates: dict[str, ProcessRecord] = {}
        ended_at: dict[str, float] = {}
        ended: list[EndedLogs] = []
        for record in table.records.values():
            name = record.program
            if record.live or record.logs_dropped or name is None or record.ended_at is None:
                continue
            try:
                size = self.control.log_size(name)
            except OSError as exc:
                log.warning("cannot measure the logs of %s: %s", name, exc)
                continue
            candidates[name] = record
            ended_at[name] = record.ended_at
            ended.append(EndedLogs(name, record.ended_at, size))
        for drop in plan_drops(ended, now, self.log_budget):
            record = candidates[drop.name]
            if record.output is None:  # e.g. lost with its supervisord: keep the tail now
                record.output = self._output_tail(record)
                if record.output is not None:
                    table.changed = True
            try:
                self.control.drop_logs(drop.name)
            except OSError as exc:
                log.warning("cannot delete the logs of %s: %s", drop.name, exc)
                continue
            record.logs_dropped = True
            table.dirty = True
            if drop.reason == "age":
                why = (
                    f"it ended {now - ended_at[drop.name]:.0f}s ago "
                    f"(eeagent.ended_logs_max_age: {self.log_budget.max_age:g}s)"
                )
            else:
                why = (
                    "the ended rounds' logs take more than "
                    f"eeagent.ended_logs_max_bytes ({self.log_budget.max_bytes} bytes)"
                )
            log.info(
                "%s round %d: deleted its log files (%d bytes, the tail is kept): %s",
                record.upid,
                record.round,
                drop.size,
                why,
            )

    def _refresh(self) -> None:
        try:
            self._reconcile()
        except BackendUnavailableError as exc:
            self._backend_lost(str(exc))
        except BackendFaultError as exc:
            log.warning("supervisord refused a request: %s", exc)

    def _reconcile(self) -> None:
        table = self.table
        statuses = self.control.poll()
        known = {r.program for r in table.records.values() if r.program} | set(table.retiring)
        for name in statuses:
            if name not in known:
                log.warning("supervisord runs unknown program %s: stopping and removing it", name)
                table.retiring[name] = RetiringProgram(name=name)
                table.dirty = True
        for record in table.records.values():
            if record.live:
                self._apply(record, statuses.get(record.program or ""))
        for retiree in list(table.retiring.values()):
            if self.stopper.advance(retiree, statuses.get(retiree.name)):
                del statuses[retiree.name]
        for record in list(table.records.values()):
            if record.needs_start and record.live:
                waiting = record.waiting_for
                if waiting is not None and (waiting in table.retiring or waiting in statuses):
                    continue
                record.waiting_for = None
                self._start(record)

    def _apply(self, record: ProcessRecord, status: ProgramStatus | None) -> None:
        """Bring a live record in line with its program's backend status."""
        table = self.table
        if record.needs_start:
            if record.waiting_for is not None or status is None or not status.started:
                return
            record.needs_start = False  # started by an agent that died before saving
        if status is None:
            table.set_state(
                record, ProcessState.FAILED, "lost: the program disappeared from supervisord"
            )
            record.pid = 0
            return
        if status.pid and (status.pid, status.identity) != (record.pid, record.identity):
            record.pid, record.identity = status.pid, status.identity
            table.dirty = True
        seen = observe(record, status)
        if seen.resend_stop:
            due = (
                record.stop_sent_at is None or self.clock() - record.stop_sent_at >= RESIGNAL_AFTER
            )
            if due:
                self.stopper.stop(record)
        if seen.stopping:
            self.stopper.maybe_resignal(record)
        if seen.exit_code is not None:
            record.exit_code = seen.exit_code
        if seen.signal is not None:
            record.signal = seen.signal
        if status.state is ProgramState.UNKNOWN:
            log.warning(
                "supervisord reports UNKNOWN for %s; keeping %s", record.program, record.state
            )
        if seen.state is not None:
            msg = seen.msg
            if seen.state == ProcessState.FAILED and seen.exit_code and seen.exit_code > 0:
                msg = f"{msg}{self._supervisor_note(record)}"
            table.set_state(record, seen.state, msg)
        if not record.live:
            record.pid = 0
            if record.output is None:
                record.output = self._output_tail(record)

    def _output_tail(self, record: ProcessRecord) -> dict[str, str] | None:
        """The end of an ended round's output (:data:`~eeagent.records.OUTPUT_TAIL`
        bytes of each stream), or None when there is none or it cannot be read."""
        if record.program is None:
            return None
        output: dict[str, str] = {}
        for stream in ("stdout", "stderr"):
            try:
                data = self.control.read_log(record.program, stream, OUTPUT_TAIL)
            except (BackendFaultError, BackendUnavailableError, OSError) as exc:
                log.debug("cannot read the %s of %s: %s", stream, record.program, exc)
                continue
            if len(data) >= OUTPUT_TAIL:
                data = data.lstrip(_CONTINUATION_BYTES)
            output[stream] = data.decode("utf-8", "replace")
        return output if any(output.values()) else None

    def _supervisor_note(self, record: ProcessRecord) -> str:
        """supervisord's own complaint: it writes ``supervisor: ...`` to the child's stderr."""
        if record.program is None:
            return ""
        tail = self.control.read_log(record.program, "stderr", 512).decode("utf-8", "replace")
        lines = tail.strip().splitlines()
        if lines and lines[-1].startswith("supervisor: "):
            return f" ({lines[-1].removeprefix('supervisor: ')})"
        return ""

    # -- admission, start, stop ---------------------------------------------------

    def _admit(
        self,
        u_pid: str,
        round: int,
        run_type: str,
        parameters: Any,
        replaces: ProcessRecord | None,
    ) -> None:
        table = self.table
        if table.terminate_remembered(u_pid, round, self.clock()):
            log.info("refusing %s round %d: it was terminated before it was launched", u_pid, round)
            self._add_terminated(u_pid, round, run_type, parameters, replaces)
            table.commit()
            return
        name = program_name(u_pid, round)
        waiting_for = self.stopper.retire(replaces, successor=name) if replaces else None
        record = ProcessRecord(upid=u_pid, round=round, run_type=run_type, parameters=parameters)
        table.add(record)
        if run_type != RUN_TYPE:
            table.set_state(
                record,
                ProcessState.FAILED,
                f"unknown run type {run_type!r}: this agent runs {RUN_TYPE!r}",
            )
            table.commit()
            return
        try:
            parse_parameters(parameters)
        except ParameterError as exc:
            table.set_state(record, ProcessState.FAILED, str(exc))
            table.commit()
            return
        if table.live_count() > self.slots:
            table.set_state(
                record, ProcessState.REJECTED, f"no free slot: all {self.slots} slots are in use"
            )
            table.commit()
            return
        record.program, record.needs_start, record.waiting_for = name, True, waiting_for
        if waiting_for is None and not self._backend_down:
            try:
                self._start(record)
            except BackendUnavailableError as exc:
                self._backend_lost(str(exc))  # it stays pending until a backend runs again
        table.commit()

    def _start(self, record: ProcessRecord) -> None:
        """Hand a pending record to the backend and take its first status.

        Raises:
            BackendUnavailableError: the backend is gone (the record stays pending).
        """
        assert record.program is not None
        spec = parse_parameters(record.parameters).spec(
            record.program, self.default_directory, self.default_user
        )
        self.table.dirty = True
        try:
            self.control.start(spec)
        except SpawnError as exc:
            record.needs_start = False
            self.table.set_state(record, ProcessState.FAILED, str(exc))
            return
        except BackendFaultError as exc:
            record.needs_start = False
            self.table.set_state(
                record, ProcessState.FAILED, f"cannot start: supervisord error: {exc.fault}"
            )
            return
        record.needs_start = False
        record.started_at = self.clock()
        self._apply(record, self.control.poll().get(record.program))

    # -- backend loss -------------------------------------------------------------

    def _backend_lost(self, reason: str) -> None:
        if self._backend_down:
            return
        log.error(
            "supervisord is gone (%s): reporting its processes lost, starting a new one", reason
        )
        self._lose_all(f"lost: supervisord died ({reason})")
        self._recover()

    def _lose_all(self, msg: str) -> None:
        """Every started live record ends (FAILED with ``msg``); orphans are killed."""
        table = self.table
        strays = []
        for record in table.records.values():
            if record.live and not record.needs_start:
                if record.pid:
                    strays.append((record.pid, record.identity))
                if record.stop_requested:
                    table.set_state(record, ProcessState.TERMINATED)
                else:
                    table.set_state(record, ProcessState.FAILED, msg)
                record.pid = 0
        table.retiring.clear()
        table.dirty = True
        if strays:
            killed = self.control.kill_stray(strays)
            if killed:
                log.warning("killed orphaned processes of the previous supervisord: %s", killed)

    def _recover(self) -> None:
        try:
            attachment = self.control.recover()
        except BackendStartError as exc:
            delay = RECOVERY_BACKOFF[min(self._recovery_attempts, len(RECOVERY_BACKOFF) - 1)]
            self._recovery_attempts += 1
            self._backend_down = True
            self._next_recovery = self.clock() + delay
            log.error("cannot start supervisord (%s); retrying in %.0fs", exc, delay)
            return
        self.table.backend = attachment.instance
        self.table.dirty = True
        self._backend_down = False
        self._recovery_attempts = 0
        log.info("supervisord started again (instance %s)", attachment.instance)

    def _anything_alive(self) -> bool:
        with self._lock:
            try:
                statuses = self.control.poll()
            except (BackendUnavailableError, BackendFaultError):
                return False
            for record in self.table.records.values():
                status = statuses.get(record.program or "")
                if status is not None and status.state is ProgramState.STOPPING:
                    self.stopper.maybe_resignal(record)
            return any(status.state.alive for status in statuses.values())


def _check_upid(u_pid: str) -> None:
    if not u_pid or any(ord(char) < 0x20 for char in u_pid):
        raise BadRequestError(
            "invalid argument u_pid: must be a non-empty name without control characters"
        )
