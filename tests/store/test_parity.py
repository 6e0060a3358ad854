"""Property test: random operation sequences give the same results on memory and SQLite."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dispatcher.model import Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from tests.support.hypothesis_profiles import examples

keys = st.sampled_from(["a", "b", "c"])
states = st.sampled_from(["200-REQUESTED", "500-RUNNING", "700-TERMINATED"])
rounds = st.integers(0, 2)
versions = st.integers(0, 4)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def outcome(store: Store, method: str, *args: Any) -> Any:
    """The method's result, or the type of the error it raised."""
    try:
        return getattr(store, method)(*args)
    except Exception as exc:
        return type(exc)


class StoresAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryStore()
        self.sql = SqlStore("sqlite://", create=True)

    def teardown(self) -> None:
        self.sql.close()

    def both(self, method: str, make: Any) -> None:
        # Each store gets its own copy of the argument (stores set its version).
        first, second = make(), make()
        assert outcome(self.memory, method, first) == outcome(self.sql, method, second)
        assert getattr(first, "version", None) == getattr(second, "version", None)

    @rule(upid=keys, state=states, config=json_values)
    def add_process(self, upid: str, state: str, config: Any) -> None:
        self.both("add_process", lambda: Process(upid, {}, state=state, configuration=config))

    @rule(upid=keys, state=states, version=versions, constraints=json_values)
    def update_process(self, upid: str, state: str, version: int, constraints: Any) -> None:
        def make() -> Process:
            return Process(upid, {"x": 1}, state=state, constraints=constraints, version=version)

        self.both("update_process", make)

    @rule(
        resource_id=keys,
        slots=st.integers(1, 4),
        version=versions,
        assigned=st.lists(st.tuples(keys, rounds), max_size=3),
    )
    def update_resource(self, resource_id: str, slots: int, version: int, assigned: Any) -> None:
        self.both(
            "update_resource",
            lambda: Resource(resource_id, "n", slots, assigned=list(assigned), version=version),
        )

    @rule(resource_id=keys)
    def add_resource(self, resource_id: str) -> None:
        self.both("add_resource", lambda: Resource(resource_id, "n", 2))

    @rule(resource_id=keys)
    def remove_resource(self, resource_id: str) -> None:
        assert outcome(self.memory, "remove_resource", resource_id) == outcome(
            self.sql, "remove_resource", resource_id
        )

    @rule(upid=keys, round_=rounds)
    def enqueue(self, upid: str, round_: int) -> None:
        self.memory.enqueue(upid, round_)
        self.sql.enqueue(upid, round_)

    @rule(upid=keys, round_=rounds)
    def remove_queued(self, upid: str, round_: int) -> None:
        assert outcome(self.memory, "remove_queued", upid, round_) == outcome(
            self.sql, "remove_queued", upid, round_
        )

    @rule()
    def clear_queue(self) -> None:
        self.memory.clear_queue()
        self.sql.clear_queue()

    @rule(flag=st.booleans())
    def set_system_boot(self, flag: bool) -> None:
        self.memory.set_system_boot(flag)
        self.sql.set_system_boot(flag)

    @invariant()
    def same_contents(self) -> None:
        assert self.memory.list_processes() == self.sql.list_processes()
        assert self.memory.list_queued() == self.sql.list_queued()
        assert self.memory.list_resources() == self.sql.list_resources()
        assert self.memory.is_system_boot() == self.sql.is_system_boot()
        for upid in ("a", "b", "c"):
            assert self.memory.get_process(upid) == self.sql.get_process(upid)


StoresAgree.TestCase.settings = settings(
    max_examples=examples(40), stateful_step_count=25, deadline=None
)
test_memory_and_sqlite_stores_agree = StoresAgree.TestCase
