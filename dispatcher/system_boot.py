"""Whole-system restart: the boot flag set and read with no dispatcher running.

After a whole-site outage (every VM gone, the dispatcher restarted on its old
database) the operator runs ``pd-dispatcher --config FILE system-boot begin``
before starting any dispatcher. :func:`begin_system_boot` opens the database
directly (no broker), refuses with
:class:`~pdcommon.errors.DispatcherRunningError` while a dispatcher holds the
leadership lock, and sets the boot flag with a boot initialisation pending
(:meth:`~dispatcher.store.base.Store.begin_system_boot`). The next dispatcher to
lead runs the legacy system-boot initialisation once (:mod:`dispatcher.doctor`):
restartable processes are held back in ``150-UNSCHEDULED_PENDING``, the others
end ``700-TERMINATED``, nodes and agents are forgotten, and the dispatcher stays
``SYSTEM_BOOTING`` until ``set_system_boot(False)`` (``pd-cli system-boot end``)
releases the held-back processes. docs/operations.md has the runbook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dashi.broker import mask_uri
from dispatcher.engine_status import system_status
from dispatcher.leadership import lock_for_database
from dispatcher.store.sql import SqlStore
from pdcommon.errors import DispatcherRunningError

__all__ = ["begin_system_boot", "end_system_boot", "system_boot_status"]


@contextlib.contextmanager
def _offline(url: str) -> Iterator[SqlStore]:
    """The store of ``url`` (migrated), with the leadership lock held meanwhile.

    Raises:
        DispatcherRunningError: a dispatcher holds the lock.
        StoreError: the database cannot be reached.
    """
    store = SqlStore(url, create=True, pool_size=1)
    try:
        lock = lock_for_database(url)
        if not lock.try_acquire():
            raise DispatcherRunningError(
                f"a dispatcher is running on {mask_uri(url)} (it holds the leadership "
                "lock): stop every dispatcher first, or use `pd-cli system-boot` on a "
                "running one"
            )
        try:
            yield store
        finally:
            lock.release()
    finally:
        store.close()


def begin_system_boot(url: str) -> dict[str, Any]:
    """Set the boot flag and mark a boot initialisation for the next start.

    Raises:
        DispatcherRunningError: a dispatcher is running on this database.
        StoreError: the database cannot be reached.

    Returns:
        The system status afterwards (:func:`~dispatcher.engine_status.system_status`).
    """
    with _offline(url) as store:
        store.begin_system_boot()
        return system_status(store)


def end_system_boot(url: str) -> dict[str, Any]:
    """Clear the boot flag offline: the next start releases held-back processes
    (or, before any boot initialisation ran, starts without a system boot).

    Raises:
        DispatcherRunningError: a dispatcher is running on this database.
        StoreError: the database cannot be reached.
    """
    with _offline(url) as store:
        store.set_system_boot(False)
        return system_status(store)


def system_boot_status(url: str) -> dict[str, Any]:
    """The system status, read directly from the database (a dispatcher may run).

    Raises:
        StoreError: the database cannot be reached.
    """
    store = SqlStore(url, create=True, pool_size=1)
    try:
        return system_status(store)
    finally:
        store.close()
