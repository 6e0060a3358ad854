"""Process groups and labels through the core (issue 15): ``schedule_process(group=,
labels=)``, the filters of ``describe_processes`` and ``terminate_processes``."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot

S = ProcessState


def _schedule(core: ProcessDispatcherCore, upid: str, **kwargs: object) -> None:
    core.schedule_process(upid, DEFINITION_ID, **kwargs)


def _listed(core: ProcessDispatcherCore, **kwargs: object) -> list[str]:
    return [record["upid"] for record in core.describe_processes(**kwargs)]


def test_schedule_stores_group_and_labels_and_shows_them_only_when_set(
    core: ProcessDispatcherCore,
) -> None:
    # When one process is scheduled with a group and labels and one without
    _schedule(core, "p1", group="exp-17", labels={"app": "web", "example.com/tier": "front"})
    _schedule(core, "p2")
    # Then the first's record carries them
    record = core.describe_process("p1")
    assert record is not None
    assert record["group"] == "exp-17"
    assert record["labels"] == {"app": "web", "example.com/tier": "front"}
    # And the second's has neither key; empty labels count as none
    _schedule(core, "p3", labels={})
    for upid in ("p2", "p3"):
        plain = core.describe_process(upid)
        assert plain is not None and "group" not in plain and "labels" not in plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": "exp 17"}, "invalid group: 'exp 17' is not a group name"),
        ({"group": "x" * 129}, "invalid group:"),
        ({"group": 17}, "invalid group: must be a string"),
        ({"labels": ["app"]}, "invalid labels: must be an object"),
        ({"labels": {"app": 1}}, "invalid labels: label 'app': the value 1 is not a string"),
        ({"labels": {"-app": "web"}}, "invalid labels: label key '-app'"),
        ({"labels": {"a" * 64: "web"}}, "invalid labels: label key"),
        ({"labels": {"Bad_Prefix/app": "web"}}, "the prefix must be a DNS subdomain"),
        ({"labels": {"app": "web server"}}, "invalid labels: label 'app': the value"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "65 labels; at most 64"),
    ],
)
def test_bad_groups_and_labels_are_refused_and_nothing_is_written(
    core: ProcessDispatcherCore, store: MemoryStore, kwargs: dict[str, object], message: str
) -> None:
    # Given the state before
    before = snapshot(store)
    # When a schedule carries a bad group or labels, Then it is refused with the reason
    with pytest.raises(BadRequestError, match=message.replace("(", r"\(")):
        _schedule(core, "p1", **kwargs)
    # And nothing was written
    assert snapshot(store) == before


def test_an_in_play_process_refuses_another_group_or_labels_an_ended_one_takes_them(
    core: ProcessDispatcherCore,
) -> None:
    # Given a process in play with a group and labels
    _schedule(core, "p1", group="g1", labels={"app": "web"})
    # When it is scheduled again the same way, Then that is an idempotent repeat
    _schedule(core, "p1", group="g1", labels={"app": "web"})
    # When with another group or other labels, Then it is refused like any other parameter
    with pytest.raises(BadRequestError, match="group parameter value doesn't match request"):
        _schedule(core, "p1", group="g2", labels={"app": "web"})
    with pytest.raises(BadRequestError, match="labels parameter value doesn't match request"):
        _schedule(core, "p1", group="g1", labels={"app": "db"})
    # When it has ended and is scheduled with new values, Then it takes them
    core.terminate_process("p1")
    _schedule(core, "p1", group="g2", labels={"app": "db"})
    record = core.describe_process("p1")
    assert record is not None and record["round"] == 1
    assert (record["group"], record["labels"]) == ("g2", {"app": "db"})


def test_describe_processes_filters_by_each_argument(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given processes in two groups with labels, states and engines
    _schedule(core, "web-1", group="exp-17", labels={"app": "web", "tier": "front"})
    _schedule(core, "web-2", group="exp-17", labels={"app": "web", "tier": "db"}, name="w2")
    _schedule(core, "db-1", group="exp-18", labels={"app": "db"})
    put_process(store, "run-1", S.RUNNING, group="exp-18", constraints={"engine": "big"})
    # Then no argument lists all of them, in creation order
    assert _listed(core) == ["web-1", "web-2", "db-1", "run-1"]
    # And each argument narrows the listing
    assert _listed(core, group="exp-17") == ["web-1", "web-2"]
    assert _listed(core, label_selector="app=web,tier!=db") == ["web-1"]
    assert _listed(core, label_selector="app in (db),!tier") == ["db-1"]
    assert _listed(core, states=["RUNNING"]) == ["run-1"]
    assert _listed(core, states=["500-RUNNING", "requested"]) == ["web-1", "web-2", "db-1", "run-1"]
    assert _listed(core, engine="big") == ["run-1"]
    assert _listed(core, name_prefix="w2") == ["web-2"]
    assert _listed(core, upid_prefix="web-") == ["web-1", "web-2"]
    assert _listed(core, group="exp-18", states=["200-REQUESTED"]) == ["db-1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"states": ["RUNING"]}, "invalid states: unknown process state 'RUNING'"),
        ({"states": "RUNNING"}, "invalid states: must be a list"),
        ({"label_selector": "app=web,"}, "invalid label_selector: bad label selector"),
        ({"label_selector": "app in (a"}, "invalid label_selector: unbalanced '\\('"),
        ({"label_selector": "app in ()"}, "invalid label_selector: .* an empty set"),
        ({"label_selector": "app=web db"}, "invalid label_selector: bad label selector"),
        ({"label_selector": "-app=web"}, "invalid label_selector: label key '-app'"),
        ({"group": "a/b"}, "invalid group"),
        ({"engine": 3}, "invalid engine"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(
    core: ProcessDispatcherCore, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        core.describe_processes(**kwargs)
    with pytest.raises(BadRequestError, match=message):
        core.terminate_processes(**kwargs)


def test_terminate_processes_refuses_an_empty_filter_without_all(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given two processes
    _schedule(core, "p1")
    _schedule(core, "p2", group="g")
    before = snapshot(store)
    # When terminate_processes has no filter, Then it is refused and nothing changes
    with pytest.raises(BadRequestError, match=r"needs a filter .* or all=true"):
        core.terminate_processes()
    assert snapshot(store) == before
    # When all=True is given, Then every process is terminated
    result = core.terminate_processes(all=True)
    assert result == {"terminated": ["p1", "p2"], "already_ended": [], "failed": []}
    assert {record["state"] for record in core.describe_processes()} == {S.TERMINATED}


def test_terminate_processes_ends_one_group_and_leaves_the_other(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a group with a queued, a running and an ended process, and another group
    _schedule(core, "a-queued", group="exp-17")
    put_process(store, "a-running", S.RUNNING, group="exp-17", assigned="agent1")
    put_process(store, "a-ended", S.EXITED, group="exp-17")
    _schedule(core, "b-queued", group="exp-18")
    put_process(store, "b-running", S.RUNNING, group="exp-18", assigned="agent1")
    # When the first group is terminated
    result = core.terminate_processes(group="exp-17")
    # Then it says what it did
    assert result == {
        "terminated": ["a-queued", "a-running"],
        "already_ended": ["a-ended"],
        "failed": [],
    }
    # And the group's processes end as terminate_process ends them
    states = {r["upid"]: r["state"] for r in core.describe_processes()}
    assert states["a-queued"] == S.TERMINATED
    assert states["a-running"] == S.TERMINATING
    assert [m.args["u_pid"] for m in messenger.sent_to("agent1", "terminate_process")] == [
        "a-running"
    ]
    assert "a-queued" not in [upid for upid, _ in store.list_queued()]
    # And the other group is untouched
    assert (states["b-queued"], states["b-running"]) == (S.REQUESTED, S.RUNNING)
    # When it is called again, Then the running one is told again, nothing else changes
    again = core.terminate_processes(group="exp-17", label_selector="")
    assert again["terminated"] == ["a-running"]
    assert again["already_ended"] == ["a-queued", "a-ended"]


def test_terminate_processes_by_label_selector(core: ProcessDispatcherCore) -> None:
    # Given labelled processes
    _schedule(core, "w1", labels={"app": "web"})
    _schedule(core, "w2", labels={"app": "web", "keep": "yes"})
    _schedule(core, "d1", labels={"app": "db"})
    # When the web ones without "keep" are terminated
    result = core.terminate_processes(label_selector="app=web,!keep")
    # Then only that one ends
    assert result["terminated"] == ["w1"]
    states = {r["upid"]: r["state"] for r in core.describe_processes()}
    assert states == {"w1": S.TERMINATED, "w2": S.REQUESTED, "d1": S.REQUESTED}
