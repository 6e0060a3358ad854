"""The configuration a provisioned node's agents get from the dispatcher's settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from dispatcher.provisioner.agents import AgentTemplate
from pdcommon.settings import load_settings


def agent_config(template: AgentTemplate) -> dict:
    return template.config(
        agent_name="agent1",
        state_dir="/srv/pd",
        supd_directory="/srv/pd/nodes/n1",
        node_id="n1",
        slots=4,
        heartbeat=5.0,
    )


def test_the_agents_get_the_dispatchers_ended_logs_budget_when_it_is_configured(
    tmp_path: Path,
) -> None:
    # Given a dispatcher configured with its own budget for its agents' ended logs
    path = tmp_path / "pd.yml"
    path.write_text("eeagent: {ended_logs_max_bytes: 1000000, ended_logs_max_age: 600}")
    settings = load_settings([path], environ={"PD_STATE_DIR": str(tmp_path)})
    # When an agent's configuration is written
    config = agent_config(AgentTemplate.from_settings(settings))
    # Then it carries the budget, and the agent loads it
    assert config["eeagent"]["ended_logs_max_bytes"] == 1_000_000
    assert config["eeagent"]["ended_logs_max_age"] == 600.0
    agent_file = tmp_path / "agent.yml"
    agent_file.write_text(yaml.safe_dump(config))
    loaded = load_settings([agent_file], environ={}).eeagent
    assert (loaded.ended_logs_max_bytes, loaded.ended_logs_max_age) == (1_000_000, 600.0)


def test_with_the_default_budget_the_agents_configuration_does_not_name_it(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={"PD_STATE_DIR": str(tmp_path)})
    config = agent_config(AgentTemplate.from_settings(settings))
    assert "ended_logs_max_bytes" not in config["eeagent"]
    assert "ended_logs_max_age" not in config["eeagent"]
