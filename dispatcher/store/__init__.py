"""Storage of definitions, processes, the queue, nodes, resources and engines."""

from dispatcher.store.base import ChangeListener, Store

__all__ = ["ChangeListener", "Store"]
