"""Field layout of the stored records and their JSON encoding, shared by both stores.

Fields holding dicts, lists or arbitrary values are stored as JSON. The memory
store keeps them JSON-encoded too, so both stores hand back exactly the same
values (tuples inside JSON fields come back as lists, dict keys as strings), and
a value that is not JSON-serializable fails against the fake as it would on SQL.

Decoding is the cost of listing many records, so it is batched: the JSON texts
of every record in a listing are joined into one array and parsed at once (with
:func:`dashi.fastjson.loads`: orjson wherever it is exact). Records are then
built without ``__init__`` (every field is supplied), which is several times
faster for 100,000 processes. Listings sent
over the wire skip the records: ``wire_dicts_from_*`` build the ``to_dict()``
shape straight from the stored values (freshly decoded, so nothing is copied).

Building a large listing pauses the cyclic garbage collector: the new objects hold
no cycles, and the collections their allocation would trigger otherwise take more
time than the decoding itself.

``Resource.assigned`` is the one JSON field with a typed shape: it always comes
back as a list of ``(upid, round)`` tuples.

Encoding and decoding go through :mod:`dashi.jsontree`: the fast recursive
encoder and parsers first, and for a value nested too deep for them (a database
written before requests had a depth limit) an explicit stack, so no stored value
can make a record unreadable or unwritable.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar

from dashi import jsontree
from dashi.gcpause import collector_paused
from dispatcher.model import VM, Definition, Node, Process, Resource, add_derived_process_keys

__all__ = [
    "DEFINITION",
    "NODE",
    "PROCESS",
    "RESOURCE",
    "VM_LAYOUT",
    "Layout",
    "dumps",
    "gc_paused",
    "json_copy",
]

_R = TypeVar("_R", bound=Definition | Process | Resource | Node | VM)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` (smaller rows, faster to parse), at any depth.

    Raises:
        TypeError: ``value`` is not JSON-serializable.
    """
    return jsontree.dumps(value)


def json_copy(value: Any) -> Any:
    """A deep copy of ``value`` as it would come back from a JSON column."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return jsontree.loads(dumps(value))


#: Listings at least this long are built with the garbage collector paused.
_GC_PAUSE_ROWS: Final = 1000


@contextmanager
def gc_paused(rows: int = _GC_PAUSE_ROWS) -> Iterator[None]:
    """Pause the cyclic garbage collector while building ``rows`` (>= 1000) records."""
    if rows < _GC_PAUSE_ROWS:
        yield
        return
    with collector_paused():
        yield


class Layout(Generic[_R]):
    """How one record type splits into scalar fields and JSON fields.

    Args:
        cls: the record dataclass.
        key: the name of its key field.
        json_fields: the fields stored as JSON, in storage order.
        wire_fields: the fields of ``to_dict()``, in its order (for the ``wire_dicts_*``
            methods, which build those dicts straight from stored values).
        wire_extra: constant members ``to_dict()`` adds after ``wire_fields``.
        wire_derived: adds the members ``to_dict()`` derives from the others.
    """

    def __init__(
        self,
        cls: type[_R],
        key: str,
        json_fields: Sequence[str],
        *,
        wire_fields: Sequence[str] | None = None,
        wire_extra: dict[str, Any] | None = None,
        wire_derived: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cls: type[_R] = cls
        self.key = key
        self.json_fields = tuple(json_fields)
        names = [f.name for f in dataclasses.fields(cls)]
        self.scalar_fields = tuple(n for n in names if n not in self.json_fields)
        self.fields = self.scalar_fields + self.json_fields
        self._assigned = cls is Resource
        self._wire: tuple[tuple[str, ...], Callable[[Sequence[Any]], Any], dict[str, Any]] | None
        self._wire = None
        self._derived = wire_derived
        if wire_fields is not None:
            index = {name: i for i, name in enumerate(self.fields)}
            self._wire = (
                tuple(wire_fields),
                operator.itemgetter(*(index[name] for name in wire_fields)),
                dict(wire_extra or {}),
            )

    def encode(self, record: _R) -> str:
        """The JSON fields of ``record`` as one JSON array text.

        Raises:
            TypeError: a field is not JSON-serializable.
        """
        return dumps([getattr(record, name) for name in self.json_fields])

    def scalars(self, record: _R) -> tuple[Any, ...]:
        return tuple(getattr(record, name) for name in self.scalar_fields)

    def build(self, scalars: Sequence[Any], json_values: Sequence[Any]) -> _R:
        """A record from its scalar values and decoded JSON values (storage order)."""
        record: _R = object.__new__(self.cls)
        values = record.__dict__
        values.update(zip(self.scalar_fields, scalars, strict=True))
        values.update(zip(self.json_fields, json_values, strict=True))
        if self._assigned:
            values["assigned"] = [(upid, round_) for upid, round_ in values["assigned"] or ()]
        return record

    def build_from_arrays(self, rows: Sequence[tuple[Sequence[Any], str]]) -> list[_R]:
        """Records from ``(scalars, encode(record))`` pairs, with one JSON parse for all."""
        if not rows:
            return []
        with gc_paused(len(rows)):
            decoded: list[list[Any]] = jsontree.loads("[" + ",".join(t for _, t in rows) + "]")
            return [
                self.build(scalars, values)
                for (scalars, _), values in zip(rows, decoded, strict=True)
            ]

    def build_from_columns(self, rows: Iterable[Sequence[Any]]) -> list[_R]:
        """Records from SQL rows: scalar columns, then each JSON column as text (or NULL)."""
        split = len(self.scalar_fields)
        width = len(self.json_fields)
        rows = list(rows)
        if not rows:
            return []
        with gc_paused(len(rows)):
            texts = ["null" if text is None else text for row in rows for text in row[split:]]
            decoded: list[Any] = jsontree.loads("[" + ",".join(texts) + "]")
            return [
                self.build(row[:split], decoded[i * width : (i + 1) * width])
                for i, row in enumerate(rows)
            ]

    def wire_dicts_from_arrays(
        self, rows: Sequence[tuple[Sequence[Any], str]]
    ) -> list[dict[str, Any]]:
        """``to_dict()`` of each record in ``(scalars, encode(record))`` pairs, built directly."""
        if not rows:
            return []
        with gc_paused(len(rows)):
            decoded: list[list[Any]] = jsontree.loads("[" + ",".join(t for _, t in rows) + "]")
            return self._wire_dicts(
                (*scalars, *values) for (scalars, _), values in zip(rows, decoded, strict=True)
            )

    def wire_dicts_from_columns(self, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
        """``to_dict()`` of each record in SQL rows (as :meth:`build_from_columns` reads)."""
        split = len(self.scalar_fields)
        width = len(self.json_fields)
        rows = list(rows)
        if not rows:
            return []
        with gc_paused(len(rows)):
            texts = ["null" if text is None else text for row in rows for text in row[split:]]
            decoded: list[Any] = jsontree.loads("[" + ",".join(texts) + "]")
            return self._wire_dicts(
                (*row[:split], *decoded[i * width : (i + 1) * width]) for i, row in enumerate(rows)
            )

    def _wire_dicts(self, records: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Wire dicts from field values in storage order (freshly decoded: not copied)."""
        if self._wire is None:
            raise TypeError(f"{self.cls.__name__} has no wire layout")
        names, pick, extra = self._wire
        derived = self._derived
        result = []
        for values in records:
            data = dict(zip(names, pick(values), strict=True))
            data.update(extra)
            if derived is not None:
                derived(data)
            result.append(data)
        return result

    def clone(self, record: _R) -> _R:
        """A deep copy of ``record`` with JSON fields normalised as stored."""
        return self.build(self.scalars(record), jsontree.loads(self.encode(record)))


#: ``Definition.version`` is the legacy, always-None field (stored as JSON).
DEFINITION: Final = Layout(Definition, "definition_id", ("executable", "version"))
PROCESS: Final = Layout(
    Process,
    "upid",
    (
        "definition",
        "configuration",
        "constraints",
        "subscribers",
        "start_times",
        "dispatch_times",
        "restart_policy",
        "failure_times",
        "labels",
    ),
    # Process.to_dict(): every field but the row version, then the legacy owner.
    wire_fields=tuple(f.name for f in dataclasses.fields(Process) if f.name != "version"),
    wire_extra={"owner": None},
    wire_derived=add_derived_process_keys,
)
RESOURCE: Final = Layout(Resource, "resource_id", ("properties", "assigned"))
NODE: Final = Layout(Node, "node_id", ("properties", "resources", "node_exclusive"))
VM_LAYOUT: Final = Layout(VM, "node_id", ("properties",))
