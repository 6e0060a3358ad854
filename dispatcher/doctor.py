"""The doctor: dispatcher initialisation, system boot and the heartbeat monitor.

The doctor is a leader singleton (docs/architecture.md, decision 8): every
dispatcher instance builds one, and the instance holding leadership runs
:meth:`Doctor.run` for its term.

**Initialisation** (:meth:`Doctor.initialize`), by the stored
dispatcher state:

* ``UNINITIALIZED`` (a database no doctor has initialised yet):
  * with the system-boot flag set: every node is evacuated as a system restart
    (restartable processes become ``150-UNSCHEDULED_PENDING`` in a new round, the
    rest ``700-TERMINATED``); so is every resource left without a node and every
    process still placed or queued; the queue is cleared; the state becomes
    ``SYSTEM_BOOTING``;
  * otherwise: held-back ``UNSCHEDULED_PENDING`` processes are scheduled
    (``200-REQUESTED``, queued, notified) and the state becomes ``OK``;
  * then the dispatcher is marked initialised.
* ``SYSTEM_BOOTING``: the boot flag is watched; when it is cleared, held-back
  processes are scheduled and the state becomes ``OK`` (:meth:`check_system_boot`).
* ``OK``: nothing to repair.

The legacy "initialised" mark was an ephemeral ZooKeeper node, gone once every
dispatcher had stopped; ours is stored, so it survives restarts. A restarted
dispatcher (or a new leader) therefore treats a stored ``OK`` as ``OK`` and a stored
``SYSTEM_BOOTING`` as "keep watching the flag": processes and agents are never
evacuated because a dispatcher restarted. The system-boot evacuation runs on a
database that was never initialised, or after a **whole-system restart** was
begun offline: ``pd-dispatcher system-boot begin`` (refused while a dispatcher
leads) sets the boot flag and marks the dispatcher uninitialised with a boot
initialisation pending (:meth:`~dispatcher.store.base.Store.begin_system_boot`),
the legacy launch plan's "write the boot flag before any dispatcher starts".

The initialisation runs once: only the leader's doctor runs it (leadership is
one database lock), and its last write stores the new state, the "initialised"
mark and the cleared pending mark together
(:meth:`~dispatcher.store.base.Store.finish_initialization`); a later leader
finds the dispatcher initialised. While the pending mark is set the matchmaker
places nothing and ``schedule_process`` waits (briefly) for the initialisation.

**Heartbeat monitor** (:mod:`dispatcher.monitor`): on by default
(``monitor_resource_heartbeats``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final

from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.messaging import Messenger
from dispatcher.monitor import ResourceMonitor
from dispatcher.store.base import Store
from dispatcher.transitions import ProcessStateMachine
from pdcommon.states import ProcessDispatcherState, ProcessState

__all__ = ["Doctor"]

log = logging.getLogger(__name__)

#: Seconds between looks at the boot flag while SYSTEM_BOOTING (the flag may be
#: cleared through another dispatcher instance, which raises no local store event).
DEFAULT_BOOT_POLL_INTERVAL: Final = 1.0
#: Seconds before retrying after an unexpected error (e.g. the database is down).
DEFAULT_ERROR_RETRY: Final = 10.0
#: Shortest time between two monitor passes caused by store events (heartbeats
#: write resources constantly; a pass is a read of every resource).
DEFAULT_MIN_PASS_INTERVAL: Final = 0.2
#: Longest single wait, so that a stop request is seen promptly without a wake-up.
_STOP_POLL: Final = 0.5

#: Processes a system boot takes back: queued or placed on an agent.
_BOOT_HELD: Final = (
    ProcessState.REQUESTED,
    ProcessState.DIED_REQUESTED,
    ProcessState.WAITING,
    ProcessState.ASSIGNED,
    ProcessState.PENDING,
    ProcessState.RUNNING,
    ProcessState.TERMINATING,
)


class Doctor:
    """Initialises the dispatcher, ends system boot, and watches eeagent heartbeats.

    The constructor registers a store listener (waking :meth:`run` on ``resource``,
    ``state`` and ``engine`` writes); build one doctor per store.

    Args:
        store: where everything lives.
        messenger: sends subscriber notifications.
        engines: the engines (heartbeat thresholds per engine).
        transitions: the dispatcher's process state machine.
        evacuation: moves the processes of lost agents on (the one the heartbeat
            handler's registration uses).
        monitor: run the heartbeat monitor (``monitor_resource_heartbeats``).
        clock: returns the current time in epoch seconds.
        boot_poll_interval: see :data:`DEFAULT_BOOT_POLL_INTERVAL`.
        error_retry: see :data:`DEFAULT_ERROR_RETRY`.
        min_pass_interval: see :data:`DEFAULT_MIN_PASS_INTERVAL`.
    """

    def __init__(
        self,
        store: Store,
        messenger: Messenger,
        engines: EngineRegistry,
        *,
        transitions: ProcessStateMachine,
        evacuation: Evacuation,
        monitor: bool = True,
        clock: Callable[[], float] = time.time,
        boot_poll_interval: float = DEFAULT_BOOT_POLL_INTERVAL,
        error_retry: float = DEFAULT_ERROR_RETRY,
        min_pass_interval: float = DEFAULT_MIN_PASS_INTERVAL,
    ) -> None:
        self.store = store
        self.messenger = messenger
        self.engines = engines
        self.monitor = monitor
        self.clock = clock
        self.boot_poll_interval = boot_poll_interval
        self.error_retry = error_retry
        self.min_pass_interval = min_pass_interval
        self.transitions = transitions
        self.evacuation = evacuation
        self.resource_monitor = ResourceMonitor(store, engines, self.evacuation, clock=clock)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        store.add_listener(self._on_change)

    # -- initialisation and system boot -------------------------------------------------

    def initialize(self) -> None:
        """Bring the dispatcher to ``OK`` or ``SYSTEM_BOOTING`` (see the module docstring).

        Called at the start of each doctor term, before anything else. Idempotent.
        """
        with self._lock:
            state = self.store.get_pd_state()
            if state == ProcessDispatcherState.UNINITIALIZED:
                if self.store.is_system_boot():
                    self._system_boot()
                else:
                    count = self.schedule_pending_processes()
                    self.store.finish_initialization(ProcessDispatcherState.OK)
                    log.info("dispatcher initialised: OK (%d held-back processes scheduled)", count)
            else:
                log.info("dispatcher already initialised: %s", state)
            self.check_system_boot()

    def _system_boot(self) -> None:
        """Take every process off every agent and hold it back until boot ends."""
        for node in self.store.list_nodes():
            self.evacuation.evacuate_node(
                node,
                is_system_restart=True,
                dead_process_state=ProcessState.TERMINATED,
                rescheduled_process_state=ProcessState.UNSCHEDULED_PENDING,
            )
        for resource in self.store.list_resources():  # agents whose node is unknown
            self.evacuation.retire_resource(
                resource.resource_id,
                is_system_restart=True,
                dead_process_state=ProcessState.TERMINATED,
                rescheduled_process_state=ProcessState.UNSCHEDULED_PENDING,
                update_node_exclusive=False,
            )
        for process in self.store.list_processes(_BOOT_HELD):
            self.evacuation.evacuate_process(
                process,
                is_system_restart=True,
                dead_process_state=ProcessState.TERMINATED,
                rescheduled_process_state=ProcessState.UNSCHEDULED_PENDING,
            )
        self.store.clear_queue()
        self.store.finish_initialization(ProcessDispatcherState.SYSTEM_BOOTING)
        held = len(self.store.list_processes([ProcessState.UNSCHEDULED_PENDING]))
        log.info("dispatcher initialised: SYSTEM_BOOTING (%d processes held back)", held)

    def check_system_boot(self) -> bool:
        """End system boot if the boot flag was cleared.

        Called when the flag may have changed (a ``state`` store event, and
        periodically while booting). In ``SYSTEM_BOOTING`` with the flag cleared,
        held-back processes are scheduled and the state becomes ``OK``.

        Returns:
            True while the dispatcher is still ``SYSTEM_BOOTING``.
        """
        with self._lock:
            if self.store.get_pd_state() != ProcessDispatcherState.SYSTEM_BOOTING:
                return False
            if self.store.is_system_boot():
                return True
            count = self.schedule_pending_processes()
            self.store.set_pd_state(ProcessDispatcherState.OK)
            log.info("system boot ended: OK (%d held-back processes scheduled)", count)
            return False

    def schedule_pending_processes(self) -> int:
        """Schedule every ``150-UNSCHEDULED_PENDING`` process (REQUESTED, same round).

        Each is queued and its subscribers are notified. A process scheduled or
        terminated meanwhile is left alone.

        Returns:
            How many processes were scheduled.
        """
        count = 0
        for process in self.store.list_processes([ProcessState.UNSCHEDULED_PENDING]):
            if process.state != ProcessState.UNSCHEDULED_PENDING:
                continue
            written, changed = self.transitions.process_change_state(
                process, ProcessState.REQUESTED
            )
            if changed:
                self.store.enqueue(written.upid, written.round)
                count += 1
        return count

    # -- heartbeat monitor --------------------------------------------------------------

    def monitor_once(self) -> float | None:
        """One monitor pass (see :mod:`dispatcher.monitor`).

        Returns:
            Seconds until the next check is due, or ``None`` when none is scheduled.
        """
        return self.resource_monitor.check()

    # -- the loop -----------------------------------------------------------------------

    def wake(self) -> None:
        """Make :meth:`run` look again now (e.g. right after its stop event is set)."""
        self._wake.set()

    def run(self, stop_event: threading.Event) -> None:
        """Act as the doctor until ``stop_event`` is set (one leadership term).

        Initialises the dispatcher, then loops: ends system boot when its flag is
        cleared, and runs a monitor pass when a resource changed or a check is due.
        Between passes it sleeps until a store event (``resource``, ``state``,
        ``engine``), the next due check, or the stop event; without any of those it
        does nothing. Errors are logged and retried after ``error_retry`` seconds;
        they never end the loop.

        Args:
            stop_event: set when the term ends.
        """
        self.resource_monitor.reset()
        while not stop_event.is_set():
            try:
                self.initialize()
                break
            except Exception:
                log.exception("doctor: initialisation failed; retrying")
                self._sleep(stop_event, self.error_retry)
        last_pass = -math.inf
        while not stop_event.is_set():
            self._wake.clear()
            delay: float | None
            try:
                booting = self.check_system_boot()
                delay = None
                if self.monitor:
                    since = time.monotonic() - last_pass
                    if since < self.min_pass_interval:
                        self._sleep(stop_event, self.min_pass_interval - since)
                    self._wake.clear()  # the pass below sees every change made so far
                    last_pass = time.monotonic()
                    delay = self.monitor_once()
                if booting:
                    delay = (
                        self.boot_poll_interval
                        if delay is None
                        else min(delay, self.boot_poll_interval)
                    )
            except Exception:
                log.exception("doctor: pass failed; retrying in %g s", self.error_retry)
                delay = self.error_retry
            self._sleep(stop_event, delay, wakeable=True)

    def _sleep(
        self, stop_event: threading.Event, delay: float | None, wakeable: bool = False
    ) -> None:
        """Wait ``delay`` seconds (forever if None), for a store event if ``wakeable``,
        or for the stop event."""
        deadline = math.inf if delay is None else time.monotonic() + delay
        while not stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            slice_ = min(remaining, _STOP_POLL)
            if wakeable:
                if self._wake.wait(slice_):
                    return
            elif stop_event.wait(slice_):
                return

    def _on_change(self, kind: str) -> None:
        if kind in ("resource", "state", "engine"):
            self._wake.set()
