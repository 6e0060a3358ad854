"""``pd-eeagent``: help, configuration errors, and the curated public surface."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import eeagent
from cli.eeagent import main
from eeagent.service import ignored_keys
from pdcommon.settings import load_settings


def test_help_describes_the_agent_and_its_options() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for text in (
        "--config FILE",
        "--name NAME",
        "--node-id ID",
        "--slots N",
        "--log-level",
        "supd_directory",
        "leave_running_on_shutdown",
        "SIGTERM",
    ):
        assert text in result.output


def test_a_missing_config_file_is_a_one_line_error_with_status_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "nope.yml: cannot read configuration file" in result.output


def test_an_invalid_key_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("eeagent:\n  slots: 0\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2
    assert "configuration key eeagent.slots" in result.output


def test_a_name_with_a_dot_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--name", "a.b"])
    assert result.exit_code == 2
    assert "eeagent.name" in result.output


def test_slots_must_be_positive() -> None:
    result = CliRunner().invoke(main, ["--slots", "0"])
    assert result.exit_code == 2
    assert "--slots" in result.output


def test_an_unknown_log_level_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--log-level", "loud"])
    assert result.exit_code == 2
    assert "Invalid value for '--log-level': 'loud' is not one of debug, info" in result.output


def test_an_agent_that_cannot_start_exits_1_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "agent.yml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "server: {amqp: {uri: 'embedded://'}}\n"
        "eeagent:\n"
        f"  launch_type: {{supdexe: {tmp_path / 'no-supervisord'}}}\n"
    )
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 1
    assert "cannot run" in result.output and "no-supervisord" in result.output


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("eeagent: [1, 2\n", "invalid YAML"),
        ("- a\n- b\n", "invalid YAML"),
        ("eeagent:\n  slots: many\n", "configuration key eeagent.slots"),
        ("eeagent:\n  heartbeat: 0\n", "configuration key eeagent.heartbeat"),
        ("eeagent:\n  launch_type: {name: pyon}\n", "configuration key eeagent.launch_type.name"),
        ("eeagent:\n  name: ''\n", "configuration key eeagent.name"),
    ],
)
def test_a_bad_configuration_file_is_a_clear_error_and_creates_nothing(
    tmp_path: Path, text: str, error: str
) -> None:
    # Given a configuration file with one mistake, and a state directory not yet there
    config = tmp_path / "agent.yml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "server: {amqp: {uri: 'embedded://'}}\n"
        f"pd: {{name: process_dispatcher}}\n"
        f"{text}"
    )
    # When the agent is started with it
    result = CliRunner().invoke(main, ["--config", str(config)])
    # Then it exits 2 with a one-line message, and nothing was created
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0
    assert error in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.yml"]


def test_unknown_eeagent_keys_are_listed_and_legacy_ones_recognised(tmp_path: Path) -> None:
    config = tmp_path / "agent.yml"
    config.write_text(
        "eeagent:\n"
        "  slotz: 3\n"
        "  poll_interval: 2\n"
        "  launch_type: {name: supd, pyon_directory: /opt/pyon, dirr: /x}\n"
    )
    settings = load_settings([config], {"PD_STATE_DIR": str(tmp_path)})
    assert ignored_keys(settings) == [
        "eeagent.launch_type.dirr",
        "eeagent.launch_type.pyon_directory",
        "eeagent.poll_interval",
        "eeagent.slotz",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "eeagent: {slotz: 3, poll_interval: 2}\n",
            "Error: configuration key eeagent.slotz: unknown key; did you mean eeagent.slots?",
        ),
        (
            "eeagent: {launch_type: {supd_dir: /x}}\n",
            "Error: configuration key eeagent.launch_type.supd_dir: unknown key; "
            "did you mean eeagent.launch_type.supd_directory?",
        ),
        (
            "pd: {nmae: process_dispatcher}\n",
            "Error: configuration key pd.nmae: unknown key; did you mean pd.name?",
        ),
    ],
)
def test_the_agent_refuses_a_misspelt_key_naming_the_nearest_valid_one(
    tmp_path: Path, text: str, error: str
) -> None:
    # Given a misspelt key (beside a legacy one), and a state directory not yet there
    config = tmp_path / "agent.yml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nserver: {{amqp: {{uri: 'embedded://'}}}}\n{text}"
    )
    # When the agent is started with it
    result = CliRunner().invoke(main, ["--config", str(config)])
    # Then it exits 2 with one line naming the key and the nearest valid one, creating nothing
    assert result.exit_code == 2, result.output
    assert result.output.strip() == error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.yml"]


def test_the_agent_accepts_legacy_keys_and_logs_them_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given legacy keys only, and a supervisord that cannot start (so the agent stops)
    config = tmp_path / "agent.yml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "server: {amqp: {uri: 'embedded://'}}\n"
        "loggers: {eeagent: {handlers: [console], level: INFO}}\n"
        "eeagent:\n"
        "  poll_interval: 2\n"
        "  code_download: {enabled: false}\n"
        f"  launch_type: {{supdexe: {tmp_path / 'no-supervisord'}, container_args: x}}\n"
    )
    with caplog.at_level(logging.INFO, logger="eeagent.service"):
        result = CliRunner().invoke(main, ["--config", str(config)])
    # Then the keys pass the check (the agent gets as far as starting supervisord)
    assert result.exit_code == 1
    levels = {
        r.getMessage(): r.levelno for r in caplog.records if "configuration key" in r.getMessage()
    }
    assert levels == {
        f"ignoring legacy configuration key eeagent.{key} (not used by this agent)": logging.INFO
        for key in ("code_download", "launch_type.container_args", "poll_interval")
    }


#: Every module of the package, with the names its ``__all__`` exports.
PUBLIC = [
    (module.name, name)
    for module in pkgutil.iter_modules(eeagent.__path__)
    for name in getattr(importlib.import_module(f"eeagent.{module.name}"), "__all__", [])
]


def test_the_package_itself_exports_nothing() -> None:
    # Importing a record or state module must not load the agent service: the
    # package re-exports nothing, each name is imported from its module.
    assert not hasattr(eeagent, "__all__")
    assert {name for name in dir(eeagent) if not name.startswith("_")} <= {
        module.name for module in pkgutil.iter_modules(eeagent.__path__)
    }


@pytest.mark.parametrize(("module", "name"), PUBLIC)
def test_every_exported_name_is_documented(module: str, name: str) -> None:
    value = getattr(importlib.import_module(f"eeagent.{module}"), name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__doc__
