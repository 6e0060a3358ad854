"""Operations declared once: a request model and the ``@operation`` decorator."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from pydantic import ConfigDict

from dashi.operations import (
    OperationRequest,
    legacy_signature,
    operation,
    operation_map,
    operations_of,
)

M = TypeVar("M", bound=OperationRequest)


class Greet(OperationRequest):
    model_config = ConfigDict(extra="forbid", strict=True)
    operation: ClassVar[str] = "greet"

    name: str
    greeting: str = "hello"


class ListAll(OperationRequest):
    operation: ClassVar[str] = "list_all"
    large_reply: ClassVar[bool] = True


class Plain:
    """Raw arguments go through ``model_validate``."""

    @operation(Greet)
    def greet(self, req: Greet) -> str:
        return f"{req.greeting} {req.name}"

    @operation(ListAll)
    def list_all(self, req: ListAll) -> list[str]:
        return ["a"]


class Parsing(Plain):
    """Raw arguments go through ``parse_request``; ``greet`` is overridden."""

    def __init__(self) -> None:
        self.parsed: list[dict[str, Any]] = []

    def parse_request(self, model: type[M], args: dict[str, Any]) -> M:
        self.parsed.append(args)
        return model.model_validate(args)

    @operation(Greet)
    def greet(self, req: Greet) -> str:
        return f"{req.greeting}, {req.name}!"


def test_the_operations_of_a_class_come_in_declaration_order_with_the_models_flags() -> None:
    ops = operations_of(Plain)
    assert [(op.name, op.attribute, op.model, op.large_reply) for op in ops] == [
        ("greet", "greet", Greet, False),
        ("list_all", "list_all", ListAll, True),
    ]
    assert operations_of(Plain()) == ops
    assert set(operation_map(Parsing)) == {"greet", "list_all"}


def test_a_handler_takes_the_model_or_the_legacy_arguments() -> None:
    plain = Plain()
    assert plain.greet(Greet(name="ann")) == "hello ann"
    assert plain.greet("ann", "hi") == "hi ann"
    assert plain.greet(name="ann", greeting="hey") == "hey ann"
    assert plain.list_all() == ["a"]


def test_the_bound_signature_is_the_models_fields_in_order() -> None:
    signature = inspect.signature(Plain().greet)
    assert [(p.name, p.kind, p.default) for p in signature.parameters.values()] == [
        ("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("greeting", inspect.Parameter.POSITIONAL_OR_KEYWORD, "hello"),
    ]
    assert legacy_signature(Greet) == signature


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing a required argument: 'name'"),
        (("ann",), {"colour": "red"}, "got an unexpected keyword argument 'colour'"),
        (("ann", "hi", "extra"), {}, "too many positional arguments"),
    ],
)
def test_missing_and_unexpected_arguments_are_type_errors_like_a_plain_method(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Plain().greet(*args, **kwargs)


def test_raw_arguments_go_through_the_objects_parse_request_with_defaults_applied() -> None:
    parsing = Parsing()
    assert parsing.greet("bob") == "hello, bob!"
    assert parsing.parsed == [{"name": "bob", "greeting": "hello"}]
    # A validated model is not parsed again.
    assert parsing.greet(Greet(name="cy")) == "hello, cy!"
    assert len(parsing.parsed) == 1


def test_two_handlers_of_one_operation_name_are_refused() -> None:
    class Twice(Plain):
        @operation(Greet)
        def greet_again(self, req: Greet) -> str:
            return req.name

    with pytest.raises(ValueError, match="greet is declared by both greet and greet_again"):
        operations_of(Twice)


def test_a_model_without_an_operation_name_is_refused() -> None:
    class Nameless(OperationRequest):
        value: int

    with pytest.raises(TypeError, match="Nameless declares no operation name"):
        operation(Nameless)(lambda self, req: None)


def test_the_operations_module_imports_nothing_of_the_dispatcher() -> None:
    # The wire-protocol machinery moves to the dashi package, which imports none of ours.
    from dashi import operations

    tree = ast.parse(Path(operations.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {"dispatcher", "eeagent", "cli", "pdcommon"}
    assert not {name for name in imported if name.split(".")[0] in ours}
