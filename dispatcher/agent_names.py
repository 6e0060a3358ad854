"""The names of a provisioned node's agents.

The provisioner names the agents it starts on a node after the node
(:func:`agent_name`); registration accepts nothing else on such a node
(:func:`is_agent_of`). Kept apart from :mod:`dispatcher.provisioner` so that the
health modules use it without loading any cloud or broker library.
"""

from __future__ import annotations

import re

__all__ = ["agent_name", "is_agent_of"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def agent_name(node_id: str, index: int) -> str:
    """The eeagent name (resource id) of replica ``index`` of ``node_id``; no ``.``."""
    return f"{_UNSAFE.sub('-', node_id)}-{index}"


def is_agent_of(node_id: str, resource_id: str) -> bool:
    """Whether ``resource_id`` is one of the names :func:`agent_name` gives the agents
    of ``node_id`` (what a provisioned node's agents are called, and nothing else)."""
    prefix = f"{_UNSAFE.sub('-', node_id)}-"
    index = resource_id[len(prefix) :]
    return resource_id.startswith(prefix) and index.isdigit() and str(int(index)) == index
