"""The dispatcher daemon: the core's operations served over dashi RPC.

``DispatcherService`` owns the object graph of one ``pd-dispatcher`` process::

    RpcService (worker threads) ──▶ ProcessDispatcherCore ──▶ Store (SQL)
                                        └──▶ RpcMessenger ──▶ agents, subscribers

Collaborators are injected; :meth:`DispatcherService.build` makes the default
graph from settings.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dispatcher.core import RPC_OPERATIONS, ProcessDispatcherCore
from dispatcher.rpc.broker import BrokerConfig
from dispatcher.rpc.client import RpcClient
from dispatcher.rpc.messenger import RpcMessenger
from dispatcher.rpc.service import RpcService
from dispatcher.settings import Settings
from dispatcher.store.base import Store

__all__ = ["RPC_OPERATIONS", "DispatcherService"]

log = logging.getLogger(__name__)



class DispatcherService:
    """One running dispatcher.

    Args:
        settings: the process's settings.
        store: where state lives.
        core: the RPC semantics.
        rpc: the service the operations are registered on.
        messenger_client: the client used for one-way messages (closed on stop).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        core: ProcessDispatcherCore,
        rpc: RpcService,
        messenger_client: RpcClient | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.core = core
        self.rpc = rpc
        self.messenger_client = messenger_client
        self._stopped = threading.Event()
        for op in RPC_OPERATIONS:
            self.rpc.handle(op, getattr(core, op), validate=False)

    @classmethod
    def build(cls, settings: Settings) -> DispatcherService:
        """The default object graph: SQL store (migrated), AMQP messenger and service."""
        from dispatcher.store.sql import SqlStore

        broker = BrokerConfig.from_settings(settings)
        store = SqlStore(settings.database_url, create=True)
        service_name = settings.processdispatcher.service_name
        client = RpcClient(broker, service_name)
        core = ProcessDispatcherCore(store, RpcMessenger(client))
        rpc = RpcService(broker, service_name, workers=settings.processdispatcher.rpc_workers)
        return cls(settings, store=store, core=core, rpc=rpc, messenger_client=client)

    def start(self) -> None:
        """Start serving; returns once every worker consumes the service queue."""
        self.rpc.start()
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
        self.rpc.stop()
        if self.messenger_client is not None:
            self.messenger_client.close()
        self.store.close()
        log.info("dispatcher %s stopped", self.rpc.name)

    def __enter__(self) -> DispatcherService:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
