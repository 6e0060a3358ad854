"""How pd-cli prints tables: ids whole on any terminal, nothing cut in a pipe,
a line for an empty list."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.pdcli import Context, _render_dump, _render_table

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
