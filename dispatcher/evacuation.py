"""Evacuation: taking processes off eeagents and nodes that are gone.

A node that dies (``node_state`` with a dead :class:`~pdcommon.states.InstanceState`),
a resource the doctor finds MISSING, and the doctor's system boot all end the same
way: every process placed on the lost agents is moved on according to its restart
mode, and the agents' slots are released.

For each ``(upid, round)`` in a resource's ``assigned`` list whose process is still
in that round:

* ``600-TERMINATING`` becomes ``700-TERMINATED`` with ``assigned = None`` (the
  legacy code left ``assigned`` set on this path; it is cleared here so that a
  terminated process never names an agent);
* a state below TERMINATING is restarted (``process_next_round`` into
  ``rescheduled_process_state``, ``250-DIED_REQUESTED`` by default) when
  :func:`~dispatcher.transitions.process_should_restart` says so for the exit state
  ``dead_process_state`` (``850-FAILED`` by default); otherwise it becomes
  ``dead_process_state`` with ``assigned = None``;
* later states are left alone.

Resource states only move towards ``DISABLED``, which is absorbing: nothing moves a
resource out of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from dashi.errors import NotFoundError, WriteRetriesExhaustedError
from dispatcher.model import Node, Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.modify import modify, retry_conflicts
from dispatcher.transitions import ProcessStateMachine, process_should_restart
from pdcommon.states import ExecutionResourceState, ProcessState

__all__ = ["Evacuation", "release_node_exclusive"]

log = logging.getLogger(__name__)


def release_node_exclusive(store: Store, node_id: str, tags: Iterable[str]) -> None:
    """Remove one occurrence of each of ``tags`` from a node's ``node_exclusive`` list.

    Retries on write conflict; a node that is gone is left alone (its tags went
    with it). Should every attempt lose its race, the tags stay on the node and
    this is logged at ERROR naming them (the caller carries on: its other writes
    are not held back by one contended node).

    Args:
        store: where the node lives.
        node_id: the node.
        tags: the tags to release (duplicates release several occurrences).
    """
    wanted = [str(tag) for tag in tags]
    if not wanted:
        return

    def release(node: Node) -> bool:
        remaining = list(node.node_exclusive)
        for tag in wanted:
            with contextlib.suppress(ValueError):
                remaining.remove(tag)
        if remaining == node.node_exclusive:
            return False
        node.node_exclusive = remaining
        return True

    try:
        modify(
            lambda: store.get_node(node_id), store.update_node, release, record=f"node {node_id!r}"
        )
    except WriteRetriesExhaustedError as exc:
        log.error("node_exclusive tags %s not released: %s", wanted, exc)


class Evacuation:
    """Moves the processes of lost agents on, by restart mode.

    Used by ``node_state`` (node death), by the doctor (resource MISSING, system
    boot) and by first-heartbeat registration (an agent whose node vanished).

    Args:
        store: where processes, resources and nodes live.
        transitions: the guarded, notifying process writes.
    """

    def __init__(self, store: Store, transitions: ProcessStateMachine) -> None:
        self.store = store
        self.transitions = transitions

    # -- resources ----------------------------------------------------------------------

    def change_resource_state(self, resource_id: str, state: str) -> Resource | None:
        """Set a resource's state, retrying on write conflict.

        ``DISABLED`` is absorbing: a disabled resource keeps its state. Setting the
        state it already has writes nothing.

        Args:
            resource_id: the eeagent.
            state: an :class:`~pdcommon.states.ExecutionResourceState`.

        Raises:
            WriteRetriesExhaustedError: every write attempt lost its race.

        Returns:
            The resource as stored afterwards, or ``None`` if it does not exist.
        """

        def attempt() -> Resource | None:
            resource = self.store.get_resource(resource_id)
            if resource is None or resource.state in (state, ExecutionResourceState.DISABLED):
                return resource
            resource.state = state
            try:
                self.store.update_resource(resource)
            except NotFoundError:
                return None
            return resource

        return retry_conflicts(f"resource {resource_id!r}", attempt)

    def evacuate_resource(
        self,
        resource: Resource,
        *,
        is_system_restart: bool = False,
        dead_process_state: str | None = None,
        rescheduled_process_state: str | None = None,
        update_node_exclusive: bool = True,
    ) -> None:
        """Move every process placed on ``resource`` on, then release its slots.

        The slots are released (the evacuated entries removed from ``assigned``)
        only while the resource is not ``OK``: a resource whose heartbeats resumed
        meanwhile is left to the heartbeat handling.

        Args:
            resource: the resource as last read; its ``assigned`` list is evacuated.
            is_system_restart: honour ``omit_from_system_restart`` (system boot).
            dead_process_state: the exit state for the restart decision and the
                state of processes that are not restarted (default ``850-FAILED``).
            rescheduled_process_state: the state of restarted processes (default
                ``250-DIED_REQUESTED``; ``150-UNSCHEDULED_PENDING`` at system boot,
                which is not queued).
            update_node_exclusive: release the processes' ``node_exclusive`` tags
                on the resource's node (not needed when the node itself goes).
        """
        dead_state = dead_process_state or ProcessState.FAILED
        new_state = rescheduled_process_state or ProcessState.DIED_REQUESTED
        keys = list(resource.assigned)
        tags: list[str] = []
        for upid, round_ in keys:
            process = self.store.get_process(upid)
            if process is None or process.round != round_:
                continue  # moved on already (or never existed): nothing placed here
            if process.state >= ProcessState.TERMINATED:
                continue
            if process.node_exclusive:
                tags.append(process.node_exclusive)
            self.evacuate_process(
                process,
                is_system_restart=is_system_restart,
                dead_process_state=dead_state,
                rescheduled_process_state=new_state,
            )
        if update_node_exclusive and tags:
            release_node_exclusive(self.store, resource.node_id, tags)
        self._release_slots(resource.resource_id, keys)

    def evacuate_process(
        self,
        process: Process,
        *,
        is_system_restart: bool,
        dead_process_state: str,
        rescheduled_process_state: str,
    ) -> None:
        """Move one process whose agent is gone on (see the module docstring).

        Args:
            process: the record as last read.
            is_system_restart: honour ``omit_from_system_restart``.
            dead_process_state: exit state, and the state when not restarted.
            rescheduled_process_state: the state when restarted.
        """
        reason = "system restart" if is_system_restart else "node lost"
        ended_at = self.transitions.clock()
        if process.state == ProcessState.TERMINATING:
            self.transitions.process_change_state(
                process, ProcessState.TERMINATED, assigned=None, reason=reason, ended_at=ended_at
            )
        elif process.state < ProcessState.TERMINATING:
            if process_should_restart(process, dead_process_state, is_system_restart):
                self.transitions.process_next_round(
                    process,
                    newstate=rescheduled_process_state,
                    enqueue=rescheduled_process_state != ProcessState.UNSCHEDULED_PENDING,
                    note={"reason": reason},
                    reason=reason,
                    ended_at=ended_at,
                )
            else:
                self.transitions.process_change_state(
                    process, dead_process_state, assigned=None, reason=reason, ended_at=ended_at
                )

    def _release_slots(self, resource_id: str, keys: list[tuple[str, int]]) -> None:
        if not keys:
            return

        def release(resource: Resource) -> bool:
            if resource.state == ExecutionResourceState.OK:
                return False
            remaining = [key for key in resource.assigned if key not in keys]
            if remaining == resource.assigned:
                return False
            resource.assigned = remaining
            return True

        modify(
            lambda: self.store.get_resource(resource_id),
            self.store.update_resource,
            release,
            record=f"resource {resource_id!r}",
        )

    def retire_resource(
        self,
        resource_id: str,
        *,
        is_system_restart: bool = False,
        dead_process_state: str | None = None,
        rescheduled_process_state: str | None = None,
        update_node_exclusive: bool = True,
    ) -> None:
        """Disable a resource, evacuate it and remove its record.

        Args:
            resource_id: the eeagent.
            is_system_restart: see :meth:`evacuate_resource`.
            dead_process_state: see :meth:`evacuate_resource`.
            rescheduled_process_state: see :meth:`evacuate_resource`.
            update_node_exclusive: see :meth:`evacuate_resource`.
        """
        resource = self.change_resource_state(resource_id, ExecutionResourceState.DISABLED)
        if resource is not None:
            self.evacuate_resource(
                resource,
                is_system_restart=is_system_restart,
                dead_process_state=dead_process_state,
                rescheduled_process_state=rescheduled_process_state,
                update_node_exclusive=update_node_exclusive,
            )
        with contextlib.suppress(NotFoundError):
            self.store.remove_resource(resource_id)

    # -- nodes --------------------------------------------------------------------------

    def evacuate_node(
        self,
        node: Node,
        *,
        is_system_restart: bool = False,
        dead_process_state: str | None = None,
        rescheduled_process_state: str | None = None,
    ) -> None:
        """Retire every resource of a node, then remove the node record.

        Each resource is set ``DISABLED``, evacuated and removed. Resources that name
        the node but are missing from its ``resources`` list (an agent that
        registered while the node was going away) are retired too, once more after
        the node record is gone, so no resource outlives its node.

        Args:
            node: the node as last read.
            is_system_restart: see :meth:`evacuate_resource`.
            dead_process_state: see :meth:`evacuate_resource`.
            rescheduled_process_state: see :meth:`evacuate_resource`.
        """
        for second_pass in (False, True):
            for resource_id in self._resources_of(node):
                if second_pass:
                    log.info(
                        "retiring %s: it registered while node %s went", resource_id, node.node_id
                    )
                self.retire_resource(
                    resource_id,
                    is_system_restart=is_system_restart,
                    dead_process_state=dead_process_state,
                    rescheduled_process_state=rescheduled_process_state,
                    update_node_exclusive=False,
                )
            if not second_pass:
                with contextlib.suppress(NotFoundError):
                    self.store.remove_node(node.node_id)

    def _resources_of(self, node: Node) -> list[str]:
        """The ids of the node's resources: its list, plus records naming the node."""
        ids = list(dict.fromkeys(node.resources))
        for resource in self.store.list_resources():
            if resource.node_id == node.node_id and resource.resource_id not in ids:
                ids.append(resource.resource_id)
        return [rid for rid in ids if self.store.get_resource(rid) is not None]
