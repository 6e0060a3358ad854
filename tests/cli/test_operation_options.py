"""``pd-cli``'s options against the request models of the operations they call.

Every command declares the operation it calls (:data:`cli.pdcli.COMMAND_CALLS`):
each of its parameters is an argument of that operation (same name, a type and
choices the model accepts), is parsed into one (``builds``), or is the command's
own (``local``); every argument of the operation is reachable from the command or
declared not exposed; every operation a dispatcher serves is called by a command
or declared as called by no command.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import click
import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from cli.pdcli import COMMAND_CALLS, NO_COMMAND, main
from dispatcher.service import RPC_OPERATIONS


def _commands(group: click.Group, path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        full = f"{path} {name}".strip()
        if isinstance(command, click.Group):
            yield from _commands(command, full)
        else:
            yield full, command


COMMANDS = dict(_commands(main))


def _adapter(info: FieldInfo) -> TypeAdapter[Any]:
    """Validates one field's values as the model does."""
    if info.metadata:
        return TypeAdapter(Annotated[info.annotation, *info.metadata])
    return TypeAdapter(info.annotation)


def _samples(param: click.Parameter) -> list[Any]:
    """Values the parameter can pass on as they are."""
    if isinstance(param, click.Option) and param.is_flag and not param.is_bool_flag:
        return [param.flag_value]
    kind = param.type
    if isinstance(kind, click.Choice):
        return list(kind.choices)
    samples: list[Any]
    if isinstance(kind, click.types.IntParamType):
        # The ends of a range must both be accepted (an open end: 1).
        samples = [getattr(kind, "min", None), getattr(kind, "max", None)]
        samples = [1 if end is None else end for end in samples]
    elif isinstance(kind, click.types.FloatParamType):
        samples = [1.0]
    elif isinstance(kind, click.types.BoolParamType):
        samples = [True, False]
    else:
        samples = ["x1"]
    default = param.default
    if isinstance(default, str | int | float) and not param.multiple:
        samples.append(default)
    return samples


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_declares_the_operation_it_calls(path: str) -> None:
    assert COMMANDS[path] in COMMAND_CALLS, f"pd-cli {path} declares no operation"


@pytest.mark.parametrize(
    "path", sorted(p for p, c in COMMANDS.items() if COMMAND_CALLS[c].model is not None)
)
def test_every_option_maps_to_an_argument_of_the_operation(path: str) -> None:
    calls = COMMAND_CALLS[COMMANDS[path]]
    assert calls.model is not None
    fields = calls.model.model_fields
    reached = set()
    for param in COMMANDS[path].params:
        name = param.name
        assert name is not None
        if name in calls.local:
            continue
        if name in calls.builds:
            assert calls.builds[name] in fields, f"{path}: {name} builds an unknown argument"
            reached.add(calls.builds[name])
            continue
        assert name in fields, f"pd-cli {path}: {name} is no argument of {calls.model.operation}"
        assert not param.multiple, f"pd-cli {path}: repeated {name} must say what it builds"
        adapter = _adapter(fields[name])
        for sample in _samples(param):
            try:
                adapter.validate_python(sample, strict=True)
            except ValidationError as exc:
                pytest.fail(f"pd-cli {path}: {name}={sample!r} is refused by the model: {exc}")
        reached.add(name)
    missing = set(fields) - reached - set(calls.not_exposed)
    assert not missing, f"pd-cli {path}: arguments neither reachable nor declared: {missing}"
    assert not set(calls.not_exposed) - set(fields)
    assert not calls.local & set(fields), f"{path}: a local parameter shadows an argument"


def test_every_served_operation_is_called_by_a_command_or_declared_as_called_by_none() -> None:
    called = {calls.model.operation for calls in COMMAND_CALLS.values() if calls.model}
    declared = {model.operation for model in NO_COMMAND}
    assert called | declared == set(RPC_OPERATIONS)
    assert not called & declared


def test_a_mode_the_model_refuses_is_caught_by_the_check() -> None:
    # The check is not vacuous: a choice outside the model's modes fails it.
    from dispatcher.requests import ScheduleProcessRequest

    adapter = _adapter(ScheduleProcessRequest.model_fields["restart_mode"])
    with pytest.raises(ValidationError):
        adapter.validate_python("SOMETIMES", strict=True)
