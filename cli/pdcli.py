"""``pd-cli``: the operator's terminal interface to the Process Dispatcher."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
import yaml

from cli.common import CONFIG_HELP, secure_state_dir, settings_from_options
from dashi.errors import RemoteError, RequestError, RpcTimeoutError, TransportError
from dispatcher.client import ProcessDispatcherClient
from dispatcher.requests import (
    CreateDefinitionRequest,
    CreateProcessRequest,
    DescribeDefinitionRequest,
    DescribeProcessesRequest,
    DescribeProcessEventsRequest,
    DescribeProcessRequest,
    DumpRequest,
    ListDefinitionsRequest,
    QueueingModeName,
    RemoveDefinitionRequest,
    RestartModeName,
    RestartProcessRequest,
    ScheduleProcessRequest,
    SetGroupTtlRequest,
    SetSystemBootRequest,
    TerminateProcessesRequest,
    TerminateProcessRequest,
    UpdateDefinitionRequest,
)
from dispatcher.selectors import check_group, check_labels, parse_selector
from pdcommon.errors import DispatcherError
from pdcommon.heartbeat_messages import (
    MAX_LOG_TAIL,
    AddEngineRequest,
    GetProcessLogsRequest,
    HeartbeatRequest,
    ListEnginesRequest,
    LogStream,
    NodeStateRequest,
)
from pdcommon.requests import Request
from pdcommon.settings import Settings
from pdcommon.signals import signal_label
from pdcommon.state_dir import PRIVATE_UMASK
from pdcommon.states import ProcessState, QueueingMode, RestartMode
from pdcommon.wire import broker_config

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner
    from rich.table import Table

HELP = """Operate a Process Dispatcher: definitions, processes, nodes and engines.

With no configuration it talks to the local dispatcher on the embedded defaults.
Set PD_AMQP_URI (or --config) to reach one through RabbitMQ.

Exit status: 0 success, 1 error reported by the dispatcher, 2 usage or
configuration error, 3 timeout, or a broker unreachable or refusing the login.

Shell completion: eval "$(pd-cli completion bash)" (or zsh, fish).
"""

EXIT_REMOTE, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Calls:
    """The operation a command calls, and how its parameters reach the request.

    A parameter named like a field of ``model`` is passed as that argument
    unchanged; the others are listed (a test checks this against the model).

    Attributes:
        model: the request model of the operation (``None``: the command calls none).
        builds: parameter → the field it is parsed or assembled into.
        local: parameters that are no argument (output, polling, filtering).
        not_exposed: fields the command leaves at their defaults, with the reason.
    """

    model: type[Request] | None
    builds: Mapping[str, str] = field(default_factory=dict)
    local: frozenset[str] = frozenset()
    not_exposed: Mapping[str, str] = field(default_factory=dict)


#: Each command → the operation it calls (filled by :func:`_calls`).
COMMAND_CALLS: dict[click.Command, Calls] = {}

#: Operations no command calls, with the reason.
NO_COMMAND: Final[Mapping[type[Request], str]] = {
    HeartbeatRequest: "sent by eeagents",
    DescribeProcessesRequest: "process list asks for dump: it shows each process's engine and "
    "node (with --group or --label it also asks describe_processes which processes match)",
    TerminateProcessRequest: "process terminate declares terminate_processes (its filters); "
    "with a UPID it calls terminate_process",
    NodeStateRequest: "sent by the provisioner (or an EPU management service)",
}

C = TypeVar("C", bound=click.Command)


def _calls(
    model: type[Request] | None,
    *,
    builds: Mapping[str, str] | None = None,
    local: tuple[str, ...] = (),
    not_exposed: Mapping[str, str] | None = None,
) -> Callable[[C], C]:
    """Declare the operation the decorated command calls (see :class:`Calls`)."""

    def record(command: C) -> C:
        COMMAND_CALLS[command] = Calls(model, builds or {}, frozenset(local), not_exposed or {})
        return command

    return record


def _command_name() -> str:
    """The running command as typed, e.g. ``pd-cli process list``."""
    path = click.get_current_context().command_path.split(" ", 1)
    return " ".join(["pd-cli", *path[1:]])


def _use_state_dir(settings: Settings) -> None:
    """Check and secure the state directory if it exists; never create it.

    Files this process creates there (its reply queue) are private either way.
    """
    path = settings.state_dir.expanduser()
    ancestor = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if path.exists() or (ancestor is not None and not ancestor.is_dir()):
        secure_state_dir(settings)  # (also reports a path that cannot be a directory)
    else:
        os.umask(PRIVATE_UMASK)


class Context:
    def __init__(
        self, config_files: tuple[str, ...], sysname: str | None, timeout: float, fmt: str
    ):
        self.config_files = config_files
        self.sysname = sysname
        self.timeout = timeout
        self.format = fmt

    @contextmanager
    def client(self) -> Iterator[ProcessDispatcherClient]:
        """A client of the dispatcher; errors become one line and an exit status.

        With the embedded broker, a state directory that does not exist is not
        created (no dispatcher ever ran there, and the call says so).
        """
        settings = settings_from_options(self.config_files, {"dashi.sysname": self.sysname})
        broker = broker_config(settings)
        if broker.is_embedded:
            # The embedded broker's messages live there: make them private.
            _use_state_dir(settings)
            where = f"state directory {settings.state_dir}"
        else:
            where = f"broker {broker.masked_uri}"
        client = ProcessDispatcherClient.from_settings(
            settings, name="pd-cli", timeout=self.timeout
        )
        try:
            yield client
        except TransportError as exc:
            # Includes AccessRefusedError: the broker refused the login or the vhost.
            reason = exc.reason if isinstance(exc, RpcTimeoutError) else str(exc)
            hint = "" if where.split(" ")[-1] in reason else f" ({where})"
            click.echo(f"Error: {_command_name()}: {reason}{hint}", err=True)
            raise SystemExit(EXIT_UNREACHABLE) from None
        except RequestError as exc:
            click.echo(f"Error: {type(exc).__name__}: {exc.value}", err=True)
            raise SystemExit(EXIT_REMOTE) from None
        except RemoteError as exc:
            # The remote type name (e.g. KeyError) says more than "RemoteError".
            click.echo(f"Error: {exc.exc_type}: {exc.value}", err=True)
            raise SystemExit(EXIT_REMOTE) from None
        except DispatcherError as exc:
            click.echo(f"Error: {exc}", err=True)
            raise SystemExit(EXIT_REMOTE) from None
        finally:
            client.close()

    def render(self, result: Any, *, empty: str = "") -> None:
        """Print ``result`` in the chosen format; as a table, an empty list is the
        line ``empty`` (e.g. "no nodes") rather than nothing."""
        if self.format == "yaml":
            click.echo(yaml.safe_dump(result, default_flow_style=False, sort_keys=True), nl=False)
        elif self.format == "json" or not isinstance(result, dict | list):
            click.echo(json.dumps(result, indent=2, sort_keys=True))
        else:
            _render_table(result, empty=empty)


#: Columns that hold identifiers: never wrapped or cut, however narrow the terminal.
_ID_COLUMNS: Final = frozenset({"upid", "assigned", "node", "engine", "field"})


def _is_id_column(name: str) -> bool:
    return name in _ID_COLUMNS or name.endswith("_id")


def _console(*, stderr: bool = False) -> Console:
    """The console tables are printed on.

    On a terminal, tables fit its width (``COLUMNS`` overrides it); anywhere else
    (a pipe, a file) lines are as long as their content: nothing is cut.
    """
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=_UNLIMITED_WIDTH)
    return console


#: The width of output that is not a terminal: wide enough for any row.
_UNLIMITED_WIDTH: Final = 1 << 16


#: The narrowest a column that is not an id is folded to before the table grows
#: wider than the terminal.
_FOLDED_MIN_WIDTH: Final = 4


def _print_table(console: Console, table: Table) -> None:
    """Print ``table``, wider than the terminal rather than cut an id column."""
    # Each column has one space either side and a border to its left; one more border.
    needed = 1 + sum(3 + (column.min_width or _FOLDED_MIN_WIDTH) for column in table.columns)
    width = console.width
    console.width = max(width, needed)  # (print's own width cannot exceed the console's)
    try:
        console.print(table)
    finally:
        console.width = width


def _id_column_widths(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, int]:
    """The width each id column needs to show its longest value (and name) whole."""
    return {
        column: max([len(column), *(len(_cell(row.get(column))) for row in rows)])
        for column in columns
        if _is_id_column(column)
    }


def _table(columns: list[str], rows: list[dict[str, Any]], **options: Any) -> Table:
    """A table whose id columns never wrap or shorten."""
    from rich.table import Table

    table = Table(**options)
    widths = _id_column_widths(rows, columns)
    for column in columns:
        if column in widths:
            table.add_column(column, no_wrap=True, min_width=widths[column], overflow="ignore")
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    return table


def _render_table(
    result: dict[str, Any] | list[Any], console: Console | None = None, empty: str = ""
) -> None:
    """Print ``result`` as a table: a mapping as field/value rows, a list of
    mappings as one row each (``empty`` when there is none)."""
    console = console or _console()
    if isinstance(result, dict):
        pairs = [{"field": key, "value": value} for key, value in result.items()]
        table = _table(["field", "value"], pairs, show_header=False)
        # The value column shows each id whole (the longest, at least).
        ids = [len(_cell(value)) for key, value in result.items() if _is_id_column(key)]
        table.columns[1].min_width = max(ids, default=None)
        _print_table(console, table)
        return
    rows = result
    if not rows and empty:
        console.print(empty, highlight=False)
    elif rows and all(isinstance(row, dict) for row in rows):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        _print_table(console, _table(columns, rows))
    else:
        for row in rows:
            console.print(_cell(row), highlight=False, soft_wrap=True)


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


pass_ctx = click.make_pass_decorator(Context)


@click.group(help=HELP)
@click.option("--config", "config_files", multiple=True, metavar="FILE", help=CONFIG_HELP)
@click.option("--sysname", default=None, help="System name prefixing queues and the exchange.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for each reply.",
)
@click.option("--json", "fmt", flag_value="json", help="Print JSON (stable, for scripts).")
@click.option("--yaml", "fmt", flag_value="yaml", help="Print YAML (stable, for scripts).")
@click.pass_context
def main(
    ctx: click.Context,
    config_files: tuple[str, ...],
    sysname: str | None,
    timeout: float,
    fmt: str | None,
) -> None:
    ctx.obj = Context(config_files, sysname, timeout, fmt or "table")


# -- definitions -------------------------------------------------------------------


@main.group(help="Process definitions: what a process runs.")
def definition() -> None:
    pass


def _max_runtime_option(help_: str) -> Callable[[F], F]:
    """``--max-runtime SECONDS``: a number of seconds > 0 (the dispatcher checks the
    upper limit, a year)."""
    return click.option(
        "--max-runtime",
        "max_runtime_seconds",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help=help_,
    )


def _executable(
    file: str | None,
    exec_: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
) -> tuple[Any, str | None, str | None]:
    if file:
        data = _definition_file(file)
        return data["executable"], data.get("name"), data.get("description")
    if not exec_:
        raise click.UsageError("give --exec (with --arg, --env, --workdir) or --file")
    executable: dict[str, Any] = {"exec": exec_, "argv": list(args)}
    if env:
        pairs = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
            pairs[key] = value
        executable["env"] = pairs
    if workdir:
        executable["working_directory"] = workdir
    return executable, None, None


def _definition_file(file: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "executable" not in data:
        raise click.BadParameter(
            "the file must be a mapping with an 'executable' key", param_hint="--file"
        )
    return data


def _file_max_runtime(file: str | None, given: float | None) -> Any:
    """``--max-runtime`` if given, else the file's ``max_runtime_seconds`` (if any)."""
    if given is not None or not file:
        return given
    return _definition_file(file).get("max_runtime_seconds")


def _definition_options(func: F) -> F:
    for decorator in reversed(
        [
            click.argument("definition_id"),
            click.option("--exec", "exec_", help="Program to run (no shell is involved)."),
            click.option("--arg", "args", multiple=True, help="One argument; repeat in order."),
            click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment variable."),
            click.option("--workdir", help="Working directory of the process."),
            click.option(
                "--file",
                type=click.Path(exists=True, dir_okay=False),
                help="YAML/JSON definition file.",
            ),
            click.option("--type", "definition_type", default="supd", show_default=True),
            click.option("--name"),
            click.option("--description"),
            _max_runtime_option(
                "Default maximum runtime of its processes, in seconds: a process "
                "scheduled without --max-runtime is terminated (not restarted) after it."
            ),
        ]
    ):
        func = decorator(func)
    return func


_DEFINITION_BUILDS: Final = {
    name: "executable" for name in ("exec_", "args", "env", "workdir", "file")
}


@_calls(CreateDefinitionRequest, builds=_DEFINITION_BUILDS)
@definition.command("create", help="Create a definition.")
@_definition_options
@pass_ctx
def definition_create(
    ctx: Context,
    definition_id: str,
    exec_: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    file: str | None,
    definition_type: str,
    name: str | None,
    description: str | None,
    max_runtime_seconds: float | None,
) -> None:
    executable, file_name, file_description = _executable(file, exec_, args, env, workdir)
    with ctx.client() as pd:
        pd.create_definition(
            definition_id,
            definition_type,
            executable,
            name=name or file_name,
            description=description or file_description,
            max_runtime_seconds=_file_max_runtime(file, max_runtime_seconds),
        )
        ctx.render(pd.describe_definition(definition_id))


@_calls(UpdateDefinitionRequest, builds=_DEFINITION_BUILDS)
@definition.command("update", help="Replace a definition.")
@_definition_options
@pass_ctx
def definition_update(
    ctx: Context,
    definition_id: str,
    exec_: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    file: str | None,
    definition_type: str,
    name: str | None,
    description: str | None,
    max_runtime_seconds: float | None,
) -> None:
    executable, file_name, file_description = _executable(file, exec_, args, env, workdir)
    with ctx.client() as pd:
        pd.update_definition(
            definition_id,
            definition_type,
            executable,
            name=name or file_name,
            description=description or file_description,
            max_runtime_seconds=_file_max_runtime(file, max_runtime_seconds),
        )
        ctx.render(pd.describe_definition(definition_id))


@_calls(DescribeDefinitionRequest)
@definition.command("describe", help="Show a definition.")
@click.argument("definition_id")
@pass_ctx
def definition_describe(ctx: Context, definition_id: str) -> None:
    with ctx.client() as pd:
        result = pd.describe_definition(definition_id)
    if result is None:
        click.echo(f"Error: no definition {definition_id!r}", err=True)
        raise SystemExit(EXIT_REMOTE)
    ctx.render(result)


@_calls(RemoveDefinitionRequest)
@definition.command("remove", help="Remove a definition.")
@click.argument("definition_id")
@pass_ctx
def definition_remove(ctx: Context, definition_id: str) -> None:
    with ctx.client() as pd:
        pd.remove_definition(definition_id)


@_calls(ListDefinitionsRequest)
@definition.command("list", help="List definition ids.")
@pass_ctx
def definition_list(ctx: Context) -> None:
    with ctx.client() as pd:
        ctx.render(sorted(pd.list_definitions()), empty="no definitions")


# -- processes ---------------------------------------------------------------------


@main.group(help="Processes: schedule, inspect, restart, terminate.")
def process() -> None:
    pass


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"not valid JSON/YAML: {exc}", param_hint=name) from None


def _mapping_option(value: str | None, name: str) -> dict[str, Any] | None:
    parsed = _json_option(value, name)
    if parsed is not None and not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON/YAML mapping", param_hint=name)
    return parsed


class _GroupType(click.ParamType[str, Any]):
    """A group name, checked as the dispatcher checks it (before any call)."""

    name = "group"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_group(str(value)) or ""
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _SelectorType(click.ParamType[str, Any]):
    """A label selector, parsed as the dispatcher parses it (before any call)."""

    name = "selector"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SELECTOR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_selector(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


_GROUP_NAME = _GroupType()
_SELECTOR = _SelectorType()


@_calls(
    ScheduleProcessRequest,
    builds={
        "configuration": "configuration",
        "subscribers": "subscribers",
        "constraints": "constraints",
        "restart_policy": "restart_policy",
        "labels": "labels",
    },
)
@process.command("schedule", help="Schedule a process (every schedule_process parameter).")
@click.option(
    "--restart-policy",
    help="Restart policy as JSON/YAML: any of initial_delay, max_delay, failure_limit, "
    "interval, jitter (docs/configuration.md).",
)
@_max_runtime_option(
    "Seconds a round may run before it is terminated (not restarted); default: the definition's."
)
@click.argument("upid")
@click.option("--definition", "definition_id", help="Definition id (required for a new process).")
@click.option("--configuration", help="Configuration as JSON/YAML.")
@click.option(
    "--subscriber", "subscribers", multiple=True, metavar="NAME:OP", help="Notify NAME with OP."
)
@click.option(
    "--constraint", "constraints", multiple=True, metavar="KEY=VALUE", help="Placement constraint."
)
@click.option("--queueing-mode", type=click.Choice(QueueingMode.ALL))
@click.option("--restart-mode", type=click.Choice(RestartMode.ALL))
@click.option("--engine", "execution_engine_id", help="Execution engine id.")
@click.option("--node-exclusive", help="Tag held on the node while the process runs.")
@click.option("--name", help="Process name.")
@click.option("--group", type=_GROUP_NAME, help="The process's group (letters, digits and .-_).")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label of the process; repeat for several.",
)
@pass_ctx
def process_schedule(
    ctx: Context,
    upid: str,
    definition_id: str | None,
    configuration: str | None,
    subscribers: tuple[str, ...],
    constraints: tuple[str, ...],
    queueing_mode: QueueingModeName | None,
    restart_mode: RestartModeName | None,
    execution_engine_id: str | None,
    node_exclusive: str | None,
    name: str | None,
    restart_policy: str | None,
    max_runtime_seconds: float | None,
    group: str | None,
    labels: tuple[str, ...],
) -> None:
    label_map: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        label_map[key] = value
    try:
        check_labels(label_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None
    subs = []
    for item in subscribers:
        target, sep, op = item.partition(":")
        if not sep or not target or not op:
            raise click.BadParameter(f"{item!r} is not NAME:OP", param_hint="--subscriber")
        subs.append([target, op])
    cons: dict[str, Any] = {}
    for item in constraints:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--constraint")
        cons[key] = value
    with ctx.client() as pd:
        ctx.render(
            pd.schedule_process(
                upid,
                definition_id,
                configuration=_mapping_option(configuration, "--configuration"),
                subscribers=subs or None,
                constraints=cons or None,
                queueing_mode=queueing_mode,
                restart_mode=restart_mode,
                execution_engine_id=execution_engine_id,
                node_exclusive=node_exclusive,
                name=name,
                restart_policy=_mapping_option(restart_policy, "--restart-policy"),
                max_runtime_seconds=max_runtime_seconds,
                group=group,
                labels=label_map or None,
            )
        )


@_calls(CreateProcessRequest)
@process.command("create", help="Create a process without scheduling it.")
@click.argument("upid")
@click.argument("definition_id")
@click.option("--name")
@pass_ctx
def process_create(ctx: Context, upid: str, definition_id: str, name: str | None) -> None:
    with ctx.client() as pd:
        ctx.render(pd.create_process(upid, definition_id, name=name))


@_calls(DescribeProcessRequest, local=("limit",))
@process.command("describe", help="Show a process's full record.")
@click.argument("upid")
@pass_ctx
@click.option(
    "--events",
    "limit",
    default=5,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="How many of its last events to show (0: none).",
)
def process_describe(ctx: Context, upid: str, limit: int) -> None:
    with ctx.client() as pd:
        result: dict[str, Any] | None = pd.describe_process(upid)  # type: ignore[assignment]
        events = pd.describe_process_events(upid, limit=limit) if result and limit else []
    if result is None:
        click.echo(f"Error: no process {upid!r}", err=True)
        raise SystemExit(EXIT_REMOTE)
    if ctx.format != "table":
        ctx.render({**result, "events": events} if limit else result)
        return
    ctx.render(_local_times(result))
    if events:
        click.echo(f"last events (pd-cli process events {upid}):")
        for event in events:
            click.echo(f"  {_event_line(dict(event))}")


#: Record keys holding epoch seconds (shown as local ISO times in tables).
_TIME_KEYS: Final = ("started_at", "ended_at", "next_restart_at", "time")
_TIME_LIST_KEYS: Final = ("start_times", "dispatch_times", "failure_times")


def _local_time(epoch: Any) -> Any:
    """Epoch seconds as a local ISO 8601 time with its offset (other values unchanged)."""
    from datetime import datetime

    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="milliseconds")
    return epoch


def _local_times(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a table shows it: times as local ISO times, a signal by its name."""
    shown = dict(record)
    if isinstance(shown.get("signal"), int):
        shown["signal"] = signal_label(shown["signal"])
    for key in _TIME_KEYS:
        if key in shown:
            shown[key] = _local_time(shown[key])
    for key in _TIME_LIST_KEYS:
        if isinstance(shown.get(key), list):
            shown[key] = [_local_time(value) for value in shown[key]]
    return shown


def _signal_note(record: dict[str, Any]) -> str:
    """``signal SIGKILL (9)`` for a record or event that has a signal its reason does
    not already name (the agent's reason "killed by signal SIGKILL (9)" does)."""
    number = record.get("signal")
    if not isinstance(number, int) or isinstance(number, bool):
        return ""
    label = signal_label(number)
    if label in str(record.get("reason") or ""):
        return ""
    return f"signal {label}"


def _event_line(event: dict[str, Any]) -> str:
    """One event as a line: time, round, state, and why."""
    parts = [str(_local_time(event.get("time"))), f"round {event.get('round')}", event["state"]]
    if event.get("exit_code") is not None:
        parts.append(f"exit code {event['exit_code']}")
    signal_note = _signal_note(event)
    if signal_note:
        parts.append(signal_note)
    if event.get("reason"):
        parts.append(str(event["reason"]))
    if event.get("agent"):
        parts.append(f"on {event['agent']}" + (f"@{event['node']}" if event.get("node") else ""))
    return "  ".join(parts)


@_calls(DescribeProcessEventsRequest, local=("show_output",))
@process.command("events", help="Show a process's event history (state changes and why).")
@click.argument("upid")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many of the last events.",
)
@click.option(
    "--output", "show_output", is_flag=True, help="Also print the output kept with ended rounds."
)
@pass_ctx
def process_events(ctx: Context, upid: str, limit: int, show_output: bool) -> None:
    with ctx.client() as pd:
        events: list[dict[str, Any]] = pd.describe_process_events(upid, limit=limit)  # type: ignore[assignment]
    if ctx.format != "table":
        ctx.render(events)
        return
    rows = [
        {
            "time": _local_time(e["time"]),
            "round": e["round"],
            "state": e["state"],
            "exit_code": e.get("exit_code"),
            "reason": e.get("reason"),
            "assigned": e.get("agent"),
            "node": e.get("node"),
        }
        for e in events
    ]
    ctx.render(rows, empty=f"no events of {upid}")
    if show_output:
        for e in events:
            for stream, text in (e.get("output") or {}).items():
                if text:
                    click.echo(f"--- round {e['round']} {stream} ---")
                    click.echo(text, nl=not text.endswith("\n"))


class _StateType(click.ParamType[str, Any]):
    """A process state: ``500-RUNNING``, ``RUNNING``, ``running`` or ``500`` all mean
    ``500-RUNNING``."""

    name = "state"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "STATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().upper().replace(" ", "_")
        for state in ProcessState.ALL:
            number, _, name = state.partition("-")
            if text in (state, number, name):
                return state
        self.fail(f"{value!r} is not a process state: {_STATE_NAMES}", param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        names = [state.partition("-")[2] for state in ProcessState.ALL]
        return [CompletionItem(n) for n in names if n.startswith(incomplete.upper())]


#: The states, for help and errors.
_STATE_NAMES: Final = ", ".join(state.partition("-")[2] for state in ProcessState.ALL)
#: What a STATE option accepts, for its help.
_STATE_HELP: Final = (
    f"STATE is a state's name, with or without its number, in any case "
    f"(RUNNING, running or 500-RUNNING): {_STATE_NAMES}."
)


#: Columns ``process list`` can sort by.
_SORT_KEYS = ("upid", "name", "state", "round", "engine", "node", "assigned", "group")


def _process_rows(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per process, with the engine and node it is placed on.

    A placed process's engine and node are its agent's; an unplaced one shows the
    engine its constraints ask for (if any) and no node.
    """
    resources = dump.get("resources", {})
    rows = []
    for upid, p in dump.get("processes", {}).items():
        agent = resources.get(p.get("assigned") or "")
        constraints = p.get("constraints") or {}
        if agent is not None:
            engine = (agent.get("properties") or {}).get("engine")
            node_id = agent.get("node_id")
        else:
            engine, node_id = constraints.get("engine"), None
        rows.append(
            {
                "upid": upid,
                "name": p.get("name"),
                "state": p["state"],
                "round": p["round"],
                "engine": engine,
                "node": node_id,
                "assigned": p.get("assigned"),
                "group": p.get("group"),
            }
        )
    return rows


def _sort_value(row: dict[str, Any], key: str) -> tuple[bool, Any, str]:
    """Sort key: empty values first, then the column's value, ties broken by upid."""
    value = row[key]
    return (value is not None, value if isinstance(value, int) else str(value or ""), row["upid"])


@_calls(
    DumpRequest,
    local=("states", "engines", "nodes", "group", "label_selector", "sort_key", "reverse"),
)
@process.command("list", help="List processes, filtered and sorted.")
@click.option(
    "--group",
    type=_GROUP_NAME,
    help="Only processes of this group (filtered by the dispatcher).",
)
@click.option(
    "-l",
    "--label",
    "label_selector",
    type=_SELECTOR,
    help="Only processes whose labels match, e.g. 'app=web,tier!=db,env in (a,b),!x' "
    "(filtered by the dispatcher).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=_StateType(),
    help=f"Only processes in this state; repeat to accept several. {_STATE_HELP}",
)
@click.option("--engine", "engines", multiple=True, help="Only processes of this engine.")
@click.option("--node", "nodes", multiple=True, help="Only processes placed on this node.")
@click.option(
    "--sort",
    "sort_key",
    type=click.Choice(_SORT_KEYS),
    default="upid",
    show_default=True,
    help="Column to sort by.",
)
@click.option("--reverse", is_flag=True, help="Sort in descending order.")
@pass_ctx
def process_list(
    ctx: Context,
    states: tuple[str, ...],
    engines: tuple[str, ...],
    nodes: tuple[str, ...],
    sort_key: str,
    reverse: bool,
    group: str | None,
    label_selector: str | None,
) -> None:
    matching: set[str] | None = None
    with ctx.client() as pd:
        if group is not None or label_selector is not None:
            selected = pd.describe_processes(
                states=list(states) or None, group=group, label_selector=label_selector
            )
            matching = {record["upid"] for record in selected}
        dump = pd.dump()
    rows = [
        row
        for row in _process_rows(dict(dump))
        if (not states or row["state"] in states)
        and (not engines or row["engine"] in engines)
        and (not nodes or row["node"] in nodes)
        and (matching is None or row["upid"] in matching)
    ]
    rows.sort(key=lambda row: _sort_value(row, sort_key))
    if reverse:
        rows.reverse()
    filtered = bool(states or engines or nodes or matching is not None)
    ctx.render(rows, empty="no processes match" if filtered else "no processes")


#: States from which a process does not move without a request.
_FINAL_STATES = ("700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED")


class _Status:
    """Where ``process wait`` shows the state it sees (see :func:`_spinner`)."""

    def __init__(self, spinner: Spinner | None = None, live: Live | None = None) -> None:
        self._spinner, self._live = spinner, live

    def update(self, text: str) -> None:
        if self._spinner is not None and self._live is not None:
            self._spinner.update(text=text)
            self._live.refresh()


@contextmanager
def _spinner(console: Console, text: str, *, enabled: bool = True) -> Iterator[_Status]:
    """A spinner on ``console`` showing ``text``, while log lines print above it.

    Only on an interactive terminal (not a pipe, a file, ``TERM=dumb`` or
    ``TTY_INTERACTIVE=0``) and when ``enabled``. While it spins, log handlers of
    this process that write to the terminal write through ``console``, which
    prints each line above the spinner rather than over it.
    """
    if not (enabled and console.is_terminal and console.is_interactive):
        yield _Status()
        return
    from rich.file_proxy import FileProxy
    from rich.live import Live
    from rich.spinner import Spinner

    terminal = {id(stream) for stream in (sys.stderr, sys.__stderr__, sys.stdout, sys.__stdout__)}
    handlers = [
        handler
        for logger in (logging.getLogger(), *_named_loggers())
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in terminal
    ]
    spinner = Spinner("dots", text)
    with Live(spinner, console=console, refresh_per_second=12.5, transient=True) as live:
        previous = [(h, h.setStream(FileProxy(console, h.stream))) for h in handlers]
        try:
            yield _Status(spinner, live)
        finally:
            for handler, stream in previous:
                handler.flush()
                handler.setStream(stream)


def _named_loggers() -> list[logging.Logger]:
    return [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]


@_calls(DescribeProcessRequest, local=("states", "max_wait", "poll", "spinner"))
@process.command("wait", help="Wait until a process reaches a state (default 500-RUNNING).")
@click.argument("upid")
@click.option(
    "--state",
    "states",
    multiple=True,
    default=("500-RUNNING",),
    show_default=True,
    type=_StateType(),
    help=f"Target state; repeat to accept several. {_STATE_HELP}",
)
@click.option(
    "--timeout",
    "--max-wait",
    "max_wait",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds before giving up (exit status 3).",
)
@click.option(
    "--poll",
    default=0.2,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between checks.",
)
@click.option(
    "--spinner/--no-spinner",
    default=True,
    show_default=True,
    help="Show a spinner with the state seen, on an interactive terminal only. "
    "--no-spinner when another program (a pd-dispatcher started with &) writes to the "
    "same terminal.",
)
@pass_ctx
def process_wait(
    ctx: Context, upid: str, states: tuple[str, ...], max_wait: float, poll: float, spinner: bool
) -> None:
    import time

    from rich.console import Console

    deadline = time.monotonic() + max_wait
    console = Console(stderr=True)
    state = None
    with (
        ctx.client() as pd,
        _spinner(console, f"waiting for {upid}", enabled=spinner) as status,
    ):
        while True:
            record = pd.describe_process(upid)
            if record is None:
                click.echo(f"Error: no process {upid!r}", err=True)
                raise SystemExit(EXIT_REMOTE)
            state = record["state"]
            status.update(f"{upid}: {state}, waiting for {' or '.join(states)}")
            if state in states:
                break
            if state in _FINAL_STATES:
                _explain_end(pd, dict(record))
                raise SystemExit(EXIT_REMOTE)
            if time.monotonic() >= deadline:
                click.echo(f"Error: timed out waiting for {upid} (it is {state})", err=True)
                raise SystemExit(EXIT_UNREACHABLE)
            time.sleep(poll)
    ctx.render({"upid": upid, "state": state})


#: Lines of kept stderr ``process wait`` prints when a process ended.
_WAIT_STDERR_LINES: Final = 10


def _explain_end(pd: Any, record: dict[str, Any]) -> None:
    """Say why a process ended: its state, reason, exit code and last stderr lines."""
    upid, state = record["upid"], record["state"]
    message = f"Error: process {upid} is {state}"
    if record.get("reason"):
        message += f": {record['reason']}"
    if record.get("exit_code") is not None:
        message += f" (exit code {record['exit_code']})"
    signal_note = _signal_note(record)
    if signal_note:
        message += f" ({signal_note})"
    click.echo(message, err=True)
    try:
        stderr = str(pd.get_process_logs(upid, stream="stderr", tail_bytes=4096) or "")
    except (RequestError, RemoteError, RpcTimeoutError, TransportError):
        return  # nothing kept, or the agent is gone: the reason says enough
    lines = stderr.rstrip("\n").splitlines()[-_WAIT_STDERR_LINES:]
    if lines:
        click.echo(f"last lines of its stderr (pd-cli process logs {upid} --stderr):", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)


#: The most --tail may ask for, in MiB.
_MIB_TAIL: Final = MAX_LOG_TAIL // (1024 * 1024)


class _TailBytes(click.IntRange):
    """``--tail``'s byte count: its error names the limit in bytes and MiB."""

    def _describe_range(self) -> str:
        return f"1<=x<={MAX_LOG_TAIL}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = click.INT.convert(value, param, ctx)
        if number < 1:
            self.fail(f"{number} is not a byte count: give at least 1", param, ctx)
        if number > MAX_LOG_TAIL:
            self.fail(
                f"{number} bytes is more than the limit of {MAX_LOG_TAIL} bytes ({_MIB_TAIL} MiB)",
                param,
                ctx,
            )
        return number


@_calls(GetProcessLogsRequest, local=("follow", "interval"))
@process.command("logs", help="Print the tail of a process's stdout or stderr.")
@click.argument("upid")
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option(
    "--tail",
    "tail_bytes",
    default=65536,
    show_default=True,
    type=_TailBytes(1, MAX_LOG_TAIL),
    help=f"Bytes from the end of the output, at most {MAX_LOG_TAIL} ({_MIB_TAIL} MiB).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output (Ctrl-C stops).")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between polls with --follow.",
)
@pass_ctx
def process_logs(
    ctx: Context, upid: str, stream: LogStream, tail_bytes: int, follow: bool, interval: float
) -> None:
    import time

    with ctx.client() as pd:
        try:
            text = str(pd.get_process_logs(upid, stream=stream, tail_bytes=tail_bytes) or "")
            click.echo(text, nl=False)
            while follow:
                time.sleep(interval)
                latest = str(pd.get_process_logs(upid, stream=stream, tail_bytes=tail_bytes) or "")
                click.echo(_new_output(text, latest), nl=False)
                text = latest
        except KeyboardInterrupt:
            # Ctrl-C is how --follow ends, whether it comes during a fetch or
            # between two: a normal exit, not an error.
            if not follow:
                raise


def _new_output(previous: str, latest: str) -> str:
    """The part of ``latest`` (a tail) that follows what ``previous`` showed."""
    if not previous:
        return latest
    for start in range(len(previous)):
        if latest.startswith(previous[start:]):
            return latest[len(previous) - start :]
    return latest


@_calls(RestartProcessRequest)
@process.command("restart", help="Restart a running process (new round).")
@click.argument("upid")
@pass_ctx
def process_restart(ctx: Context, upid: str) -> None:
    with ctx.client() as pd:
        ctx.render(pd.restart_process(upid))


@_calls(
    TerminateProcessesRequest,
    builds={"states": "states"},
    local=("upid", "yes"),
    not_exposed={
        "engine": "select an engine's processes with process list --engine",
        "name_prefix": "select by group or labels",
        "upid_prefix": "select by group or labels",
        "all": "terminate every process through the client library",
    },
)
@process.command(
    "terminate",
    help="Terminate a process (UPID), or every process of a group or label selector.",
)
@click.argument("upid", required=False)
@click.option("--group", type=_GROUP_NAME, help="Terminate every process of this group.")
@click.option(
    "-l",
    "--label",
    "label_selector",
    type=_SELECTOR,
    help="Terminate every process whose labels match, e.g. 'app=web,tier!=db'.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=_StateType(),
    help="With --group or --label: only processes in this state; repeat for several.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def process_terminate(
    ctx: Context,
    upid: str | None,
    group: str | None,
    label_selector: str | None,
    states: tuple[str, ...],
    yes: bool,
) -> None:
    selecting = group is not None or label_selector is not None
    if upid is not None and (selecting or states):
        raise click.UsageError("give a UPID, or --group/--label, not both")
    if upid is not None:
        with ctx.client() as pd:
            ctx.render(pd.terminate_process(upid))
        return
    if not selecting:
        raise click.UsageError("give a UPID, or --group and/or --label to select processes")
    chosen = {"states": list(states) or None, "group": group, "label_selector": label_selector}
    with ctx.client() as pd:
        if not yes:
            selected = pd.describe_processes(**chosen)  # type: ignore[arg-type]
            in_play = [
                r["upid"] for r in selected if r["state"] not in ProcessState.TERMINAL_STATES
            ]
            if not in_play:
                click.echo(f"no process in play matches ({len(selected)} already ended)")
                return
            shown = ", ".join(in_play[:10]) + (", ..." if len(in_play) > 10 else "")
            click.confirm(f"Terminate {len(in_play)} process(es): {shown}?", abort=True, err=True)
        result = pd.terminate_processes(**chosen)  # type: ignore[arg-type]
    ctx.render(dict(result))


# -- nodes and engines ---------------------------------------------------------------


@main.group("group", help="Process groups: a time to live for all of a group.")
def group_() -> None:
    pass


@_calls(SetGroupTtlRequest, local=("clear",))
@group_.command(
    "ttl",
    help="Terminate every process of GROUP (and any scheduled into it later) "
    "TTL_SECONDS from now, with the reason 'group time to live exceeded'; "
    "a new call replaces the deadline, --clear removes it.",
)
@click.argument("group")
@click.argument(
    "ttl_seconds", required=False, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS"
)
@click.option("--clear", is_flag=True, help="Remove the group's deadline.")
@pass_ctx
def group_ttl(ctx: Context, group: str, ttl_seconds: float | None, clear: bool) -> None:
    if clear == (ttl_seconds is not None):
        raise click.UsageError("give SECONDS, or --clear")
    with ctx.client() as pd:
        result = pd.set_group_ttl(group, ttl_seconds)
    if ctx.format == "table" and result.get("expires_at") is not None:
        result = {**result, "expires_at": _local_time(result["expires_at"])}
    ctx.render(result)


@_calls(DumpRequest)
@group_.command("list", help="List groups: their processes, those in play, and deadlines.")
@pass_ctx
def group_list(ctx: Context) -> None:
    with ctx.client() as pd:
        dump = pd.dump()
    expiries: dict[str, float] = dump.get("group_expiries") or {}
    counts: dict[str, list[int]] = {name: [0, 0] for name in expiries}
    for record in dump.get("processes", {}).values():
        name = record.get("group")
        if name is None:
            continue
        count = counts.setdefault(name, [0, 0])
        count[0] += 1
        if record["state"] not in ProcessState.TERMINAL_STATES:
            count[1] += 1
    table = ctx.format == "table"
    rows = [
        {
            "group": name,
            "processes": counts[name][0],
            "in_play": counts[name][1],
            "expires_at": _local_time(expiries.get(name)) if table else expiries.get(name),
        }
        for name in sorted(counts)
    ]
    ctx.render(rows, empty="no groups")


@main.group(help="Nodes (VMs or local agent groups) and their agents.")
def node() -> None:
    pass


@_calls(DumpRequest)
@node.command("list", help="List nodes with their agents and slot use.")
@pass_ctx
def node_list(ctx: Context) -> None:
    with ctx.client() as pd:
        dump = pd.dump()
    rows = []
    for node_id, record in sorted(dump["nodes"].items()):
        agents = [
            dump["resources"][r] for r in record.get("resources", []) if r in dump["resources"]
        ]
        rows.append(
            {
                "node_id": node_id,
                "domain_id": record.get("domain_id"),
                "agents": ", ".join(f"{a['resource_id']} ({a['state']})" for a in agents),
                "slots used": f"{sum(len(a['assigned']) for a in agents)}/"
                f"{sum(a['slot_count'] for a in agents)}",
                "node_exclusive": ", ".join(record.get("node_exclusive") or []),
            }
        )
    ctx.render(rows, empty="no nodes")


@main.group(help="Execution engines.")
def engine() -> None:
    pass


@_calls(ListEnginesRequest)
@engine.command("list", help="List engines and their settings.")
@pass_ctx
def engine_list(ctx: Context) -> None:
    with ctx.client() as pd:
        engines = pd.list_engines()
    if ctx.format != "table":
        ctx.render(
            [{"engine_id": key, **value} for key, value in sorted(engines.items())],
            empty="no engines",
        )
        return
    ctx.render(
        [_engine_row(key, value) for key, value in sorted(engines.items())], empty="no engines"
    )


def _engine_row(engine_id: str, engine: Mapping[str, Any]) -> dict[str, Any]:
    """One table row: the engine's main settings, its need and what it counts."""
    status = engine.get("status") or {}
    why = status.get("why") or {}
    need = status.get("need")
    if need is not None and status.get("provisioned") is False:
        need = f"{need} (informational)"
    return {
        "engine_id": engine_id,
        "slots": engine.get("slots"),
        "replicas": engine.get("replicas"),
        "base_need": engine.get("base_need"),
        "maximum_vms": engine.get("maximum_vms"),
        "need": need,
        "queued": why.get("queued"),
        "running": why.get("running"),
        "held_back": why.get("held_back"),
        "nodes": len(status.get("nodes") or {}),
        "driver": status.get("driver"),
    }


@_calls(ListEnginesRequest, local=("engine_id",))
@engine.command("describe", help="Show one engine: settings, need and why, nodes.")
@click.argument("engine_id")
@pass_ctx
def engine_describe(ctx: Context, engine_id: str) -> None:
    with ctx.client() as pd:
        engines = pd.list_engines()
    if engine_id not in engines:
        raise click.ClickException(
            f"{_command_name()}: no engine {engine_id!r}; known engines: "
            + ", ".join(sorted(engines))
        )
    engine = dict(engines[engine_id])
    if ctx.format != "table":
        ctx.render({"engine_id": engine_id, **engine})
        return
    status = engine.pop("status", None) or {}
    click.echo(f"engine {engine_id}")
    click.echo("settings: " + ", ".join(f"{k}={v}" for k, v in sorted(engine.items())))
    if status:
        informational = "" if status.get("provisioned", True) else " (informational: static site)"
        click.echo(f"driver: {status.get('driver')}")
        click.echo(f"need: {status.get('need')} node(s){informational}")
        why = status.get("why") or {}
        click.echo("why: " + ", ".join(f"{k}={v}" for k, v in why.items()))
        by_state = status.get("nodes_by_state") or {}
        click.echo(
            "nodes: "
            + (
                "; ".join(f"{state}: {', '.join(ids)}" for state, ids in sorted(by_state.items()))
                or "none"
            )
        )
        click.echo("idle nodes: " + (", ".join(status.get("idle_nodes") or []) or "none"))
        click.echo("retire first: " + (", ".join(status.get("retire_first") or []) or "none"))


@_calls(
    AddEngineRequest,
    builds={
        name: "definition"
        for name in (
            "engine_id",
            "slots",
            "replicas",
            "base_need",
            "spare_slots",
            "maximum_vms",
            "heartbeat_period",
            "heartbeat_warning",
            "heartbeat_missing",
        )
    },
)
@engine.command("add", help="Add an engine (persisted by the dispatcher).")
@click.argument("engine_id")
@click.option("--slots", type=click.IntRange(min=1), required=True, help="Slots per agent.")
@click.option("--replicas", type=click.IntRange(min=1), help="Agents per node.")
@click.option("--base-need", type=click.IntRange(min=0), help="Nodes to keep at least.")
@click.option("--spare-slots", type=click.IntRange(min=0), help="Free slots to keep.")
@click.option("--maximum-vms", type=click.IntRange(min=0), help="Most nodes.")
@click.option(
    "--heartbeat-period",
    type=click.FloatRange(min=0, min_open=True),
    help="Heartbeat period seconds.",
)
@click.option(
    "--heartbeat-warning",
    type=click.FloatRange(min=0, min_open=True),
    help="Heartbeat warning seconds.",
)
@click.option(
    "--heartbeat-missing",
    type=click.FloatRange(min=0, min_open=True),
    help="Heartbeat missing seconds.",
)
@pass_ctx
def engine_add(ctx: Context, /, engine_id: str, **options: Any) -> None:
    definition = {"engine_id": engine_id, **{k: v for k, v in options.items() if v is not None}}
    with ctx.client() as pd:
        pd.add_engine(definition)
    # The definition the dispatcher accepted (keys left out take their defaults).
    ctx.render(definition)


# -- system ------------------------------------------------------------------------


@_calls(DumpRequest)
@main.command(help="Everything the dispatcher holds: agents, processes, nodes, VMs.")
@pass_ctx
def dump(ctx: Context) -> None:
    with ctx.client() as pd:
        result = dict(pd.dump())
    if ctx.format != "table":
        ctx.render(result)
        return
    _render_dump(result)


def _render_dump(result: dict[str, Any], console: Console | None = None) -> None:
    """Nodes as a tree (node → agents → processes), then a table of every process."""
    from rich.tree import Tree

    console = console or _console()
    resources, processes = result.get("resources", {}), result.get("processes", {})
    nodes = result.get("nodes", {})
    tree = Tree(f"nodes ({len(nodes)})")
    placed: set[str] = set()
    node_ids = sorted(set(nodes) | {r.get("node_id") for r in resources.values()} - {None})
    for node_id in node_ids:
        record = nodes.get(node_id, {})
        extra = ", ".join(record.get("node_exclusive") or [])
        branch = tree.add(
            f"{node_id}  domain={record.get('domain_id')}"
            + (f"  node_exclusive={extra}" if extra else "")
        )
        for resource_id, agent in sorted(resources.items()):
            if agent.get("node_id") != node_id:
                continue
            placed.add(resource_id)
            engine = (agent.get("properties") or {}).get("engine")
            leaf = branch.add(
                f"{resource_id}  engine={engine}  state={agent.get('state')}  "
                f"slots={len(agent.get('assigned') or [])}/{agent.get('slot_count')}  "
                f"last_heartbeat={agent.get('last_heartbeat')}"
            )
            for _owner, upid, round_ in agent.get("assigned") or []:
                state = processes.get(upid, {}).get("state", "?")
                leaf.add(f"{upid} round {round_}: {state}")
    console.print(tree)
    rows = sorted(_process_rows(result), key=lambda row: row["upid"])
    columns = ["upid", "name", "state", "round", "assigned"]
    _print_table(console, _table(columns, rows, title="processes"))
    vms = result.get("vms") or {}
    if vms:
        columns = ["node_id", "engine_id", "site", "state", "provider_id", "reason", "last_error"]
        vm_rows = [vm for _node_id, vm in sorted(vms.items())]
        _print_table(console, _table(columns, vm_rows, title="VMs (provisioner)"))


SYSTEM_BOOT_HELP = """Turn system-boot mode on or off, or show it.

`off` (or `end`) ends a system boot: the processes held back in
150-UNSCHEDULED_PENDING are scheduled and the dispatcher state becomes OK.
`on` (or `begin`) only sets the flag: it takes effect at the next boot
initialisation (a whole-system restart begins offline with `pd-dispatcher
system-boot begin`, docs/operations.md). `status` shows the dispatcher state,
the flag and how many processes are held back.
"""


@_calls(SetSystemBootRequest, builds={"mode": "system_boot"})
@main.command("system-boot", help=SYSTEM_BOOT_HELP)
@click.argument("mode", type=click.Choice(["on", "off", "begin", "end", "status"]))
@pass_ctx
def system_boot(ctx: Context, mode: str) -> None:
    with ctx.client() as pd:
        if mode == "status":
            system: dict[str, Any] = dict(pd.dump().get("system") or {})
        else:
            pd.set_system_boot(system_boot=mode in ("on", "begin"))
            return
    if ctx.format != "table":
        ctx.render(system)
        return
    click.echo(f"state: {system.get('state')}")
    click.echo(f"system boot: {'on' if system.get('system_boot') else 'off'}")
    click.echo(f"held back: {system.get('held_back')} process(es) in 150-UNSCHEDULED_PENDING")


_COMPLETION_SHELLS = ("bash", "zsh", "fish")


@_calls(None)
@main.command(
    help="Print the shell completion script. Add to your shell's start-up file, e.g. "
    'eval "$(pd-cli completion bash)" in ~/.bashrc.'
)
@click.argument("shell", type=click.Choice(_COMPLETION_SHELLS))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # every name in _COMPLETION_SHELLS is built in
    click.echo(completer(main, {}, "pd-cli", "_PD_CLI_COMPLETE").source())


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="pd-cli")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
