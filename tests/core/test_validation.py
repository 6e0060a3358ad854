"""Argument validation: every rejected request names its field and writes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from dashi.errors import BadRequestError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.requests import is_valid_identifier
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot

BAD_IDENTIFIERS = ["", "has space", "slash/es", "ünïcode", "semi;colon", 5, None, ["p1"], {"a": 1}]
GOOD_IDENTIFIERS = ["p1", "P-1", "a.b_c-d", "0", "---", "a" * 300]


@pytest.fixture
def populated(core: ProcessDispatcherCore, store: MemoryStore) -> MemoryStore:
    """A store with a definition, processes in several states, a queue entry and an agent."""
    core.create_process("created", DEFINITION_ID)
    core.schedule_process("requested", DEFINITION_ID)
    put_process(store, "running", ProcessState.RUNNING, assigned="hats")
    put_process(store, "exited", ProcessState.EXITED, round_=1)
    return store


def rejects(call: Callable[[], Any], message: str, store: MemoryStore) -> None:
    """Assert ``call`` raises BadRequestError matching ``message`` and writes nothing."""
    before = snapshot(store)
    with pytest.raises(BadRequestError) as raised:
        call()
    text = raised.value.value
    assert text == message or text.startswith(f"{message}: "), text
    assert snapshot(store) == before


# -- identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", GOOD_IDENTIFIERS)
def test_identifiers_of_letters_digits_dots_dashes_and_underscores_are_valid(value: str) -> None:
    # Given an identifier of the legal characters, Then it is valid
    assert is_valid_identifier(value)


@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
def test_empty_non_string_or_other_characters_are_invalid_identifiers(value: Any) -> None:
    # Given an empty, non-string or otherwise illegal identifier, Then it is invalid
    assert not is_valid_identifier(value)


@pytest.mark.parametrize("upid", BAD_IDENTIFIERS)
@pytest.mark.parametrize(
    "operation",
    ["create_process", "schedule_process", "restart_process", "terminate_process"],
)
def test_an_invalid_upid_is_a_bad_request_that_writes_nothing(
    core: ProcessDispatcherCore, populated: MemoryStore, upid: Any, operation: str
) -> None:
    # Given a populated store
    # When an operation names an invalid upid
    args: dict[str, Any] = {"upid": upid}
    if operation in ("create_process", "schedule_process"):
        args["definition_id"] = DEFINITION_ID
    # Then BadRequestError("invalid upid") and nothing is written
    rejects(lambda: getattr(core, operation)(**args), "invalid upid", populated)


DEFINITION_OPERATIONS: list[tuple[str, dict[str, Any]]] = [
    ("create_definition", {"definition_type": "supd", "executable": {}}),
    ("update_definition", {"definition_type": "supd", "executable": {}}),
    ("describe_definition", {}),
    ("remove_definition", {}),
    ("create_process", {"upid": "newproc"}),
    ("schedule_process", {"upid": "newproc"}),
]


@pytest.mark.parametrize(
    ("operation", "extra", "definition_id"),
    [
        (operation, extra, definition_id)
        for operation, extra in DEFINITION_OPERATIONS
        for definition_id in BAD_IDENTIFIERS
        # None is the legitimate default of schedule_process's definition_id
        if not (operation == "schedule_process" and definition_id is None)
    ],
)
def test_an_invalid_definition_id_is_a_bad_request_that_writes_nothing(
    core: ProcessDispatcherCore,
    populated: MemoryStore,
    definition_id: Any,
    operation: str,
    extra: dict[str, Any],
) -> None:
    # Given a populated store
    # When an operation names an invalid definition id
    call = lambda: getattr(core, operation)(definition_id=definition_id, **extra)  # noqa: E731
    # Then BadRequestError("invalid definition_id") and nothing is written
    rejects(call, "invalid definition_id", populated)


def test_the_upid_is_checked_before_the_definition_id(
    core: ProcessDispatcherCore, populated: MemoryStore
) -> None:
    # Given both identifiers invalid, When a process is created, Then the upid is reported
    rejects(lambda: core.create_process("bad upid", "bad def"), "invalid upid", populated)


def test_describe_process_rejects_only_a_non_string_upid(
    core: ProcessDispatcherCore, populated: MemoryStore
) -> None:
    # Given describe_process (which legacy did not validate)
    # When asked for a non-string upid, Then BadRequestError; a bad string is just unknown
    rejects(lambda: core.describe_process(5), "invalid upid", populated)  # type: ignore[arg-type]
    assert core.describe_process("no such/upid") is None


# -- modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["queueing_mode", "restart_mode"])
@pytest.mark.parametrize("value", ["SOMETIMES", "never", "", 1, True, ["ALWAYS"]])
@pytest.mark.parametrize("upid", ["newproc", "created", "requested", "exited"])
def test_an_unknown_queueing_or_restart_mode_is_a_bad_request_naming_the_field(
    core: ProcessDispatcherCore, populated: MemoryStore, field: str, value: Any, upid: str
) -> None:
    # Given a new, unscheduled, in-play or finished process
    # When it is scheduled with an unknown mode, Then BadRequestError naming the field
    call = lambda: core.schedule_process(upid, DEFINITION_ID, **{field: value})  # noqa: E731
    rejects(call, f"invalid {field}", populated)


@pytest.mark.parametrize("queueing_mode", ["NEVER", "ALWAYS", "START_ONLY", "RESTART_ONLY", None])
@pytest.mark.parametrize("restart_mode", ["NEVER", "ALWAYS", "ABNORMAL", None])
def test_every_known_mode_is_accepted(
    core: ProcessDispatcherCore, queueing_mode: str | None, restart_mode: str | None
) -> None:
    # Given a new process, When scheduled with known modes, Then REQUESTED with them stored
    core.schedule_process(
        "p1", DEFINITION_ID, queueing_mode=queueing_mode, restart_mode=restart_mode
    )
    record = core.describe_process("p1")
    assert record is not None
    assert (record["queueing_mode"], record["restart_mode"]) == (queueing_mode, restart_mode)


# -- wrong types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("configuration", ["not", "a", "dict"]),
        ("configuration", "text"),
        ("configuration", {1: "int key"}),
        ("configuration", {"x": object()}),
        ("subscribers", "sub"),
        ("subscribers", [["only-one"]]),
        ("subscribers", [["a", "b", "c"]]),
        ("subscribers", [["a", 1]]),
        ("subscribers", {"a": "b"}),
        ("constraints", ["engine1"]),
        ("constraints", "engine1"),
        ("execution_engine_id", 5),
        ("execution_engine_id", {"engine": "e"}),
        ("node_exclusive", 5000),
        ("node_exclusive", ["tag"]),
        ("name", 3),
        ("name", b"bytes"),
    ],
)
@pytest.mark.parametrize("upid", ["newproc", "created", "requested", "exited"])
def test_a_wrongly_typed_schedule_argument_is_a_bad_request_naming_the_field(
    core: ProcessDispatcherCore, populated: MemoryStore, field: str, value: Any, upid: str
) -> None:
    # Given a new, unscheduled, in-play or finished process
    # When it is scheduled with a wrongly typed argument
    call = lambda: core.schedule_process(upid, DEFINITION_ID, **{field: value})  # noqa: E731
    # Then BadRequestError naming the field, and nothing is written
    rejects(call, f"invalid {field}", populated)


@pytest.mark.parametrize(
    ("field", "value"),
    [("definition_type", 5), ("definition_type", {"t": 1}), ("name", 1), ("description", [])],
)
@pytest.mark.parametrize("operation", ["create_definition", "update_definition"])
def test_a_wrongly_typed_definition_argument_is_a_bad_request_naming_the_field(
    core: ProcessDispatcherCore, populated: MemoryStore, operation: str, field: str, value: Any
) -> None:
    # Given the arguments of a valid definition, with one of them wrongly typed
    args: dict[str, Any] = {
        "definition_id": DEFINITION_ID if operation == "update_definition" else "new",
        "definition_type": "supd",
        "executable": {"exec": "/bin/true"},
        field: value,
    }
    # When the definition is created or updated, Then BadRequestError naming the field
    rejects(lambda: getattr(core, operation)(**args), f"invalid {field}", populated)


def test_a_non_json_executable_is_a_bad_request(
    core: ProcessDispatcherCore, populated: MemoryStore
) -> None:
    # Given an executable that cannot be stored as JSON, Then BadRequestError naming it
    rejects(
        lambda: core.create_definition("new", "supd", {"exec": object()}),
        "invalid executable",
        populated,
    )


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "shape", [lambda n: n, lambda n: {"a": [1, n]}, lambda n: [{"deep": {"x": n}}]]
)
def test_nan_and_infinities_are_a_bad_request_whatever_the_store(
    core: ProcessDispatcherCore, populated: MemoryStore, number: float, shape: Any
) -> None:
    # Given a configuration holding NaN or an infinity (JSON has neither, and
    # PostgreSQL's JSON columns refuse them), Then BadRequestError naming the field
    rejects(
        lambda: core.schedule_process("newproc", DEFINITION_ID, configuration=shape(number)),
        "invalid configuration",
        populated,
    )


def test_create_process_rejects_a_non_string_name(
    core: ProcessDispatcherCore, populated: MemoryStore
) -> None:
    # Given a process name that is not a string, Then BadRequestError naming it
    rejects(
        lambda: core.create_process("newproc", DEFINITION_ID, name=5),  # type: ignore[arg-type]
        "invalid name",
        populated,
    )


# -- set_system_boot -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, "true", "False", None, [], "yes", 1.0])
def test_set_system_boot_accepts_only_true_or_false(
    core: ProcessDispatcherCore, store: MemoryStore, value: Any
) -> None:
    # Given a value that is not exactly True or False
    # When it is given to set_system_boot, Then the legacy BadRequestError, nothing written
    rejects(
        lambda: core.set_system_boot(value),
        "expected a boolean value for system boot",
        store,
    )


def test_set_system_boot_sets_and_clears_the_flag(
    core: ProcessDispatcherCore, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the flag clear, When set True then False, Then the store follows (idempotently)
    with caplog.at_level(logging.INFO, logger="dispatcher.core"):
        assert core.set_system_boot(True) is None  # type: ignore[func-returns-value]
        core.set_system_boot(True)
        assert store.is_system_boot()
        core.set_system_boot(False)
    assert not store.is_system_boot()
    # And each change is logged at INFO
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "system-boot" in r.getMessage()]
    assert said == [
        (logging.INFO, "system-boot mode on"),
        (logging.INFO, "system-boot mode on"),
        (logging.INFO, "system-boot mode off"),
    ]


def test_every_rpc_operation_is_declared_once_by_its_request_model() -> None:
    # Given the handlers the core registers, Then each serves the operation its model
    # names, under the same method name, and no two share a model or a name
    from dashi.operations import operations_of
    from dispatcher.core import RPC_OPERATIONS
    from pdcommon.requests import Request

    operations = operations_of(ProcessDispatcherCore)
    assert tuple(op.name for op in operations) == RPC_OPERATIONS
    for op in operations:
        assert issubclass(op.model, Request)
        assert op.attribute == op.name == op.model.operation
    assert len({op.model for op in operations}) == len(operations)


def test_rpc_operations_are_methods_with_the_legacy_keyword_names(
    core: ProcessDispatcherCore, messenger: RecordingMessenger
) -> None:
    # Given the legacy signatures (docs/rpc.md), Then the core's methods match by name
    import inspect

    expected = {
        "create_definition": [
            "definition_id", "definition_type", "executable", "name", "description",
            # new, optional (after the legacy ones)
            "max_runtime_seconds",
        ],
        "describe_definition": ["definition_id"],
        "update_definition": [
            "definition_id", "definition_type", "executable", "name", "description",
            "max_runtime_seconds",
        ],
        "remove_definition": ["definition_id"],
        "list_definitions": [],
        "create_process": ["upid", "definition_id", "name"],
        "schedule_process": [
            "upid", "definition_id", "configuration", "subscribers", "constraints",
            "queueing_mode", "restart_mode", "execution_engine_id", "node_exclusive", "name",
            # new, optional (after the legacy ones)
            "restart_policy", "max_runtime_seconds", "group", "labels",
        ],
        "describe_process": ["upid"],
        "describe_process_events": ["upid", "limit"],
        "describe_processes": [
            # new, optional filter arguments
            "states", "engine", "group", "label_selector", "name_prefix", "upid_prefix",
        ],
        "restart_process": ["upid"],
        "terminate_process": ["upid"],
        "terminate_processes": [
            "states", "engine", "group", "label_selector", "name_prefix", "upid_prefix", "all",
        ],
        "set_group_ttl": ["group", "ttl_seconds"],
        "set_system_boot": ["system_boot"],
        "dump": [],
    }  # fmt: skip
    actual = {op: list(inspect.signature(getattr(core, op)).parameters) for op in expected}
    assert actual == expected
