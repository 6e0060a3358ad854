"""retry_conflicts() and modify(): optimistic writes retried on conflicts, a bounded number of times."""

from __future__ import annotations

import pytest

from dashi.errors import NotFoundError, WriteConflictError, WriteRetriesExhaustedError
from dispatcher.model import Node
from dispatcher.store.memory import MemoryStore
from dispatcher.store.modify import WRITE_ATTEMPTS, modify, retry_conflicts
from pdcommon.errors import StoreError
from tests.support.conflicts import ALWAYS, ConflictingStore


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


# -- retry_conflicts: the bound ------------------------------------------------------------


def conflicting(conflicts: int, result: str = "done"):  # type: ignore[no-untyped-def]
    """An attempt that loses ``conflicts`` races, then returns ``result``; counts calls."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= conflicts:
            raise WriteConflictError("simulated")
        return result

    return attempt, calls


def test_an_attempt_that_conflicts_is_made_again_until_it_succeeds() -> None:
    # Given an attempt that loses WRITE_ATTEMPTS - 1 races
    attempt, calls = conflicting(WRITE_ATTEMPTS - 1)
    # When it is retried, Then the last allowed attempt's result is returned
    assert retry_conflicts("process 'p1'", attempt) == "done"
    assert len(calls) == WRITE_ATTEMPTS


def test_the_attempts_run_out_with_a_write_conflict_naming_the_record() -> None:
    # Given an attempt that always loses its race
    attempt, calls = conflicting(1000)
    # When it is retried, Then it gives up after WRITE_ATTEMPTS with the typed error
    with pytest.raises(WriteRetriesExhaustedError) as raised:
        retry_conflicts("resource 'eea1'", attempt)
    assert len(calls) == WRITE_ATTEMPTS == 5
    error = raised.value
    assert isinstance(error, WriteConflictError)  # handled wherever a lost race is
    assert (error.record, error.attempts) == ("resource 'eea1'", 5)
    assert str(error) == "resource 'eea1' kept changing: 5 write attempts lost a race"


def test_other_errors_are_not_retried() -> None:
    # Given attempts failing otherwise (a missing record, a bug, the database)
    for error in (NotFoundError("gone"), ValueError("bug"), StoreError("down")):
        calls: list[int] = []

        def attempt(error: Exception = error, calls: list[int] = calls) -> None:
            calls.append(1)
            raise error

        # When retried, Then the error comes out of the first attempt as it is
        with pytest.raises(type(error)) as raised:
            retry_conflicts("node 'n1'", attempt)
        assert raised.value is error
        assert calls == [1]


def test_an_inner_loop_that_gave_up_is_not_retried_by_the_outer_one() -> None:
    # Given an attempt whose own retry loop gave up on another record
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        retry_conflicts("node 'n1'", conflicting(1000)[0])

    # When the outer loop runs it, Then the inner error passes once, unchanged
    with pytest.raises(WriteRetriesExhaustedError) as raised:
        retry_conflicts("process 'p1'", attempt)
    assert calls == [1]
    assert raised.value.record == "node 'n1'"


def test_modify_gives_up_on_a_contended_record_and_writes_nothing() -> None:
    # Given a node whose every update loses its race
    store = ConflictingStore()
    store.add_node(Node(node_id="n1"))
    store.conflicts[("node", "n1")] = ALWAYS
    # When it is modified, Then the typed error after WRITE_ATTEMPTS writes, none stored
    with pytest.raises(WriteRetriesExhaustedError, match="node 'n1' kept changing"):
        modify(lambda: store.get_node("n1"), store.update_node, tag("t"), record="node 'n1'")
    assert store.attempts[("node", "n1")] == WRITE_ATTEMPTS
    stored = store.get_node("n1")
    assert stored is not None and stored.node_exclusive == [] and stored.version == 1
