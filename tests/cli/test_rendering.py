"""How pd-cli prints tables: ids whole on any terminal, nothing cut in a pipe,
a line for an empty list."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rich.console import Console

from cli.pdcli import Context, _event_line, _local_times, _render_dump, _render_table, _spinner

ENGINE_ID = "default-engine-with-a-rather-long-name"
UPID = "process-with-a-very-long-identifier-0123456789"
AGENT = "agent-0123456789-abcdefabcdef"

ENGINE_ROWS = [
    {
        "engine_id": ENGINE_ID,
        "slots": 64,
        "replicas": 1,
        "base_need": 0,
        "spare_slots": 0,
        "maximum_vms": None,
        "heartbeat_period": 30,
        "heartbeat_warning": 45,
        "heartbeat_missing": 60,
    }
]


def terminal(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=True, color_system=None), out


@pytest.mark.parametrize("width", [20, 40, 80, 120])
def test_id_columns_are_never_cut_on_a_narrow_terminal(width: int) -> None:
    console, out = terminal(width)
    _render_table(ENGINE_ROWS, console)
    assert ENGINE_ID in out.getvalue()
    assert "…" not in out.getvalue()


@pytest.mark.parametrize("width", [20, 60])
def test_a_record_shows_its_ids_whole(width: int) -> None:
    console, out = terminal(width)
    record = {"upid": UPID, "state": "500-RUNNING", "assigned": AGENT, "configuration": "x " * 60}
    _render_table(record, console)
    assert UPID in out.getvalue() and AGENT in out.getvalue()


def test_piped_output_is_not_cut_at_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    description = " ".join(f"word{n}" for n in range(40))  # ~280 characters
    _render_table([{"engine_id": ENGINE_ID, "description": description}])
    lines = capsys.readouterr().out.splitlines()
    assert any(ENGINE_ID in line and description in line for line in lines)


def test_dump_tables_are_not_cut_when_piped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    dump = {
        "nodes": {},
        "resources": {},
        "processes": {
            UPID: {"name": "n" * 100, "state": "500-RUNNING", "round": 0, "assigned": AGENT}
        },
    }
    _render_dump(dump)
    lines = capsys.readouterr().out.splitlines()
    assert any(UPID in line and "n" * 100 in line and AGENT in line for line in lines)


@pytest.mark.parametrize("fmt", ["table", "json", "yaml"])
def test_an_empty_list_says_so_in_a_table_and_stays_empty_otherwise(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Context((), None, 1.0, fmt).render([], empty="no nodes")
    out = capsys.readouterr().out
    assert out == {"table": "no nodes\n", "json": "[]\n", "yaml": "[]\n"}[fmt]


# --------------------------------------------------------------------------- the spinner


@contextmanager
def terminal_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Console, io.StringIO]]:
    """An interactive terminal on stderr, with a log handler writing to it.

    (Entered in the test itself: pytest's own capture of stderr is put back
    between a fixture's set-up and the test.)
    """
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    console = Console(
        file=out, width=80, force_terminal=True, force_interactive=True, color_system=None
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield console, out
    finally:
        root.removeHandler(handler)


def _lines(output: str) -> list[str]:
    """The lines of terminal output, without control sequences."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    return [line for line in re.split(r"[\r\n]", text) if line]


def test_log_lines_print_above_the_spinner_never_on_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        terminal_stderr(monkeypatch) as (console, out),
        _spinner(console, "waiting for p1") as status,
    ):
        status.update("p1: 300-WAITING, waiting for 500-RUNNING")
        logging.getLogger("dispatcher.test").warning("a log line of this process")
    lines = _lines(out.getvalue())
    logged = [line for line in lines if "a log line of this process" in line]
    assert logged == ["WARNING dispatcher.test: a log line of this process"]
    assert any("waiting for" in line for line in lines)  # (the spinner did show)


@pytest.mark.parametrize("where", ["not a terminal", "--no-spinner"])
def test_no_spinner_off_an_interactive_terminal_or_when_disabled(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with terminal_stderr(monkeypatch) as (console, out):
        if where == "not a terminal":
            console = Console(file=out, width=80)
        with _spinner(console, "waiting for p1", enabled=where != "--no-spinner") as status:
            status.update("p1: 300-WAITING")
            logging.getLogger("dispatcher.test").warning("logged")
    assert out.getvalue() == "WARNING dispatcher.test: logged\n"


@pytest.mark.parametrize(
    ("event", "shown", "not_shown"),
    [
        # the agent's reason names the signal: it is not said twice
        (
            {"signal": 9, "reason": "killed by signal SIGKILL (9)"},
            "850-FAILED  killed by signal SIGKILL (9)",
            "signal SIGKILL (9)  killed",
        ),
        # a reason that does not name it: the signal is added by name
        (
            {"signal": 11, "reason": "restart limit reached: 4 failures in 60 s"},
            "850-FAILED  signal SIGSEGV (11)  restart limit reached",
            None,
        ),
        ({"signal": None, "exit_code": 3, "reason": "exited with code 3"}, "exit code 3", "signal"),
    ],
)
def test_an_event_line_names_the_signal_once(
    event: dict[str, object], shown: str, not_shown: str | None
) -> None:
    line = _event_line({"time": 1_700_000_000.0, "round": 2, "state": "850-FAILED", **event})
    assert shown in line
    if not_shown is not None:
        assert not_shown not in line


def test_a_described_record_shows_its_signal_by_name() -> None:
    shown = _local_times({"upid": UPID, "signal": 9, "exit_code": None, "ended_at": 1.0})
    assert shown["signal"] == "SIGKILL (9)"
    assert _local_times({"upid": UPID, "signal": None})["signal"] is None
