"""The "Whole-system restart" runbook of docs/operations.md, executed.

The runbook's blocks are marked ``<!-- test: runbook offline -->`` (run with no
dispatcher, through ``pd-dispatcher``) and ``<!-- test: runbook online -->`` (run
through ``pd-cli`` against the dispatcher started on the old database). Between them
this test does what the prose says: the site is lost (agents and dispatcher stop)
before the offline block, and a dispatcher starts after it.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from cli.pdcli import main as pd_cli
from dispatcher.service import DispatcherService
from tests.service.conftest import DEFINITION, HEARTBEATS, Harness, make_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def runbook_block(marker: str) -> list[str]:
    """The command lines of the fenced block after ``<!-- test: runbook MARKER -->``."""
    lines = OPERATIONS.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"<!-- test: {marker} -->")
    fence = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].strip().startswith("```"))
    return [line.strip() for line in lines[fence + 1 : end] if line.strip()]


def run(line: str, program: str, command: Any, prefix: list[str]) -> str:
    words = shlex.split(line)
    assert words[0] == program, line
    result = CliRunner().invoke(command, [*prefix, *words[1:]])
    assert result.exit_code == 0, f"{line}: exit {result.exit_code}: {result.output}"
    return result.output


def test_the_whole_system_restart_runbook_works(
    tmp_path: Path, amqp_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        tmp_path,
        amqp_uri,
        overrides={
            "processdispatcher.engines": {"default": {"slots": 4, **HEARTBEATS}},
            "processdispatcher.default_engine": "default",
            "processdispatcher.process_engines": {},
        },
    )
    monkeypatch.chdir(tmp_path)
    Path("dispatcher.yml").write_text(
        yaml.safe_dump({"processdispatcher": {"database_url": settings.database_url}})
    )
    cli_config = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.yml"
    cli_config.write_text(
        yaml.safe_dump(
            {"server": {"amqp": {"uri": amqp_uri}}, "dashi": {"sysname": settings.dashi.sysname}}
        )
    )
    # Given a site running two processes, then lost with its dispatcher
    before = Harness(settings, DispatcherService.build(settings))
    try:
        before.define()
        before.add_node("node1", "default")
        before.client.schedule_process("kept", DEFINITION, restart_mode="ABNORMAL")
        before.client.schedule_process("ended", DEFINITION, restart_mode="NEVER")
        before.wait_states(["kept", "ended"], "500-RUNNING")
    finally:
        before.close()
    # When the offline steps run
    outputs = [
        run(line, "pd-dispatcher", pd_dispatcher, []) for line in runbook_block("runbook offline")
    ]
    assert "state: OK" in outputs[0]
    assert "boot initialisation pending" in outputs[-1]
    # and the dispatchers start
    after = Harness(settings, DispatcherService.build(settings))
    try:
        after.wait_state("kept", "150-UNSCHEDULED_PENDING")
        after.wait_state("ended", "700-TERMINATED")
        # Then the online steps show the boot, and end it
        online = runbook_block("runbook online")
        assert online[-2:] == ["pd-cli system-boot end", "pd-cli system-boot status"]
        outputs = [run(line, "pd-cli", pd_cli, ["--config", str(cli_config)]) for line in online]
        assert "state: SYSTEM_BOOTING" in outputs[0] and "held back: 1" in outputs[0]
        assert "held_back" in outputs[1]
        assert "retire first" in outputs[2]
        assert "state: OK" in outputs[-1] and "held back: 0" in outputs[-1]
        released = after.describe("kept")  # queued again (no node yet: it waits)
        assert (released["state"], released["round"]) in {("200-REQUESTED", 1), ("300-WAITING", 1)}
    finally:
        after.close()
