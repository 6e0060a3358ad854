"""Configuration errors at start-up: one clear line naming the key, no traceback.

Engines are checked twice: when the settings are loaded (the typed settings'
validator) and when the daemon builds its engine registry
(:func:`dispatcher.service.engine_registry`, for settings made any other way).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from dispatcher.service import DispatcherService, engine_registry
from pdcommon.errors import ConfigError
from pdcommon.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
TWO_ENGINES = {"engine1": {"slots": 4}, "engine2": {"slots": 2}}


def valid(tmp_path: Path) -> Settings:
    return load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "processdispatcher.engines": TWO_ENGINES,
            "processdispatcher.default_engine": "engine1",
        }
    )


def altered(settings: Settings, **changes: object) -> Settings:
    """``settings`` with processdispatcher keys changed, bypassing validation."""
    pd = settings.processdispatcher.model_copy(update=changes)
    return settings.model_copy(update={"processdispatcher": pd})


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("engines", "default", "expected"),
    [
        (TWO_ENGINES, "nosuchengine", "default_engine 'nosuchengine' is not among the engines"),
        (TWO_ENGINES, None, "default_engine is required when more than one engine"),
    ],
)
def test_loading_settings_rejects_bad_engine_defaults(
    tmp_path: Path, engines: dict[str, object], default: str | None, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            overrides={
                "state_dir": str(tmp_path),
                "processdispatcher.engines": engines,
                "processdispatcher.default_engine": default,
            }
        )
    text = one_line(info.value)
    assert text.startswith("configuration key processdispatcher")
    assert expected in text


def test_engine_registry_rejects_a_default_engine_that_does_not_exist(tmp_path: Path) -> None:
    settings = altered(valid(tmp_path), default_engine="nosuchengine")
    with pytest.raises(ConfigError) as info:
        engine_registry(settings)
    text = one_line(info.value)
    assert "default_engine" in text
    assert "nosuchengine" in text


def test_engine_registry_rejects_several_engines_without_a_default(tmp_path: Path) -> None:
    settings = altered(valid(tmp_path), default_engine=None)
    with pytest.raises(ConfigError) as info:
        engine_registry(settings)
    assert one_line(info.value) == (
        "processdispatcher.default_engine: required when several engines are configured "
        "(engine1, engine2)"
    )


def test_building_the_service_fails_before_touching_anything(tmp_path: Path) -> None:
    # The broker is unreachable and the database not yet created: the engine
    # check must come first.
    settings = altered(valid(tmp_path), default_engine=None)
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    assert database.parent == tmp_path / "state"
    with pytest.raises(ConfigError, match=r"^processdispatcher\.default_engine: "):
        DispatcherService.build(settings)
    assert not database.exists()


def write_config(tmp_path: Path, processdispatcher: dict[str, object]) -> Path:
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "provisioner": {"driver": "static"},
                "processdispatcher": processdispatcher,
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("processdispatcher", "expected"),
    [
        ({"engines": TWO_ENGINES, "default_engine": "nosuchengine"}, "nosuchengine"),
        ({"engines": TWO_ENGINES}, "default_engine is required"),
        ({"engines": {}}, "processdispatcher.engines: at least one engine"),
    ],
)
def test_pd_dispatcher_reports_a_bad_config_in_one_line(
    tmp_path: Path, processdispatcher: dict[str, object], expected: str
) -> None:
    config = write_config(tmp_path, processdispatcher)
    result = CliRunner().invoke(
        pd_dispatcher, ["--config", str(config)], env={"PD_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code in (1, 2), result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]
    assert "processdispatcher" in lines[0]


def test_pd_dispatcher_process_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"engines": TWO_ENGINES, "default_engine": "nosuchengine"})
    script = Path(sys.executable).with_name("pd-dispatcher")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.dispatcher"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    done = subprocess.run(
        [*command, "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "Error: configuration key processdispatcher: Value error, default_engine "
        "'nosuchengine' is not among the engines"
    ]
    assert done.stdout == ""


def test_the_daemon_builds_one_state_machine_and_gives_it_to_every_component(
    tmp_path: Path,
) -> None:
    # Given/When the daemon's object graph is built (no broker is contacted)
    service = DispatcherService.build(valid(tmp_path))
    try:
        # Then one state machine writes every process state, and the heartbeat
        # handler, the doctor and the provisioner share one registration/evacuation
        machine = service.core.transitions
        assert service.heartbeats is not None
        assert service.matchmaker is not None
        assert service.doctor is not None
        assert service.provisioner is not None
        evacuation = service.doctor.evacuation
        assert service.heartbeats.transitions is machine
        assert service.matchmaker.transitions is machine
        assert service.matchmaker.set_aside.transitions is machine
        assert service.doctor.transitions is machine
        assert evacuation.transitions is machine
        assert service.heartbeats.registration.evacuation is evacuation
        assert service.doctor.resource_monitor.evacuation is evacuation
        assert service.provisioner.node_events is service.heartbeats.registration
        assert machine.store is service.store
    finally:
        service.stop()
