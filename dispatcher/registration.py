"""Nodes and agents joining and leaving: ``node_state`` and first heartbeats.

A node (VM) is announced with ``node_state(..., "600-RUNNING")`` (by the
provisioner, or by an operator with the static driver) and recorded with the time
it appeared. Each eeagent on it is registered by its first heartbeat: the node
must be known and its domain ``pd_domain_<engine>`` must name a known engine,
whose ``slots`` give the agent's slot count (the agent's own slot setting is not
sent). On a node the provisioner started, the agent's name must also be one the
provisioner gave that node's agents, so an agent's key cannot register it on
another node (node authorisation; keys are per agent name). A node announced dead (any
:data:`~pdcommon.states.InstanceState.DEAD` state: TERMINATING, TERMINATED,
FAILED, REJECTED; docs/architecture.md, decision 3) is evacuated.

Registration races with evacuation: an agent registering while its node is being
removed would outlive the node, so after creating the resource the node is read
again, and the resource is retired if the node no longer lists it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.agent_names import is_agent_of
from dispatcher.engines import EngineRegistry, engine_id_from_domain
from dispatcher.evacuation import Evacuation
from dispatcher.model import Node, Resource
from dispatcher.store.base import Store
from dispatcher.store.modify import retry_conflicts
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState

__all__ = ["Registration"]

log = logging.getLogger(__name__)

#: Provisioner states of a node being retired or retired (``VMState.TERMINATING``,
#: ``VMState.TERMINATED``): its agents' last heartbeats are expected, not a problem.
#: (Named here: importing the provisioner package would load the broker library.)
_RETIRED = ("terminating", "terminated")


class Registration:
    """Records nodes and agents as they appear, and evacuates dead nodes.

    Args:
        store: where nodes, resources and engines live.
        engines: the engines this dispatcher knows (extended from the store when an
            engine another instance added is needed).
        evacuation: moves the processes of dead nodes on.
        clock: returns the current time in epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        engines: EngineRegistry,
        evacuation: Evacuation,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.engines = engines
        self.evacuation = evacuation
        self.clock = clock

    # -- engines --------------------------------------------------------------------------

    def engine(self, engine_id: str | None) -> EngineSettings | None:
        """An engine by id, merging in engines other instances persisted if needed."""
        if engine_id is None:
            return None
        engine = self.engines.get(engine_id)
        if engine is None:
            self.engines.merge_stored(self.store.list_engines())
            engine = self.engines.get(engine_id)
        return engine

    # -- nodes ----------------------------------------------------------------------------

    def node_running(
        self, node_id: str, domain_id: str | None, properties: dict[str, Any] | None
    ) -> None:
        """Record a node unless it is known (a known node is left unchanged)."""
        if self.store.get_node(node_id) is not None:
            return
        node = Node(
            node_id=node_id,
            domain_id=domain_id,
            properties=copy.deepcopy(properties or {}),
            state_time=self.clock(),
        )
        try:
            self.store.add_node(node)
        except WriteConflictError:
            return  # created concurrently
        log.info("node %s is running (domain %s)", node_id, domain_id)

    def node_dead(self, node_id: str, state: str) -> None:
        """Evacuate a node that died; an unknown node is ignored (idempotent)."""
        node = self.store.get_node(node_id)
        if node is None:
            log.info("node %s is %s but was not known: ignored", node_id, state)
            return
        log.info("node %s is %s: evacuating it", node_id, state)
        self.evacuation.evacuate_node(node)

    # -- agents ---------------------------------------------------------------------------

    def register_agent(self, resource_id: str, node_id: str | None, stamp: datetime) -> None:
        """Record an agent from its first heartbeat, or drop the heartbeat (logged).

        Args:
            resource_id: the agent's name.
            node_id: the heartbeat's ``node_id``.
            stamp: the heartbeat's time, capped at now (the first ``last_heartbeat``).
        """
        if node_id is None:
            log.error("first heartbeat of %s has no node_id: dropped", resource_id)
            return
        node = self.store.get_node(node_id)
        if node is None:
            self._log_unknown_node(resource_id, node_id)
            return
        if self.store.get_vm(node_id) is not None and not is_agent_of(node_id, resource_id):
            # Node authorisation: the provisioner named this node's agents; an agent
            # of another name (another node's key) does not join it.
            log.warning(
                "heartbeat of %s claims node %s, whose agents the provisioner named "
                "otherwise: dropped",
                resource_id,
                node_id,
            )
            return
        engine_id = engine_id_from_domain(node.domain_id)
        engine = self.engine(engine_id)
        if engine_id is None or engine is None:
            log.warning(
                "heartbeat of %s: node %s has domain %r, which names no known engine: dropped",
                resource_id,
                node_id,
                node.domain_id,
            )
            return
        listed = self._add_to_node(node, resource_id)
        if listed is None:
            log.warning("node %s went away while %s registered: dropped", node_id, resource_id)
            return
        properties = copy.deepcopy(listed.properties)
        properties.update(engine=engine_id, resource_id=resource_id)
        resource = Resource(
            resource_id=resource_id,
            node_id=node_id,
            slot_count=engine.slots,
            state=ExecutionResourceState.OK,
            properties=properties,
            last_heartbeat=stamp.isoformat(),
        )
        try:
            self.store.add_resource(resource)
        except WriteConflictError:
            log.debug("eeagent %s was registered concurrently", resource_id)
            return
        current = self.store.get_node(node_id)
        if current is None or resource_id not in current.resources:
            log.warning("node %s went away while %s registered: retired", node_id, resource_id)
            self.evacuation.retire_resource(resource_id)
            return
        log.info(
            "eeagent %s registered on node %s (engine %s, %d slots)",
            resource_id,
            node_id,
            engine_id,
            engine.slots,
        )

    def _log_unknown_node(self, resource_id: str, node_id: str) -> None:
        """Log a heartbeat from a node with no record: expected (INFO) from a node
        the provisioner is retiring or retired, whose agents heartbeat until they
        stop; a WARNING from any other node."""
        vm = self.store.get_vm(node_id)
        if vm is not None and vm.state in _RETIRED:
            log.info(
                "heartbeat of %s from node %s, which is %s (%s): dropped",
                resource_id,
                node_id,
                vm.state,
                vm.reason or "retired",
            )
            return
        log.warning("heartbeat of %s from unknown node %s: dropped", resource_id, node_id)

    def _add_to_node(self, node: Node, resource_id: str) -> Node | None:
        """Add ``resource_id`` to ``node.resources`` (conflict-retry); None if it went.

        Raises:
            WriteRetriesExhaustedError: every write attempt lost its race; nothing
                is registered, and the agent's next heartbeat registers it.
        """
        current: Node | None = node

        def attempt() -> Node | None:
            nonlocal current
            if current is None or resource_id in current.resources:
                return current
            current.resources.append(resource_id)
            try:
                self.store.update_node(current)
            except WriteConflictError:
                current = self.store.get_node(node.node_id)
                raise
            except NotFoundError:
                return None
            return current

        return retry_conflicts(f"node {node.node_id!r}", attempt)
