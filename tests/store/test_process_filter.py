"""Process groups, labels and filtered listings (``list_process_dicts(selected)``),
run against every store backend."""

from __future__ import annotations

import dataclasses

from dispatcher.model import Process
from dispatcher.selectors import ProcessFilter, parse_selector
from dispatcher.store.base import Store
from pdcommon.states import ProcessState


def _process(upid: str, **changes: object) -> Process:
    process = Process(upid=upid, definition={"definition_id": "d1"}, name=f"name-{upid}")
    return dataclasses.replace(process, **changes)  # type: ignore[arg-type]


def _fill(store: Store) -> None:
    store.add_process(
        _process(
            "web-1",
            group="exp-17",
            labels={"app": "web", "tier": "front"},
            state=ProcessState.RUNNING,
            constraints={"engine": "eng-a"},
        )
    )
    store.add_process(
        _process("web-2", group="exp-17", labels={"app": "web", "tier": "db"}, name="other")
    )
    store.add_process(
        _process(
            "db-1",
            group="exp-18",
            labels={"app": "db"},
            state=ProcessState.RUNNING,
            constraints={"engine": ["eng-b", "eng-a"]},
        )
    )
    store.add_process(_process("plain", constraints={"engine": "eng-a_x"}))
    # a name with LIKE wildcards: a prefix is matched literally
    store.add_process(_process("wild", name="50%_off"))


def _upids(store: Store, **fields: object) -> list[str]:
    selected = ProcessFilter(**fields)  # type: ignore[arg-type]
    return [d["upid"] for d in store.list_process_dicts(selected)]


def test_group_and_labels_round_trip_and_show_only_when_set(store: Store) -> None:
    # Given a process with a group and labels, and one without
    _fill(store)
    # Then the first comes back with them, in its record and its listing
    got = store.get_process("web-1")
    assert got is not None and got.group == "exp-17"
    assert got.labels == {"app": "web", "tier": "front"}
    listed = {d["upid"]: d for d in store.list_process_dicts()}
    assert listed["web-1"]["group"] == "exp-17"
    assert listed["web-1"]["labels"] == {"app": "web", "tier": "front"}
    # And the second's record has neither key (exactly what a legacy client knows)
    assert "group" not in listed["plain"] and "labels" not in listed["plain"]
    plain = store.get_process("plain")
    assert plain is not None and plain.to_dict() == listed["plain"]


def test_an_update_changes_group_and_labels(store: Store) -> None:
    # Given a grouped process
    _fill(store)
    process = store.get_process("web-2")
    assert process is not None
    # When its group and labels are replaced, and then removed
    process.group, process.labels = "exp-99", {"x": "1"}
    store.update_process(process)
    # Then the listing follows
    assert _upids(store, group="exp-99") == ["web-2"]
    process = store.get_process("web-2")
    assert process is not None
    process.group, process.labels = None, None
    store.update_process(process)
    assert _upids(store, group="exp-99") == []
    assert "labels" not in store.list_process_dicts(ProcessFilter(upid_prefix="web-2"))[0]


def test_no_filter_or_an_empty_filter_lists_every_process(store: Store) -> None:
    _fill(store)
    everything = ["web-1", "web-2", "db-1", "plain", "wild"]
    assert [d["upid"] for d in store.list_process_dicts()] == everything
    assert _upids(store) == everything


def test_each_filter_field_narrows_the_listing(store: Store) -> None:
    # Given processes in two groups, with labels, states, engines and names
    _fill(store)
    # Then each field selects exactly its processes, in creation order
    assert _upids(store, group="exp-17") == ["web-1", "web-2"]
    assert _upids(store, states=(ProcessState.RUNNING,)) == ["web-1", "db-1"]
    assert _upids(store, engine="eng-a") == ["web-1", "db-1"]  # exact, or one of a list
    assert _upids(store, engine="eng-b") == ["db-1"]
    assert _upids(store, name_prefix="name-w") == ["web-1"]
    assert _upids(store, name_prefix="50%_") == ["wild"]
    assert _upids(store, name_prefix="5%") == []  # '%' is no wildcard
    assert _upids(store, upid_prefix="web-") == ["web-1", "web-2"]
    assert _upids(store, upid_prefix="_") == []  # '_' is no wildcard
    # And fields combine
    assert _upids(store, group="exp-17", states=(ProcessState.RUNNING,)) == ["web-1"]
    assert _upids(store, group="exp-18", engine="eng-a", upid_prefix="db") == ["db-1"]


def test_label_selectors_filter_the_listing(store: Store) -> None:
    # Given processes with and without labels
    _fill(store)

    def selected(text: str) -> list[str]:
        return _upids(store, labels=parse_selector(text))

    # Then every operator selects as Kubernetes does
    assert selected("app=web") == ["web-1", "web-2"]
    assert selected("app==web,tier!=db") == ["web-1"]
    assert selected("tier!=db") == ["web-1", "db-1", "plain", "wild"]  # missing counts
    assert selected("app in (db, nothing)") == ["db-1"]
    assert selected("app notin (web)") == ["db-1", "plain", "wild"]
    assert selected("tier") == ["web-1", "web-2"]
    assert selected("!tier") == ["db-1", "plain", "wild"]
    assert selected("app=web,!tier") == []
    # And with a group, only that group's processes are checked
    assert _upids(store, group="exp-17", labels=parse_selector("tier=db")) == ["web-2"]


def test_group_expiries_are_set_replaced_listed_and_cleared(store: Store) -> None:
    # Given no deadlines
    assert store.list_group_expiries() == {}
    # When two groups get one, and one is replaced
    store.set_group_expiry("exp-18", 200.5)
    store.set_group_expiry("exp-17", 100.0)
    store.set_group_expiry("exp-18", 300.25)
    # Then both are listed by group, with the latest deadline
    assert store.list_group_expiries() == {"exp-17": 100.0, "exp-18": 300.25}
    # When one is cleared (and clearing an unknown group is harmless)
    store.set_group_expiry("exp-17", None)
    store.set_group_expiry("never-set", None)
    # Then only the other remains
    assert store.list_group_expiries() == {"exp-18": 300.25}


def test_a_group_expiry_notifies_state_listeners(store: Store) -> None:
    heard: list[str] = []
    store.add_listener(heard.append)
    store.set_group_expiry("g", 1.0)
    store.set_group_expiry("g", None)
    assert heard == ["state", "state"]
