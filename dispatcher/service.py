"""The dispatcher daemon: the core's operations served over dashi RPC.

``DispatcherService`` owns the object graph of one ``pd-dispatcher`` process::

    RpcService (worker threads) ──▶ ProcessDispatcherCore ──▶ Store (SQL)
                       │        └─▶ HeartbeatHandler (heartbeat, node_state,
                       │            add_engine, get_process_logs)
                       │        └─▶ HeartbeatIntake (fired heartbeats, latest per
                       │            agent) ──(own threads)──▶ HeartbeatHandler
                       └─ every instance serves every RPC
    LeaderElector ──(while leading)──▶ Matchmaker, Doctor, Provisioner threads
                                        Matchmaker ──needs──▶ Provisioner ──▶ drivers
    RpcMessenger ──▶ agents (launch, terminate, cleanup), subscribers

The matchmaker, the doctor and the provisioner are leader singletons (see
docs/architecture.md, decision 8):
every instance builds them, and only the instance holding the database lock runs
them, one thread each per leadership term. The provisioner exists when some engine's
site provisions nodes (``local`` or ``libcloud``); with ``static`` sites only, nodes
come and go with ``node_state`` and no needs are acted on. Collaborators are injected; :meth:`DispatcherService.build`
makes the default graph from settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dashi.client import RpcClient
from dashi.messenger import RpcMessenger
from dashi.operations import operations_of
from dashi.service import RpcService
from dispatcher.core import ProcessDispatcherCore
from dispatcher.doctor import Doctor
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.events import EventLog
from dispatcher.heartbeat_intake import HeartbeatIntake
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.leadership import LeaderElector, claim_database, lock_for_database
from dispatcher.matchmaker import Matchmaker
from dispatcher.messaging import Messenger
from dispatcher.needs import NeedRegistrar, NeedSink
from dispatcher.provisioner.base import SupervisordStopper
from dispatcher.provisioner.manager import Provisioner
from dispatcher.registration import Registration
from dispatcher.replay import RequestReplay
from dispatcher.store.base import Store
from dispatcher.transitions import ProcessStateMachine
from pdcommon.auth import AccessGuard, OperationRole
from pdcommon.errors import ConfigError
from pdcommon.heartbeat_messages import HeartbeatRequest
from pdcommon.settings import Settings
from pdcommon.wire import access_guard, broker_config, dispatcher_signer

__all__ = ["RPC_OPERATIONS", "DispatcherService", "engine_registry", "operation_roles"]

log = logging.getLogger(__name__)

#: Every operation a dispatcher serves (the core's, then the health handler's).
RPC_OPERATIONS = tuple(
    op.name for op in (*operations_of(ProcessDispatcherCore), *operations_of(HeartbeatHandler))
)

#: Threads besides the RPC workers that use the store: matchmaker, doctor,
#: provisioner, and one spare.
_STORE_THREADS_BESIDES_RPC = 4
#: Seconds :meth:`DispatcherService.stop` waits for each leader thread.
_JOIN_TIMEOUT = 10.0


def operation_roles() -> dict[str, OperationRole]:
    """Each served operation's least role, from its request model (see :mod:`pdcommon.auth`)."""
    return {
        op.name: op.model.role
        for op in (*operations_of(ProcessDispatcherCore), *operations_of(HeartbeatHandler))
    }


def engine_registry(settings: Settings) -> EngineRegistry:
    """The configured engines, checked.

    Raises:
        ConfigError: the default engine is unknown, a ``process_engines`` entry
            names an unknown engine, or several engines are configured without a
            ``default_engine``.
    """
    pd = settings.processdispatcher
    if not pd.engines:
        raise ConfigError("processdispatcher.engines: at least one engine must be configured")
    if pd.effective_default_engine is None:
        raise ConfigError(
            "processdispatcher.default_engine: required when several engines are configured "
            f"({', '.join(sorted(pd.engines))})"
        )
    return EngineRegistry.from_settings(pd)


def _provisioner(
    settings: Settings,
    store: Store,
    engines: EngineRegistry,
    registration: Registration,
    stop_supervisord: SupervisordStopper | None = None,
) -> Provisioner | None:
    """The provisioner, unless every site is ``static``."""
    provisioner = Provisioner.from_settings(
        settings, store, engines, registration, stop_supervisord=stop_supervisord
    )
    if not any(getattr(site.driver, "provisions", True) for site in provisioner.sites.values()):
        provisioner.close()
        return None
    store.add_listener(provisioner.on_store_change)
    return provisioner


class DispatcherService:
    """One running dispatcher.

    Args:
        settings: the process's settings.
        store: where state lives.
        core: the definition and process RPCs.
        heartbeats: the health RPCs.
        rpc: the service the operations are registered on.
        matchmaker: run while this instance leads (``None``: never).
        doctor: run while this instance leads (``None``: never).
        provisioner: run while this instance leads (``None``: nothing is provisioned).
        elector: decides leadership (``None`` with no singletons).
        messenger_client: the client used for one-way messages (closed on stop).
        guard: checks every request before its handler: principals and roles,
            and heartbeats signed with their agent's key (``None``, or a guard
            with nothing configured: every request is taken, as legacy peers expect).
        intake: takes fired heartbeats off the RPC workers (``None``: one applying
            through ``heartbeats`` is made); called heartbeats are applied directly.
        events: the state machine's event log, written in batches by a thread of
            its own while the service runs (``None``: it writes each event at once).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        core: ProcessDispatcherCore,
        heartbeats: HeartbeatHandler | None = None,
        rpc: RpcService,
        matchmaker: Matchmaker | None = None,
        doctor: Doctor | None = None,
        provisioner: Provisioner | None = None,
        elector: LeaderElector | None = None,
        messenger_client: RpcClient | None = None,
        guard: AccessGuard | None = None,
        intake: HeartbeatIntake | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        self._events_stop = threading.Event()
        self._events_thread: threading.Thread | None = None
        self.store = store
        self.core = core
        self.heartbeats = heartbeats
        self.rpc = rpc
        self.matchmaker = matchmaker
        self.doctor = doctor
        self.provisioner = provisioner
        self.elector = elector
        self.messenger_client = messenger_client
        if intake is None and heartbeats is not None:
            intake = HeartbeatIntake(heartbeats.heartbeat)
        self.intake = intake
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        replay = RequestReplay(store)
        self.guard = guard if guard is not None and guard.active else None
        for op in operations_of(core):
            self.rpc.handle(
                op.name,
                getattr(core, op.attribute),
                validate=False,
                large_reply=op.large_reply,
                replay=replay if op.model.replay is not None else None,
                guard=self.guard,
            )
        if heartbeats is not None:
            for op in operations_of(heartbeats):
                beat = op.model is HeartbeatRequest
                self.rpc.handle(
                    op.name,
                    getattr(heartbeats, op.attribute),
                    sender_kwarg="sender" if beat else None,
                    validate=False,
                    large_reply=op.large_reply,
                    guard=self.guard,
                    fire=intake.heartbeat if beat and intake else None,
                )

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        need_sink: NeedSink | None = None,
        launch_messenger: Callable[[Messenger], Messenger] | None = None,
        stop_supervisord: SupervisordStopper | None = None,
    ) -> DispatcherService:
        """The default object graph: SQL store (migrated), AMQP messenger and service,
        the health handler, and the leader's matchmaker, doctor and provisioner.

        Args:
            settings: the dispatcher's settings.
            need_sink: receives the engines' needs instead of the provisioner (tests).
            launch_messenger: wraps the messenger the matchmaker launches through
                (tests that lose or fail launches).
            stop_supervisord: how ``local`` sites stop the supervisord an agent
                left behind (the agent package's ``stop_left_supervisord``; the
                dispatcher does not import the agent).
        """
        from dispatcher.store.engine import PG_POOL_SIZE
        from dispatcher.store.sql import SqlStore

        engines = engine_registry(settings)
        pd = settings.processdispatcher
        broker = broker_config(settings)
        # Every RPC worker and every singleton may use the store at once.
        pool_size = max(PG_POOL_SIZE, pd.rpc_workers + _STORE_THREADS_BESIDES_RPC)
        store = SqlStore(settings.database_url, create=True, pool_size=pool_size)
        try:
            service_name = pd.service_name
            claim_database(store, settings.database_url, broker.sysname, service_name)
            engines.merge_stored(store.list_engines())
            # Agents refuse commands from any other sender; with security.hmac_key
            # set, every message this client sends is signed with its agent's key.
            client = RpcClient(broker, service_name, signer=dispatcher_signer(settings))
            messenger = RpcMessenger(client)
            # The one writer of process states, shared by every component below;
            # its event history is written in batches by the service's events thread.
            events = EventLog(store, per_process=pd.process_events_kept, total=pd.events_kept_total)
            transitions = ProcessStateMachine(store, messenger, events=events)
            evacuation = Evacuation(store, transitions)
            registration = Registration(store, engines, evacuation)

            def driver_of(engine_id: str) -> str | None:
                """The driver of the engine's provisioner site."""
                engine = engines.get(engine_id)
                try:
                    return settings.provisioner.site(engine.site if engine else None).driver
                except (KeyError, ValueError):
                    return None

            core = ProcessDispatcherCore(
                store,
                messenger,
                transitions=transitions,
                limits=pd.limits,
                engines=engines,
                driver_of=driver_of,
            )
            heartbeats = HeartbeatHandler(
                store,
                messenger,
                engines,
                transitions=transitions,
                registration=registration,
                caller=client,
                cleanup_resend_seconds=pd.dispatch_retry_seconds,
                driver_of=driver_of,
                restart_policy=pd.restart_policy,
            )
            provisioner = _provisioner(settings, store, engines, registration, stop_supervisord)
            sink = need_sink if need_sink is not None else provisioner

            def grace(engine_id: str) -> float:
                """The scale-down grace of the engine's provisioner site."""
                engine = engines.get(engine_id)
                site = engine.site if engine is not None else None
                return settings.provisioner.scale_down_grace(site)

            matchmaker = Matchmaker(
                store,
                launch_messenger(messenger) if launch_messenger is not None else messenger,
                engines,
                transitions=transitions,
                run_type=pd.launch_type,
                restart_throttling_config=pd.restart_throttling_config,
                dispatch_retry_seconds=pd.dispatch_retry_seconds,
                registrar=None if sink is None else NeedRegistrar(store, sink, grace=grace),
                max_depth=pd.limits.max_depth,
                max_process_age=pd.max_process_age,
            )
            doctor = Doctor(
                store,
                messenger,
                engines,
                transitions=transitions,
                evacuation=evacuation,
                monitor=pd.monitor_resource_heartbeats,
            )
            rpc = RpcService(broker, service_name, workers=pd.rpc_workers)
        except BaseException:
            store.close()
            raise
        service = cls(
            settings,
            events=events,
            store=store,
            core=core,
            heartbeats=heartbeats,
            rpc=rpc,
            matchmaker=matchmaker,
            doctor=doctor,
            provisioner=provisioner,
            messenger_client=client,
            guard=access_guard(settings, operation_roles(), broker.prefixed(service_name)),
        )
        service.elector = LeaderElector(
            lock_for_database(settings.database_url), service._on_elected
        )
        return service

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    def _on_elected(self, term: threading.Event) -> None:
        """A leadership term starts: run the singletons until it ends."""
        self._threads = [t for t in self._threads if t.is_alive()]
        for name, singleton in self._singletons():
            if singleton is None:
                continue
            thread = threading.Thread(
                target=singleton.run, args=(term,), name=f"pd-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "dispatcher %s leads: %s running",
            self.rpc.name,
            ", ".join(name for name, _ in self._singletons()),
        )

    def _singletons(self) -> list[tuple[str, Any]]:
        candidates = (
            ("matchmaker", self.matchmaker),
            ("doctor", self.doctor),
            ("provisioner", self.provisioner),
        )
        return [(name, singleton) for name, singleton in candidates if singleton is not None]

    def start(self) -> None:
        """Start serving; returns once every worker consumes the service queue.

        On a broker other than the embedded one, with no principals configured,
        logs one WARNING: any peer of the broker may then call every operation.
        """
        if not self.rpc.broker.is_embedded and not self.settings.security.principals:
            log.warning(
                "dispatcher %s: no principals are configured (security.principals): any "
                "peer of the broker %s may call every operation; see docs/security.md",
                self.rpc.name,
                self.rpc.broker.masked_uri,
            )
        if self.intake is not None:
            self.intake.start()
        if self.events is not None:
            thread = threading.Thread(
                target=self.events.run, args=(self._events_stop,), name="pd-events", daemon=True
            )
            thread.start()
            self._events_thread = thread
        self.rpc.start()
        if self.elector is not None:
            self.elector.start()
        log.info(
            "dispatcher %s serving %d operations on %s",
            self.rpc.name,
            len(self.rpc.operations),
            self.rpc.broker.masked_uri,
        )

    def stop(self) -> None:
        """Stop serving; in-flight requests finish first."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.elector is not None:
            self.elector.stop()
        for _, singleton in self._singletons():
            singleton.wake()
        for thread in self._threads:
            thread.join(_JOIN_TIMEOUT)
        if self.provisioner is not None:
            self.provisioner.close()
        self.rpc.stop()
        if self.intake is not None:
            self.intake.stop()
        self._events_stop.set()
        if self._events_thread is not None:
            self._events_thread.join(_JOIN_TIMEOUT)
        if self.messenger_client is not None:
            self.messenger_client.close()
        self.store.close()
        log.info("dispatcher %s stopped", self.rpc.name)

    def __enter__(self) -> DispatcherService:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
