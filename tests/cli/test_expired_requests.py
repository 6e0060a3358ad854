"""``pd-cli`` requests its caller gave up on are never applied by a later dispatcher.

A dispatcher runs once (its queue exists), is stopped, ``pd-cli --timeout 2``
asks it to schedule a process and exits 3; a dispatcher started afterwards on the
same state never creates that process. On the embedded default and on RabbitMQ.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.pdcli import main as pd_cli
from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from pdcommon.settings import Settings, load_settings


def _settings(tmp_path: Path, transport: str, request: pytest.FixtureRequest) -> Settings:
    overrides: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "processdispatcher.database_url": f"sqlite:///{tmp_path}/pd.db",
        "processdispatcher.engines": {"engine1": {"slots": 4}},
        "processdispatcher.default_engine": "engine1",
        "provisioner.driver": "static",
        # One RPC worker: the queue is handled in order, so the reply to a later
        # call means the earlier request was handled (applied or dropped).
        "processdispatcher.rpc_workers": 1,
    }
    if transport == "rabbitmq":
        overrides["server.amqp.uri"] = request.getfixturevalue("rabbitmq").uri
        overrides["dashi.sysname"] = f"ghost{uuid.uuid4().hex[:8]}"
    return load_settings(overrides=overrides)


@pytest.mark.parametrize(
    "transport", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
def test_a_schedule_given_up_while_the_dispatcher_is_stopped_is_never_applied(
    tmp_path: Path, transport: str, request: pytest.FixtureRequest
) -> None:
    # Given a dispatcher that ran once, knows a definition, and is stopped now
    settings = _settings(tmp_path, transport, request)
    dispatcher = DispatcherService.build(settings)
    dispatcher.start()
    with ProcessDispatcherClient.from_settings(settings, timeout=20) as client:
        client.create_definition("def1", "supd", {"exec": "/bin/true"})
    dispatcher.stop()
    env = {"PD_STATE_DIR": str(settings.state_dir), "PD_AMQP_URI": settings.amqp_uri}
    options = ["--timeout", "2"]
    if settings.dashi.sysname:
        options += ["--sysname", settings.dashi.sysname]
    # When pd-cli schedules a process and gives up after 2 s
    result = CliRunner().invoke(
        pd_cli, [*options, "process", "schedule", "ghost-1", "--definition", "def1"], env=env
    )
    assert result.exit_code == 3, result.output
    assert "no reply within 2s: the request was delivered" in result.output
    # And the dispatcher starts again
    dispatcher = DispatcherService.build(settings)
    dispatcher.start()
    try:
        with ProcessDispatcherClient.from_settings(settings, timeout=20) as client:
            # Then ghost-1 does not exist
            assert client.describe_process("ghost-1") is None
            assert client.describe_processes() == []
    finally:
        dispatcher.stop()
