"""Batched writes: many versioned records, or many queue removals, in one call.

The matchmaker writes thousands of records per pass; one store call per record
costs a database round trip (and, on PostgreSQL, a commit) each. A
:class:`BatchWriter` lets it hand over a whole batch at once, with the same
optimistic-concurrency rules as the single-record ``update_*`` methods of
:class:`~dispatcher.store.base.Store`, but with per-record outcomes instead of
exceptions.

Implementations:

* :class:`PerRecordBatchWriter`: any store, one store call per record (the
  memory store, and the fallback);
* :class:`dispatcher.store.sql_batch.SqlBatchWriter`: a
  :class:`~dispatcher.store.sql.SqlStore`, one transaction per call.

:func:`batch_writer` picks the right one for a store. This module does not import
SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Protocol

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.model import Node, Process, Resource
from dispatcher.store.base import Store

__all__ = ["BatchWriter", "PerRecordBatchWriter", "VersionedRecord", "batch_writer"]

#: The record types a batch may hold.
VersionedRecord = Process | Resource | Node


class BatchWriter(Protocol):
    """Writes many records, or removes many queue entries, per call."""

    def update_many(self, records: Sequence[VersionedRecord]) -> list[bool]:
        """Write every record whose ``version`` is the stored one.

        Each record follows the rules of the store's ``update_*`` methods: it is
        written only when its version equals the stored version, and its
        ``version`` is then incremented. A stale or missing record is not written
        (no exception). When one key appears several times, at most its first
        record is written. Listeners are notified once per kind of record written.
        Implementations may write the batch atomically, but callers must not rely
        on it.

        Args:
            records: processes, resources and nodes, in any mix.

        Raises:
            StoreError: the database failed; nothing or part of the batch may have
                been written (re-read before retrying).

        Returns:
            For each record, in order, whether it was written.
        """

    def remove_queued_many(self, entries: Sequence[tuple[str, int]]) -> int:
        """Remove, for each ``(upid, round)``, the oldest matching queue entry.

        An entry that is not (or no longer) queued is skipped; a pair given twice
        removes two entries. Listeners hear ``"queue"`` once if anything was
        removed.

        Raises:
            StoreError: the database failed.

        Returns:
            How many entries were removed.
        """


class PerRecordBatchWriter:
    """A :class:`BatchWriter` over any :class:`Store`: one store call per record.

    Not atomic; each record is written (and notified) on its own.

    Args:
        store: the store written to.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def update_many(self, records: Sequence[VersionedRecord]) -> list[bool]:
        """Write each record with its own ``update_*`` call; see :class:`BatchWriter`."""
        results = []
        for record in records:
            try:
                if isinstance(record, Process):
                    self._store.update_process(record)
                elif isinstance(record, Resource):
                    self._store.update_resource(record)
                else:
                    self._store.update_node(record)
            except (WriteConflictError, NotFoundError):
                results.append(False)
            else:
                results.append(True)
        return results

    def remove_queued_many(self, entries: Sequence[tuple[str, int]]) -> int:
        """Remove each entry with its own ``remove_queued`` call; see :class:`BatchWriter`."""
        removed = 0
        for upid, round_ in entries:
            with contextlib.suppress(NotFoundError):
                self._store.remove_queued(upid, round_)
                removed += 1
        return removed


def batch_writer(store: Store) -> BatchWriter:
    """The fastest :class:`BatchWriter` for ``store``.

    A :class:`~dispatcher.store.sql.SqlStore` gets a
    :class:`~dispatcher.store.sql_batch.SqlBatchWriter` (one transaction per call);
    any other store a :class:`PerRecordBatchWriter`.
    """
    sql = sys.modules.get("dispatcher.store.sql")  # loaded iff a SqlStore can exist
    if sql is not None and isinstance(store, sql.SqlStore):
        from dispatcher.store.sql_batch import SqlBatchWriter

        return SqlBatchWriter(store)
    return PerRecordBatchWriter(store)
