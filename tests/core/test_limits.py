"""Depth and size limits of request arguments, and records stored past them.

Every JSON argument (``executable``, ``configuration``, ``constraints``,
``subscribers``) is refused with a ``BadRequestError`` naming the field and the
limit when it nests more than ``max_depth`` levels or is longer than
``max_argument_bytes`` as JSON, before anything is stored. A record stored past
the limits (a database written before they existed) can still be described,
terminated, restarted and dumped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashi.errors import BadRequestError
from dashi.jsontree import depth
from dispatcher.core import ProcessDispatcherCore
from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.limits import (
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_MAX_ARGV_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ENV_BYTES,
    LimitError,
    RequestLimits,
    check_value,
)
from pdcommon.settings import load_settings
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot
from tests.support.wiring import make_core

#: Depths tried: within the limit (100), then past it by more and more.
REFUSED_DEPTHS = [DEFAULT_MAX_DEPTH + 1, 300, 500, 1000, 5000]


def nested_object(levels: int) -> dict[str, Any]:
    """A JSON object nested exactly ``levels`` levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def nested_list(levels: int) -> list[Any]:
    """A JSON array nested exactly ``levels`` levels deep."""
    value: list[Any] = ["leaf"]
    for _ in range(levels - 1):
        value = [value]
    return value


def rejects(call: Callable[[], Any], store: MemoryStore, *fragments: str) -> str:
    """Assert ``call`` raises BadRequestError whose message holds ``fragments``, writing nothing."""
    before = snapshot(store)
    with pytest.raises(BadRequestError) as raised:
        call()
    text = str(raised.value.value)
    for fragment in fragments:
        assert fragment in text, text
    assert snapshot(store) == before
    return text


# -- depth -----------------------------------------------------------------------------


def test_the_helpers_nest_exactly_as_many_levels_as_asked() -> None:
    assert depth(nested_object(1)) == 1
    assert depth(nested_object(100)) == 100
    assert depth(nested_list(5000)) == 5000


@pytest.mark.parametrize("levels", [1, 10, DEFAULT_MAX_DEPTH])
def test_a_configuration_within_the_depth_limit_is_scheduled_and_stored_whole(
    core: ProcessDispatcherCore, store: MemoryStore, levels: int
) -> None:
    # Given a configuration nested up to the limit
    # When it is scheduled
    core.schedule_process("p1", DEFINITION_ID, configuration=nested_object(levels))
    # Then it is stored as given, and the record reads back whole
    record = core.describe_process("p1")
    assert record is not None
    assert depth(record["configuration"]) == levels
    assert record["state"] == ProcessState.REQUESTED


@pytest.mark.parametrize("levels", REFUSED_DEPTHS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("configuration", nested_object),
        ("constraints", nested_object),
        ("subscribers", lambda levels: [["sub", nested_list(levels - 2)]]),
    ],
)
def test_a_schedule_nested_past_the_depth_limit_is_refused_and_writes_nothing(
    core: ProcessDispatcherCore,
    store: MemoryStore,
    levels: int,
    field: str,
    value: Callable[[int], Any],
) -> None:
    # Given a schedule_process argument nested past the limit (100 levels)
    args = {field: value(levels)}
    # Then it is a bad request naming the field and the limit, and nothing is written
    rejects(
        lambda: core.schedule_process("p1", DEFINITION_ID, **args),
        store,
        f"invalid {field}: nested more than {DEFAULT_MAX_DEPTH} levels deep",
    )


@pytest.mark.parametrize("levels", REFUSED_DEPTHS)
@pytest.mark.parametrize("operation", ["create_definition", "update_definition"])
def test_an_executable_nested_past_the_depth_limit_is_refused(
    core: ProcessDispatcherCore, store: MemoryStore, levels: int, operation: str
) -> None:
    # Given a definition whose executable nests past the limit
    executable = {"exec": "/bin/true", "argv": nested_list(levels - 1)}
    # Then create and update are bad requests naming executable
    rejects(
        lambda: getattr(core, operation)(DEFINITION_ID, "supd", executable),
        store,
        "invalid executable: nested more than 100 levels deep",
    )


def test_a_circular_configuration_from_an_in_process_caller_is_refused(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a configuration that contains itself
    configuration: dict[str, Any] = {}
    configuration["self"] = configuration
    # Then it is refused by the depth limit rather than looping or recursing
    rejects(
        lambda: core.schedule_process("p1", DEFINITION_ID, configuration=configuration),
        store,
        "invalid configuration: nested more than",
    )


# -- size ------------------------------------------------------------------------------


def test_a_configuration_at_the_size_limit_is_accepted(core: ProcessDispatcherCore) -> None:
    # Given a configuration whose JSON text is exactly 1 MiB: {"blob":"xxx..."}
    overhead = len('{"blob":""}')
    configuration = {"blob": "x" * (DEFAULT_MAX_ARGUMENT_BYTES - overhead)}
    # When it is scheduled, Then it is stored
    core.schedule_process("p1", DEFINITION_ID, configuration=configuration)
    record = core.describe_process("p1")
    assert record is not None and record["configuration"] == configuration


@pytest.mark.parametrize(
    "configuration",
    [
        pytest.param({"blob": "x" * DEFAULT_MAX_ARGUMENT_BYTES}, id="one-string"),
        pytest.param({"é": "é" * (DEFAULT_MAX_ARGUMENT_BYTES // 6)}, id="escaped-non-ascii"),
        pytest.param({f"k{i}": i for i in range(200_000)}, id="many-keys"),
        pytest.param([[["x" * 64] * 100] * 100] * 2, id="nested-lists"),
    ],
)
def test_a_configuration_over_the_size_limit_is_refused_and_writes_nothing(
    core: ProcessDispatcherCore, store: MemoryStore, configuration: Any
) -> None:
    rejects(
        lambda: core.schedule_process("p1", DEFINITION_ID, configuration=configuration),
        store,
        "invalid configuration: longer than the limit of 1048576 bytes (1 MiB) as JSON",
    )


def test_a_120_mb_configuration_is_refused_without_reading_it_all(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a configuration of 120 MB of small values
    configuration = {"items": ["x" * 100] * 1_200_000}
    # Then it is refused (the walk stops at the limit: the refusal is cheap)
    rejects(
        lambda: core.schedule_process("p1", DEFINITION_ID, configuration=configuration),
        store,
        "invalid configuration: longer than the limit",
    )


@pytest.mark.parametrize(
    ("executable", "message"),
    [
        (
            {"exec": "/bin/echo", "argv": ["x" * DEFAULT_MAX_ARGV_BYTES]},
            "invalid executable: exec and argv longer than the limit of 131072 bytes (128 KiB)",
        ),
        (
            {"exec": "/bin/echo", "argv": ["x" * 1000] * 200},
            "invalid executable: exec and argv longer than the limit",
        ),
        (
            {"exec": "/bin/echo", "env": {"BIG": "x" * DEFAULT_MAX_ENV_BYTES}},
            "invalid executable: env longer than the limit of 131072 bytes (128 KiB)",
        ),
    ],
)
def test_an_executable_with_too_long_argv_or_env_is_refused(
    core: ProcessDispatcherCore, store: MemoryStore, executable: Any, message: str
) -> None:
    rejects(lambda: core.create_definition("big", "supd", executable), store, message)
    rejects(lambda: core.update_definition(DEFINITION_ID, "supd", executable), store, message)


def test_a_long_name_or_description_counts_against_the_argument_limit(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    huge = "n" * (DEFAULT_MAX_ARGUMENT_BYTES + 1)
    rejects(
        lambda: core.create_definition("d2", "supd", {"exec": "x"}, description=huge),
        store,
        "invalid description: longer than the limit",
    )
    rejects(
        lambda: core.schedule_process("p1", DEFINITION_ID, name=huge),
        store,
        "invalid name: longer than the limit",
    )


def test_arguments_together_over_the_request_limit_are_refused(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given three arguments of 0.9 MiB each: each within its limit, 2.7 MiB together
    part = "x" * (DEFAULT_MAX_ARGUMENT_BYTES * 9 // 10)
    rejects(
        lambda: core.schedule_process(
            "p1",
            DEFINITION_ID,
            configuration={"a": part},
            constraints={"b": part},
            name=part,
        ),
        store,
        "invalid arguments: together longer than the limit of 2097152 bytes (2 MiB)",
    )


def test_limits_are_configurable(store: MemoryStore) -> None:
    # Given limits of 5 levels and 2 KiB per argument
    limits = RequestLimits(max_depth=5, max_argument_bytes=2048, max_request_bytes=4096)
    core = make_core(store, RecordingMessenger(), limits=limits)
    core.create_definition(DEFINITION_ID, "supd", {"exec": "/bin/true"})
    # Then 5 levels pass and 6 do not; 2 KiB passes and more does not
    core.schedule_process("p5", DEFINITION_ID, configuration=nested_object(5))
    rejects(
        lambda: core.schedule_process("p6", DEFINITION_ID, configuration=nested_object(6)),
        store,
        "nested more than 5 levels deep",
    )
    rejects(
        lambda: core.schedule_process("p7", DEFINITION_ID, configuration={"a": "x" * 2048}),
        store,
        "longer than the limit of 2048 bytes (2 KiB)",
    )


def test_limits_are_read_from_processdispatcher_limits() -> None:
    settings = load_settings(
        overrides={"processdispatcher.limits": {"max_depth": 20, "max_argument_bytes": 4096}}
    )
    limits = settings.processdispatcher.limits
    assert (limits.max_depth, limits.max_argument_bytes) == (20, 4096)
    assert load_settings(overrides={}).processdispatcher.limits == RequestLimits()


@pytest.mark.parametrize(
    "values",
    [
        {"max_depth": 0},
        {"max_depth": 1000},
        {"max_argument_bytes": 10},
        {"max_argument_bytes": 8192, "max_request_bytes": 4096},
        {"unknown": 1},
    ],
)
def test_unsafe_or_unknown_limits_are_configuration_errors(values: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RequestLimits(**values)


# -- records stored past the limits ------------------------------------------------------


@pytest.mark.parametrize("levels", [500, 5000])
def test_a_record_stored_past_the_limits_can_be_described_dumped_and_terminated(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger, levels: int
) -> None:
    # Given a queued process whose configuration was stored deep (an old database)
    put_process(
        store,
        "deep",
        ProcessState.REQUESTED,
        configuration=nested_object(levels),
        subscribers=[["sub", "op"]],
    )
    store.enqueue("deep", 0)
    # Then it can be described, listed and dumped
    described = core.describe_process("deep")
    assert described is not None and depth(described["configuration"]) == levels
    assert depth(core.describe_processes()[0]["configuration"]) == levels
    assert depth(core.dump()["processes"]["deep"]["configuration"]) == levels
    # And terminated, with its subscriber told
    assert core.terminate_process("deep")["state"] == ProcessState.TERMINATED
    record = store.get_process("deep")
    assert record is not None and record.state == ProcessState.TERMINATED
    assert depth(record.configuration) == levels
    assert [m.args["process"]["state"] for m in messenger.sent_to("sub")] == [
        ProcessState.TERMINATED
    ]
    assert store.list_queued() == []


def test_a_running_record_stored_past_the_limits_can_be_restarted_and_terminated(
    core: ProcessDispatcherCore, store: MemoryStore, messenger: RecordingMessenger
) -> None:
    # Given a RUNNING process whose configuration is 800 levels deep
    put_process(
        store, "deep", ProcessState.RUNNING, assigned="eeagent1", configuration=nested_object(800)
    )
    # When it is restarted, then terminated
    assert core.restart_process("deep")["round"] == 1
    assert core.terminate_process("deep")["state"] == ProcessState.TERMINATING
    # Then the agent was told both
    assert [m.op for m in messenger.sent_to("eeagent1")] == [
        "restart_process",
        "terminate_process",
    ]


# -- the walk ----------------------------------------------------------------------------

json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers(), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(json_trees)
def test_the_size_is_the_compact_json_length_and_its_limit_is_exact(value: Any) -> None:
    # Given any JSON value, Then its measured size is the length of its compact text
    length = len(json.dumps(value, separators=(",", ":")))
    assert check_value(value, max_depth=1000, max_bytes=10**9) == length
    # And that length passes a limit of exactly that, and one byte less does not
    check_value(value, max_depth=1000, max_bytes=length)
    with pytest.raises(LimitError):
        check_value(value, max_depth=1000, max_bytes=length - 1)


@given(json_trees)
def test_the_depth_limit_is_exact(value: Any) -> None:
    levels = depth(value)
    check_value(value, max_depth=max(levels, 1), max_bytes=10**9)
    if levels > 1:
        with pytest.raises(LimitError, match="nested more than"):
            check_value(value, max_depth=levels - 1, max_bytes=10**9)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (nested_object(500), "invalid definition: nested more than 100 levels deep"),
        ({"blob": "x" * DEFAULT_MAX_ARGUMENT_BYTES}, "invalid definition: longer than the limit"),
    ],
)
def test_an_engine_definition_past_the_limits_is_a_bad_request(config: Any, message: str) -> None:
    # Given an add_engine definition whose config nests too deep or is too large
    definition = {"engine_id": "e9", "slots": 1, "config": config}
    # Then it is refused as a bad request (not a serialization error of the settings)
    with pytest.raises(BadRequestError, match=message):
        EngineRegistry.parse_definition(definition)
