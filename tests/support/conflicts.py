"""A MemoryStore whose versioned updates of chosen records lose their race."""

from __future__ import annotations

from collections import Counter

from dashi.errors import WriteConflictError
from dispatcher.model import VM, Node, Process, Resource
from dispatcher.store.memory import MemoryStore

#: Conflicts enough to outlast any bounded retry loop.
ALWAYS = 1_000_000


class ConflictingStore(MemoryStore):
    """A MemoryStore in which another writer wins the next ``conflicts[(kind, key)]`` updates.

    ``kind`` is ``process``, ``resource``, ``node`` or ``vm``; ``attempts`` counts every
    update of a record, conflicting or not. The record is left as it was, as when
    another writer changed it meanwhile (the version check fails first).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conflicts: dict[tuple[str, str], int] = {}
        self.attempts: Counter[tuple[str, str]] = Counter()

    def _race(self, kind: str, key: str) -> None:
        self.attempts[(kind, key)] += 1
        left = self.conflicts.get((kind, key), 0)
        if left > 0:
            self.conflicts[(kind, key)] = left - 1
            raise WriteConflictError(f"{kind} {key!r} changed (simulated)")

    def update_process(self, process: Process) -> None:
        self._race("process", process.upid)
        super().update_process(process)

    def update_resource(self, resource: Resource) -> None:
        self._race("resource", resource.resource_id)
        super().update_resource(resource)

    def update_node(self, node: Node) -> None:
        self._race("node", node.node_id)
        super().update_node(node)

    def update_vm(self, vm: VM) -> None:
        self._race("vm", vm.node_id)
        super().update_vm(vm)
