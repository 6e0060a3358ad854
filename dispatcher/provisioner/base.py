"""The provisioner's vocabulary: node states, the ``Driver`` interface and its values.

A driver turns one node request into a running node of its kind (a cloud VM, a
group of local agent processes), destroys nodes, and lists the nodes it runs for
this dispatcher so that a restarted dispatcher finds them again. Implementations:
:mod:`~dispatcher.provisioner.local`, :mod:`~dispatcher.provisioner.libcloud`,
:mod:`~dispatcher.provisioner.static` (provisions nothing) and
:mod:`~dispatcher.provisioner.fake` (in memory, for tests).

Node ids are chosen by the provisioner (:func:`new_node_id`); the agents of a node
are named ``<node_id>-<index>`` (:func:`agent_name`), which never contains ``.``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from dispatcher.agent_names import agent_name

__all__ = [
    "TAG_ENGINE",
    "TAG_NODE",
    "TAG_OWNER",
    "TAG_SITE",
    "Driver",
    "NodeRequest",
    "ProvidedNode",
    "SupervisordStopper",
    "VMState",
    "agent_name",
    "new_node_id",
    "owner_id",
]

#: Tags (labels, metadata) every provisioned node carries, so that a restarted
#: dispatcher lists its own nodes and knows their engine and site.
TAG_OWNER: Final = "pd-dispatcher"
TAG_ENGINE: Final = "pd-engine"
TAG_NODE: Final = "pd-node"
TAG_SITE: Final = "pd-site"

#: Shuts down the supervisord an agent left in its home directory (given that
#: directory). The agent package provides it (``eeagent.supervisor.stop_left_supervisord``);
#: the daemon's entry point injects it, the dispatcher never imports the agent.
SupervisordStopper = Callable[[Path], None]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: Engine ids are cut to this length inside node ids (cloud names are limited).
_ENGINE_PART_LENGTH: Final = 24


class VMState:
    """Lifecycle of a provisioned node (:class:`dispatcher.model.VM` ``state``)::

        requested ──create──▶ pending ──first heartbeat──▶ running
            │                    │                            │
            └──(cancelled)──┐    └──────────┬─────────────────┘
                            ▼               ▼
                       terminated ◀── terminating ──destroyed──▶ terminated | failed

    ``requested``: recorded, ``create_node`` not yet done (retried with backoff);
    ``pending``: created, no agent registered yet (boot timeout applies);
    ``running``: at least one of its agents registered a resource;
    ``terminating``: being destroyed (retried with backoff);
    ``terminated``: gone as intended; ``failed``: creation failed for good, or the
    node was destroyed because it failed (boot timeout, vanished, agents lost).
    """

    REQUESTED: Final = "requested"
    PENDING: Final = "pending"
    RUNNING: Final = "running"
    TERMINATING: Final = "terminating"
    TERMINATED: Final = "terminated"
    FAILED: Final = "failed"

    #: States that count toward an engine's need.
    ACTIVE: Final = (REQUESTED, PENDING, RUNNING)
    #: States in which the node may exist at the provider.
    LIVE: Final = (PENDING, RUNNING, TERMINATING)
    #: Final states.
    FINAL: Final = (TERMINATED, FAILED)
    ALL: Final = (REQUESTED, PENDING, RUNNING, TERMINATING, TERMINATED, FAILED)


def owner_id(service_name: str, sysname: str | None = None) -> str:
    """The value of the :data:`TAG_OWNER` tag: ``<sysname>.<service>`` or ``<service>``."""
    return f"{sysname}.{service_name}" if sysname else service_name


def new_node_id(engine_id: str) -> str:
    """A fresh node id: ``pd-<engine>-<10 hex digits>`` (only ``[A-Za-z0-9_-]``)."""
    engine_part = _UNSAFE.sub("-", engine_id).strip("-")[:_ENGINE_PART_LENGTH] or "engine"
    return f"pd-{engine_part}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class NodeRequest:
    """What a driver needs to start one node.

    Attributes:
        node_id: the id the node's agents send in heartbeats.
        engine_id: the engine the agents serve.
        slots: process slots per agent.
        replicas: agents on the node.
        heartbeat: seconds between the agents' periodic heartbeats.
    """

    node_id: str
    engine_id: str
    slots: int
    replicas: int
    heartbeat: float

    @property
    def agent_names(self) -> list[str]:
        return [agent_name(self.node_id, index) for index in range(self.replicas)]


@dataclass(frozen=True)
class ProvidedNode:
    """A node as its driver sees it.

    Attributes:
        node_id: the provisioner's node id (from the node's tags).
        provider_id: the provider's own id (instance id; node id for local nodes).
        engine_id: the engine from the node's tags (``None`` if untagged).
        site: the site from the node's tags.
        properties: facts for the node's ``Node`` record (``hostname``, addresses).
        created_at: epoch seconds of its creation, when the provider says.
    """

    node_id: str
    provider_id: str
    engine_id: str | None = None
    site: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None


class Driver(Protocol):
    """Starts, stops and lists the nodes of one provisioner site.

    Methods are called from the provisioner's worker threads, several at once:
    implementations must be thread-safe. They raise only
    :class:`~dispatcher.provisioner.errors.ProvisionerError` subclasses, and never
    put credentials in messages or logs.
    """

    #: The driver kind: ``local``, ``libcloud``, ``static``, ``fake``.
    kind: str
    #: False for drivers that create nothing (``static``): the provisioner leaves
    #: their engines alone.
    provisions: bool

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        """Start a node whose agents heartbeat with ``request.node_id``.

        Called once per attempt; a failed attempt is retried with the same node id,
        so an implementation must not leave a half-started node behind (or must
        replace it on the next attempt).

        Raises:
            RecoverableProvisionerError: try again later.
            FatalProvisionerError: the request cannot succeed as configured.
        """
        ...

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        """Stop the node and release everything it holds.

        Raises:
            NodeNotFoundError: the provider does not know it (nothing to do).
            RecoverableProvisionerError: try again later.
            FatalProvisionerError: it could not be destroyed.
        """
        ...

    def list_nodes(self) -> list[ProvidedNode]:
        """The live nodes this dispatcher owns on this site (by their tags).

        Raises:
            ProvisionerError: the provider could not be asked.
        """
        ...

    def close(self) -> None:
        """Release connections; nodes keep running. Must not raise."""
        ...
