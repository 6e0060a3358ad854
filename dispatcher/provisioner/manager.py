"""The provisioner: turns each engine's need into nodes, and keeps their lifecycle.

:class:`Provisioner` is the :class:`~dispatcher.needs.NeedSink` of the matchmaker:
:meth:`~Provisioner.register_need` records the target and wakes the loop, which
creates, replaces and destroys nodes through the engine's site driver and keeps
each node's :class:`~dispatcher.model.VM` record (shown in ``dump``)::

    register_need ──▶ targets ──▶ step(): sync · observe · scale · dispatch · prune
                                              │
                      executor (max_parallel) ◀┘ create_node / destroy_node

A pass (:meth:`~Provisioner.step`):

* **sync** (first pass of a leadership term, then every ``sync_interval``): list
  each site's nodes; adopt listed nodes without a record (``running`` when an agent
  of theirs is registered, else ``pending``), mark records whose node vanished
  ``failed``, destroy listed nodes whose record is final (orphans);
* **observe**: ``pending`` nodes with a registered agent become ``running``;
  ``pending`` nodes past the site's ``boot_timeout`` and ``running`` nodes whose
  Node record was removed (declared dead) are destroyed (final state ``failed``);
* **scale**: an engine below its need gets new ``requested`` records; one above it
  retires nodes: first the ``retirable_nodes`` given with the need (newest first),
  then not yet created ones, then ``pending`` ones, newest first, then ``running``
  ones that hold no process (those whose agents are all ``DISABLED``, retired by
  an earlier term, first; then newest first). Such a node's agents are set
  ``DISABLED`` before it is chosen, with a versioned write that fails if a
  process was placed meanwhile; a running node that holds a process is never
  chosen;
* **dispatch**: submits create and destroy calls whose backoff expired, at most
  ``max_parallel`` in flight; a create first announces the node (its Node record,
  domain ``pd_domain_<engine>``) so its agents' first heartbeats register them;
* **prune**: final records older than ``history`` seconds are removed.

Errors: a recoverable error (:class:`RecoverableProvisionerError`) is retried
with exponential backoff (``retry_initial`` doubled up to ``retry_max``, at least
the provider's ``retry_after``); throttling also holds every call to the site for
that long; a fatal create error fails the record, and the replacement waits for a
backoff that grows with consecutive fatal errors of the site. The last error and
attempt count stay on the record.

Construction and running, from the daemon (one loop per leadership term)::

    from dispatcher.provisioner.manager import Provisioner

    provisioner = Provisioner.from_settings(settings, store, engines, registration)
    matchmaker_registrar = NeedRegistrar(store, provisioner)    # the NeedSink
    store.add_listener(provisioner.on_store_change)              # optional: faster
    # in the leader's term thread (term_stop is set when leadership ends):
    provisioner.run(term_stop)
    # at shutdown, after the term ended:
    provisioner.close()

``registration`` is the dispatcher's :class:`~dispatcher.registration.Registration`
(its ``node_running`` / ``node_dead`` record and evacuate nodes). Tests build it
with explicit sites, an :class:`~dispatcher.provisioner.fake.InlineExecutor` and a
clock, and call :meth:`~Provisioner.step`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.engines import DOMAIN_PREFIX, EngineRegistry
from dispatcher.model import VM, Node, Resource
from dispatcher.provisioner import lifecycle as lc
from dispatcher.provisioner.base import (
    NodeRequest,
    ProvidedNode,
    SupervisordStopper,
    VMState,
    new_node_id,
)
from dispatcher.provisioner.errors import (
    NodeNotFoundError,
    ProvisionerError,
    RecoverableProvisionerError,
    ThrottledError,
)
from dispatcher.provisioner.sites import Site, build_sites
from dispatcher.store.base import Store
from dispatcher.store.modify import modify, retry_conflicts
from pdcommon.settings import DEFAULT_SITE, EngineSettings, ProvisionerSettings, Settings
from pdcommon.states import ExecutionResourceState, InstanceState

__all__ = ["NodeEvents", "Provisioner"]

log = logging.getLogger(__name__)

#: Longest sleep of :meth:`Provisioner.run` between two looks at its deadlines.
_LOOP_TICK = 0.25


class NodeEvents(Protocol):
    """Where node arrivals and departures go (:class:`~dispatcher.registration.Registration`)."""

    def node_running(
        self, node_id: str, domain_id: str | None, properties: dict[str, Any] | None
    ) -> None:
        """Record the node (its agents' first heartbeats then register them)."""

    def node_dead(self, node_id: str, state: str) -> None:
        """Evacuate the node and remove its record (unknown nodes are ignored)."""


class Provisioner:
    """Acts on engine needs through site drivers; see the module docstring.

    Args:
        store: where VM, node and resource records live.
        engines: the engines (engines added with ``add_engine`` are merged in from
            the store when needed).
        sites: site name → site (driver and boot timeout).
        node_events: records and evacuates nodes.
        settings: intervals, backoff, parallelism, history.
        executor: runs driver calls (default: a thread pool of ``max_parallel``
            threads, shut down by :meth:`close`).
        clock: epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        engines: EngineRegistry,
        sites: Mapping[str, Site],
        node_events: NodeEvents,
        *,
        settings: ProvisionerSettings | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.engines = engines
        self.sites = dict(sites)
        self.node_events = node_events
        self.settings = settings or ProvisionerSettings()
        self.clock = clock
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=self.settings.max_parallel, thread_name_prefix="provisioner"
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._targets: dict[str, int] = {}
        self._retirable: dict[str, list[str]] = {}
        self._inflight: dict[str, Future[None]] = {}
        self._throttled_until: dict[str, float] = {}
        self._create_hold: dict[str, float] = {}
        self._fatal_streak: dict[str, int] = {}
        self._last_sync: float | None = None
        self._warned: set[str] = set()
        #: Sites reconciled once by this process (nodes kept from before are logged then).
        self._reconciled: set[str] = set()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: Store,
        engines: EngineRegistry,
        node_events: NodeEvents,
        stop_supervisord: SupervisordStopper | None = None,
        **kwargs: Any,
    ) -> Provisioner:
        """The provisioner of a dispatcher: its sites are built from ``settings``.

        Raises:
            ConfigError: a site cannot work as configured.
            ValueError: a site's options are invalid.
        """
        sites = build_sites(settings, stop_supervisord=stop_supervisord)
        return cls(store, engines, sites, node_events, settings=settings.provisioner, **kwargs)

    def __repr__(self) -> str:
        return f"Provisioner(sites={sorted(self.sites)}, targets={self.targets})"

    # -- NeedSink -----------------------------------------------------------------------

    def register_need(self, engine_id: str, need: int, retirable_nodes: list[str]) -> None:
        """Keep ``need`` nodes of ``engine_id``; retire ``retirable_nodes`` first (newest first)."""
        with self._lock:
            self._targets[engine_id] = need
            earlier = [n for n in self._retirable.get(engine_id, []) if n not in retirable_nodes]
            self._retirable[engine_id] = [*retirable_nodes, *earlier]
        self._wake.set()

    @property
    def targets(self) -> dict[str, int]:
        """The needs registered so far, by engine (a copy)."""
        with self._lock:
            return dict(self._targets)

    def wake(self) -> None:
        """Have :meth:`run` make a pass now."""
        self._wake.set()

    def on_store_change(self, kind: str) -> None:
        """A store listener: a new agent or node makes the loop look again at once."""
        if kind in ("resource", "node"):
            self._wake.set()

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Make passes until ``stop`` is set: when woken, at least every ``interval``
        seconds, and when a backoff expires. The first pass reconciles (sync).

        Driver calls still in flight when it returns finish in the background.
        """
        self._last_sync = None
        log.info("provisioner running (sites: %s)", ", ".join(sorted(self.sites)))
        while not stop.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception:  # a store outage or a bug must not end the loop
                log.exception("provisioner pass failed")
            deadline = time.monotonic() + self._next_delay()
            while not stop.is_set() and not self._wake.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(min(_LOOP_TICK, remaining))
        log.info("provisioner stopped")

    def close(self) -> None:
        """Wait for driver calls in flight, then release the drivers (nodes keep running)."""
        if self._own_executor:
            self._executor.shutdown(wait=True)
        for site in self.sites.values():
            try:
                site.driver.close()
            except Exception:  # close must not raise; a driver bug is only logged
                log.exception("closing the driver of site %s failed", site.name)

    def step(self) -> None:
        """One pass: sync when due, observe, scale, dispatch and prune (module docstring)."""
        now = self.clock()
        if self._last_sync is None or now - self._last_sync >= self.settings.sync_interval:
            self.sync()
        vms = {vm.node_id: vm for vm in self.store.list_vms()}
        self._observe(vms, now)
        self._scale(vms, now)
        self._dispatch(vms, now)
        self._prune(vms, now)

    def describe(self) -> dict[str, Any]:
        """For ``dump``: the registered needs and every VM record."""
        return {
            "needs": self.targets,
            "vms": [vm.to_dict() for vm in self.store.list_vms()],
        }

    # -- sync ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Reconcile the records with what each site's driver lists (module docstring)."""
        now = self.clock()
        complete = True
        for site in self.sites.values():
            if not site.driver.provisions:
                continue
            if self._throttled_until.get(site.name, 0.0) > now:
                complete = False
                continue
            before = [vm for vm in self.store.list_vms() if vm.site == site.name]
            with self._lock:
                busy = set(self._inflight)
            try:
                listed = site.driver.list_nodes()
            except ProvisionerError as exc:
                log.warning("cannot list the nodes of site %s: %s", site.name, exc)
                self._retry_delay(site, exc, 1, now)
                complete = False
                continue
            self._reconcile(site, before, busy, listed, now)
        if complete:
            self._last_sync = now

    def _reconcile(
        self, site: Site, before: list[VM], busy: set[str], listed: list[ProvidedNode], now: float
    ) -> None:
        records = {vm.node_id: vm for vm in before}
        seen = {node.node_id for node in listed}
        with_agents = {resource.node_id for resource in self.store.list_resources()}
        if site.name not in self._reconciled:
            self._reconciled.add(site.name)
            kept = sorted(
                node.node_id
                for node in listed
                if node.node_id in records and records[node.node_id].state in VMState.ACTIVE
            )
            if kept:
                log.info(
                    "site %s: %d node(s) from before this start still run, kept with their "
                    "agents: %s",
                    site.name,
                    len(kept),
                    ", ".join(kept),
                )
        for node in listed:
            vm = records.get(node.node_id)
            if vm is None:
                self._adopt(site, node, node.node_id in with_agents, now)
            elif vm.node_id in busy:
                continue
            elif vm.state in VMState.FINAL:
                log.warning("node %s is %s but still exists: destroying it", vm.node_id, vm.state)
                self._update(vm, partial(lc.orphan_found, node=node, now=now))
            elif vm.state == VMState.REQUESTED:
                log.info("node %s exists already: it is pending", vm.node_id)
                self._update(vm, partial(lc.to_pending, node=node, now=now))
        for vm in before:
            if vm.node_id in seen or vm.node_id in busy:
                continue
            if vm.state in (VMState.PENDING, VMState.RUNNING):
                log.warning("node %s vanished from site %s", vm.node_id, site.name)
                gone = partial(lc.to_final, state=VMState.FAILED, reason="vanished", now=now)
                if self._update(vm, gone):
                    self.node_events.node_dead(vm.node_id, InstanceState.FAILED)
            elif vm.state == VMState.TERMINATING and vm.provider_id:
                self._update(vm, partial(lc.to_final, state=None, reason=None, now=now))

    def _adopt(self, site: Site, node: ProvidedNode, has_agents: bool, now: float) -> None:
        engine_id = node.engine_id
        if engine_id is None or self._engine(engine_id) is None:
            log.warning("node %s has unknown engine %r: not adopted", node.node_id, engine_id)
            return
        vm = VM(
            node_id=node.node_id,
            engine_id=engine_id,
            site=site.name,
            state=VMState.RUNNING if has_agents else VMState.PENDING,
            provider_id=node.provider_id,
            properties=dict(node.properties),
            reason="adopted",
            requested_at=node.created_at or now,
            state_time=now,
        )
        try:
            self.store.add_vm(vm)
        except WriteConflictError:
            return
        self.node_events.node_running(node.node_id, DOMAIN_PREFIX + engine_id, vm.properties)
        log.info("adopted node %s of engine %s (%s)", node.node_id, engine_id, vm.state)

    # -- observe ------------------------------------------------------------------------

    def _observe(self, vms: dict[str, VM], now: float) -> None:
        nodes = {node.node_id: node for node in self.store.list_nodes()}
        with_agents = {resource.node_id for resource in self.store.list_resources()}
        with self._lock:
            busy = set(self._inflight)
        for vm in list(vms.values()):
            if vm.node_id in busy:
                continue
            node = nodes.get(vm.node_id)
            if vm.state == VMState.PENDING:
                if vm.node_id in with_agents or (node is not None and node.resources):
                    log.info("node %s is running", vm.node_id)
                    self._update(vm, partial(lc.set_state, state=VMState.RUNNING, now=now), vms)
                    continue
                timeout = self._boot_timeout(vm.site)
                if timeout is not None and now - vm.state_time > timeout:
                    reason = f"no agent registered within the boot timeout ({timeout:g}s)"
                    log.warning("node %s: %s; replacing it", vm.node_id, reason)
                    self._terminate(vm, VMState.FAILED, reason, now, vms)
                elif node is None:
                    self._announce(vm)
            elif vm.state == VMState.RUNNING and node is None:
                reason = "its node was declared dead"
                log.warning("node %s: %s; replacing it", vm.node_id, reason)
                self._terminate(vm, VMState.FAILED, reason, now, vms)

    # -- scale --------------------------------------------------------------------------

    def _scale(self, vms: dict[str, VM], now: float) -> None:
        with self._lock:
            targets = dict(self._targets)
        for engine_id, target in targets.items():
            site = self._site_for(engine_id)
            if site is None or not site.driver.provisions:
                continue
            active = [
                v for v in vms.values() if v.engine_id == engine_id and v.state in VMState.ACTIVE
            ]
            if len(active) < target:
                for _ in range(target - len(active)):
                    self._request(engine_id, site, vms, now)
            elif len(active) > target:
                for vm in self._victims(engine_id, active, len(active) - target):
                    self._retire(vm, vms, now)

    def _request(self, engine_id: str, site: Site, vms: dict[str, VM], now: float) -> None:
        vm = VM(
            node_id=new_node_id(engine_id),
            engine_id=engine_id,
            site=site.name,
            state=VMState.REQUESTED,
            requested_at=now,
            state_time=now,
            next_attempt=self._create_hold.get(site.name, 0.0),
        )
        self.store.add_vm(vm)
        vms[vm.node_id] = self.store.get_vm(vm.node_id) or vm
        log.info("engine %s: requested node %s on site %s", engine_id, vm.node_id, site.name)

    def _victims(self, engine_id: str, active: list[VM], count: int) -> list[VM]:
        by_id = {vm.node_id: vm for vm in active}
        with self._lock:
            named = [n for n in self._retirable.get(engine_id, []) if n in by_id]
            self._retirable[engine_id] = named[count:]
        chosen = [by_id[node_id] for node_id in named[:count]]
        for state in (VMState.REQUESTED, VMState.PENDING):
            spare = [v for v in active if v.state == state and v not in chosen]
            spare.sort(key=lambda v: (v.requested_at, v.node_id), reverse=True)
            chosen += spare[: count - len(chosen)]
        if len(chosen) < count:
            running = [v for v in active if v.state == VMState.RUNNING and v not in chosen]
            chosen += self._idle_running(running, count - len(chosen))
        return chosen[:count]

    def _idle_running(self, running: list[VM], count: int) -> list[VM]:
        """Up to ``count`` of ``running`` that hold no process, their agents disabled.

        Nodes whose agents are all ``DISABLED`` (retired already) come first, then
        the newest. A node that receives a process while its agents are being
        disabled is skipped.
        """
        if not running:
            return []
        agents: dict[str, list[Resource]] = {}
        for resource in self.store.list_resources():
            agents.setdefault(resource.node_id, []).append(resource)

        def order(vm: VM) -> tuple[bool, float, str]:
            mine = agents.get(vm.node_id, [])
            retired = all(r.state == ExecutionResourceState.DISABLED for r in mine)
            return (retired, vm.requested_at, vm.node_id)

        idle = [v for v in running if not any(r.assigned for r in agents.get(v.node_id, []))]
        idle.sort(key=order, reverse=True)
        chosen: list[VM] = []
        for vm in idle:
            if len(chosen) >= count:
                break
            if self._disable_idle(agents.get(vm.node_id, [])):
                chosen.append(vm)
        return chosen

    def _disable_idle(self, agents: list[Resource]) -> bool:
        """Set each agent ``DISABLED`` unless it holds a process; False if one does."""
        busy = False

        def disable(resource: Resource) -> bool:
            nonlocal busy
            if resource.assigned:
                busy = True
                return False
            if resource.state == ExecutionResourceState.DISABLED:
                return False
            resource.state = ExecutionResourceState.DISABLED
            return True

        for agent in agents:
            get = partial(self.store.get_resource, agent.resource_id)
            modify(
                get, self.store.update_resource, disable, record=f"resource {agent.resource_id!r}"
            )
            if busy:
                log.info("node %s received a process: not retired", agent.node_id)
                return False
        return True

    def _retire(self, vm: VM, vms: dict[str, VM], now: float) -> None:
        with self._lock:
            busy = vm.node_id in self._inflight
        if vm.state == VMState.REQUESTED and vm.provider_id is None and not busy:
            log.info("node %s: cancelled (not created yet)", vm.node_id)
            cancel = partial(lc.to_final, state=VMState.TERMINATED, reason="cancelled", now=now)
            if self._update(vm, cancel, vms):
                self.node_events.node_dead(vm.node_id, InstanceState.TERMINATED)
            return
        log.info("node %s: retiring it (scale-down)", vm.node_id)
        self._terminate(vm, VMState.TERMINATED, "scale-down", now, vms)

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, vms: dict[str, VM], now: float) -> None:
        waiting = [v for v in vms.values() if v.state in (VMState.REQUESTED, VMState.TERMINATING)]
        # Creates first, oldest demand first; then destroys, newest node first (FILO).
        waiting.sort(
            key=lambda v: (
                (0, v.requested_at, v.node_id)
                if v.state == VMState.REQUESTED
                else (1, -v.requested_at, v.node_id)
            )
        )
        for vm in waiting:
            site = self.sites.get(vm.site)
            if site is None or vm.next_attempt > now:
                continue
            if self._throttled_until.get(site.name, 0.0) > now:
                continue
            with self._lock:
                if vm.node_id in self._inflight:
                    continue
                if len(self._inflight) >= self.settings.max_parallel:
                    return
            if vm.state == VMState.REQUESTED:
                request = self._node_request(vm)
                if request is None:
                    continue
                self._announce(vm)
                self._submit(vm.node_id, self._create, vm, site, request)
            else:
                self._submit(vm.node_id, self._destroy, vm, site)

    def _submit(self, node_id: str, fn: Callable[..., None], *args: Any) -> None:
        future: Future[None] = Future()
        with self._lock:
            self._inflight[node_id] = future
        try:
            submitted = self._executor.submit(fn, *args)
        except RuntimeError:  # the executor was shut down
            with self._lock:
                self._inflight.pop(node_id, None)
            return
        submitted.add_done_callback(lambda done: self._finished(node_id, done))

    def _finished(self, node_id: str, done: Future[None]) -> None:
        with self._lock:
            self._inflight.pop(node_id, None)
        error = done.exception()
        if error is not None:
            log.error("provisioner call for node %s failed", node_id, exc_info=error)
        self._wake.set()

    def _node_request(self, vm: VM) -> NodeRequest | None:
        engine = self._engine(vm.engine_id)
        if engine is None:
            if vm.engine_id not in self._warned:
                self._warned.add(vm.engine_id)
                log.error("node %s: engine %s is unknown; not created", vm.node_id, vm.engine_id)
            return None
        return NodeRequest(
            node_id=vm.node_id,
            engine_id=vm.engine_id,
            slots=engine.slots,
            replicas=engine.replicas,
            heartbeat=engine.heartbeat_period,
        )

    def _announce(self, vm: VM) -> None:
        properties = {"site": vm.site, **vm.properties}
        self.node_events.node_running(vm.node_id, DOMAIN_PREFIX + vm.engine_id, properties)

    # -- driver calls (executor threads) -------------------------------------------------

    def _create(self, vm: VM, site: Site, request: NodeRequest) -> None:
        try:
            node = site.driver.create_node(request)
        except ProvisionerError as exc:
            self._create_failed(vm, site, exc)
            return
        now = self.clock()
        with self._lock:
            self._fatal_streak.pop(site.name, None)
            self._create_hold.pop(site.name, None)

        self._update(vm, partial(lc.created, node=node, now=now))
        self._merge_node_properties(vm.node_id, node.properties)
        log.info("node %s created on site %s (%s)", vm.node_id, site.name, node.provider_id)

    def _create_failed(self, vm: VM, site: Site, exc: ProvisionerError) -> None:
        now = self.clock()
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RecoverableProvisionerError):
            delay = self._retry_delay(site, exc, vm.attempts + 1, now)
            log.warning("node %s: create failed (%s); retrying in %.1fs", vm.node_id, error, delay)
            self._update(vm, partial(lc.retry_later, error=error, now=now, delay=delay))
            return
        with self._lock:
            streak = self._fatal_streak[site.name] = self._fatal_streak.get(site.name, 0) + 1
            self._create_hold[site.name] = now + self._backoff(streak)
        log.error("node %s: create failed for good: %s", vm.node_id, error)

        fail = partial(
            lc.failed_attempt,
            error=error,
            state=VMState.FAILED,
            reason=f"creation failed: {exc.what}",
            now=now,
        )
        self._update(vm, fail)
        self.node_events.node_dead(vm.node_id, InstanceState.FAILED)

    def _destroy(self, vm: VM, site: Site) -> None:
        self.node_events.node_dead(vm.node_id, InstanceState.TERMINATING)
        try:
            site.driver.destroy_node(vm.node_id, vm.provider_id)
        except NodeNotFoundError:
            log.info("node %s was already gone", vm.node_id)
        except ProvisionerError as exc:
            now = self.clock()
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, RecoverableProvisionerError):
                delay = self._retry_delay(site, exc, vm.attempts + 1, now)
                log.warning(
                    "node %s: destroy failed (%s); retrying in %.1fs", vm.node_id, error, delay
                )
                self._update(vm, partial(lc.retry_later, error=error, now=now, delay=delay))
                return
            log.error("node %s: destroy failed for good: %s", vm.node_id, error)

            fail = partial(
                lc.failed_attempt,
                error=error,
                state=VMState.FAILED,
                reason="destroy failed",
                now=now,
            )
            self._update(vm, fail)
            return
        now = self.clock()
        self._update(vm, partial(lc.to_final, state=None, reason=None, now=now))
        log.info("node %s destroyed (%s)", vm.node_id, vm.reason)

    # -- helpers ------------------------------------------------------------------------

    def _terminate(
        self, vm: VM, final_state: str, reason: str, now: float, vms: dict[str, VM]
    ) -> None:
        change = partial(lc.to_terminating, final_state=final_state, reason=reason, now=now)
        self._update(vm, change, vms)

    def _backoff(self, attempts: int) -> float:
        initial, ceiling = self.settings.retry_initial, self.settings.retry_max
        return float(min(ceiling, initial * 2 ** max(0, attempts - 1)))

    def _retry_delay(self, site: Site, exc: ProvisionerError, attempts: int, now: float) -> float:
        """Seconds before attempt ``attempts + 1``; a throttled site is held that long."""
        retry_after = getattr(exc, "retry_after", None) or 0.0
        delay = max(float(retry_after), self._backoff(attempts))
        if isinstance(exc, ThrottledError):
            with self._lock:
                self._throttled_until[site.name] = now + delay
        return delay

    def _next_delay(self) -> float:
        """Seconds until the next pass is due (interval, or an expiring backoff)."""
        now = self.clock()
        delay = self.settings.interval
        waiting = [v.next_attempt for v in self.store.list_vms() if v.state in lc.WAITING]
        holds = [*self._throttled_until.values(), *waiting]
        future = [at - now for at in holds if at > now]
        if future:
            delay = min(delay, min(future))
        return max(0.0, delay)

    def _update(
        self, vm: VM, change: Callable[[VM], bool], vms: dict[str, VM] | None = None
    ) -> bool:
        """Apply ``change`` to the stored record (re-read on conflicts); True if written.

        Raises:
            WriteRetriesExhaustedError: every write attempt lost its race (nothing
                written: the next pass decides again on a fresh read).
        """
        current: VM | None = vm

        def attempt() -> bool:
            nonlocal current
            if current is None or not change(current):
                return False
            try:
                self.store.update_vm(current)
            except WriteConflictError:
                current = self.store.get_vm(vm.node_id)
                raise
            except NotFoundError:
                return False
            if vms is not None:
                vms[current.node_id] = current
            return True

        return retry_conflicts(f"vm {vm.node_id!r}", attempt)

    def _merge_node_properties(self, node_id: str, properties: dict[str, Any]) -> None:
        if not properties:
            return

        def merge(node: Node) -> bool:
            node.properties = {**node.properties, **properties}
            return True

        modify(
            lambda: self.store.get_node(node_id),
            self.store.update_node,
            merge,
            record=f"node {node_id!r}",
        )

    def _engine(self, engine_id: str) -> EngineSettings | None:
        engine = self.engines.get(engine_id)
        if engine is None:
            self.engines.merge_stored(self.store.list_engines())
            engine = self.engines.get(engine_id)
        return engine

    def _site_for(self, engine_id: str) -> Site | None:
        engine = self._engine(engine_id)
        if engine is None:
            return None
        name = engine.site or DEFAULT_SITE
        site = self.sites.get(name)
        if site is None and name not in self._warned:
            self._warned.add(name)
            log.error("engine %s: provisioner site %s is not configured", engine_id, name)
        return site

    def _boot_timeout(self, site_name: str) -> float | None:
        site = self.sites.get(site_name)
        return site.boot_timeout if site is not None else None

    def _prune(self, vms: dict[str, VM], now: float) -> None:
        horizon = now - self.settings.history
        for vm in list(vms.values()):
            if vm.state in VMState.FINAL and vm.state_time < horizon:
                with contextlib.suppress(NotFoundError):
                    self.store.remove_vm(vm.node_id)
                vms.pop(vm.node_id, None)
