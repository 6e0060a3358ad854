"""Field layout of the stored records, shared by the memory and SQL stores.

Fields that hold dicts, lists or arbitrary values are stored as JSON by the SQL
store. The memory store copies those fields through a JSON round trip too, so
both stores hand back exactly the same values (tuples inside JSON fields come
back as lists, dict keys as strings) and a value that is not JSON-serializable
fails in tests against the fake just as it would against SQL.

``Resource.assigned`` is the one JSON field with a typed shape: it always comes
back as a list of ``(upid, round)`` tuples.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final, TypeVar

from dispatcher.model import Definition, Node, Process, Resource

__all__ = [
    "DEFINITION_JSON_FIELDS",
    "NODE_JSON_FIELDS",
    "PROCESS_JSON_FIELDS",
    "RESOURCE_JSON_FIELDS",
    "clone",
    "json_copy",
]

#: Definition fields stored as JSON (``version`` is the legacy, always-None field).
DEFINITION_JSON_FIELDS: Final = ("executable", "version")
PROCESS_JSON_FIELDS: Final = (
    "definition",
    "configuration",
    "constraints",
    "subscribers",
    "start_times",
    "dispatch_times",
)
RESOURCE_JSON_FIELDS: Final = ("properties", "assigned")
NODE_JSON_FIELDS: Final = ("properties", "resources", "node_exclusive")

_JSON_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    Definition: DEFINITION_JSON_FIELDS,
    Process: PROCESS_JSON_FIELDS,
    Resource: RESOURCE_JSON_FIELDS,
    Node: NODE_JSON_FIELDS,
}

_R = TypeVar("_R", Definition, Process, Resource, Node)


def json_copy(value: Any) -> Any:
    """A deep copy of ``value`` as it would come back from a JSON column.

    Raises:
        TypeError: ``value`` is not JSON-serializable.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.loads(json.dumps(value))


def assigned_pairs(value: Any) -> list[tuple[str, int]]:
    """``Resource.assigned`` as decoded from JSON: a list of ``(upid, round)`` tuples."""
    return [(upid, round_) for upid, round_ in value or ()]


def clone(record: _R) -> _R:
    """A deep copy of ``record`` with its JSON fields normalised as the SQL store does."""
    changes = {name: json_copy(getattr(record, name)) for name in _JSON_FIELDS[type(record)]}
    if isinstance(record, Resource):
        changes["assigned"] = assigned_pairs(changes["assigned"])
    return dataclasses.replace(record, **changes)
