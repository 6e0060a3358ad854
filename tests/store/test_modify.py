"""modify(): read-change-write of one record, retried on write conflicts."""

from __future__ import annotations

from dispatcher.model import Node
from dispatcher.store.memory import MemoryStore
from dispatcher.store.modify import modify


def tag(name: str):  # type: ignore[no-untyped-def]
    def change(node: Node) -> bool:
        if name in node.node_exclusive:
            return False
        node.node_exclusive.append(name)
        return True

    return change


def test_a_change_is_written_and_returned() -> None:
    store = MemoryStore()
    store.add_node(Node(node_id="n1"))
    written = modify(lambda: store.get_node("n1"), store.update_node, tag("t"), record="node 'n1'")
    assert written is not None and written.node_exclusive == ["t"]
    stored = store.get_node("n1")
    assert stored is not None and stored.node_exclusive == ["t"] and stored.version == 2


def test_a_conflicting_writer_is_not_overwritten() -> None:
    store = MemoryStore()
    store.add_node(Node(node_id="n1"))
    reads = 0

    def get() -> Node | None:
        nonlocal reads
        reads += 1
        node = store.get_node("n1")
        if reads == 1:  # another writer changes the node right after this read
            other = store.get_node("n1")
            assert other is not None
            other.node_exclusive.append("other")
            store.update_node(other)
        return node

    written = modify(get, store.update_node, tag("mine"), record="node 'n1'")
    assert reads == 2
    assert written is not None
    stored = store.get_node("n1")
    assert stored is not None and stored.node_exclusive == ["other", "mine"]


def test_nothing_to_do_or_no_record_writes_nothing() -> None:
    store = MemoryStore()
    store.add_node(Node(node_id="n1", node_exclusive=["t"]))
    assert (
        modify(lambda: store.get_node("n1"), store.update_node, tag("t"), record="node 'n1'")
        is None
    )
    stored = store.get_node("n1")
    assert stored is not None and stored.version == 1
    assert (
        modify(lambda: store.get_node("nope"), store.update_node, tag("t"), record="node 'nope'")
        is None
    )
