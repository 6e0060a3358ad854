"""Configuration: YAML files, environment variables, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashi.broker import mask_uri
from pdcommon.errors import ConfigError
from pdcommon.settings import (
    AGENT_SECTIONS,
    DISPATCHER_SECTIONS,
    LEGACY_IGNORED_KEYS,
    check_unknown_keys,
    load_settings,
    unknown_keys,
)
from pdcommon.wire import broker_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_configuration_gives_the_embedded_defaults(tmp_path):
    settings = load_settings(environ={"PD_STATE_DIR": str(tmp_path)})
    assert settings.amqp_uri == "embedded://"
    assert settings.database_url == f"sqlite:///{tmp_path / 'dispatcher.db'}"
    assert settings.processdispatcher.service_name == "process_dispatcher"
    assert settings.processdispatcher.effective_default_engine == "default"
    assert settings.server.amqp.exchange == "default_dashi_exchange"
    assert settings.dashi.sysname is None


def test_the_default_engine_of_a_local_site_has_wide_agents(tmp_path):
    # Given no engines configured: on the local driver (the embedded default) a
    # few agents of 64 slots serve hundreds of processes (each agent and its
    # supervisord cost ~65 MB); other drivers keep the legacy 4 slots
    embedded = load_settings(environ={"PD_STATE_DIR": str(tmp_path)})
    assert embedded.processdispatcher.engines["default"].slots == 64
    static = load_settings(
        environ={"PD_STATE_DIR": str(tmp_path)}, overrides={"provisioner.driver": "static"}
    )
    assert static.processdispatcher.engines["default"].slots == 4
    # and configured engines are kept as they are
    mine = load_settings(
        environ={"PD_STATE_DIR": str(tmp_path)},
        overrides={"processdispatcher.engines": {"default": {"slots": 2}}},
    )
    assert mine.processdispatcher.engines["default"].slots == 2


def test_an_agent_keeps_its_ended_rounds_logs_within_256_mib_and_a_day_unless_told(tmp_path):
    default = load_settings(environ={"PD_STATE_DIR": str(tmp_path)}).eeagent
    assert (default.ended_logs_max_bytes, default.ended_logs_max_age) == (256 * 2**20, 86400.0)
    path = write(tmp_path, "a.yml", "eeagent: {ended_logs_max_bytes: 1000, ended_logs_max_age: 60}")
    mine = load_settings([path], environ={}).eeagent
    assert (mine.ended_logs_max_bytes, mine.ended_logs_max_age) == (1000, 60.0)


def test_later_files_deep_merge_over_earlier_ones(tmp_path):
    first = write(tmp_path, "a.yml", "server:\n  amqp:\n    uri: amqp://a//\n    exchange: ex1\n")
    second = write(tmp_path, "b.yml", "server:\n  amqp:\n    exchange: ex2\ndashi:\n  sysname: s\n")
    settings = load_settings([first, second], environ={})
    assert settings.amqp_uri == "amqp://a//"
    assert settings.server.amqp.exchange == "ex2"
    assert broker_config(settings).exchange_name == "s.ex2"


def test_the_message_size_limit_defaults_to_rabbitmqs_and_is_configurable(tmp_path):
    default = load_settings(
        [write(tmp_path, "a.yml", "server: {amqp: {uri: amqp://a//}}\n")], environ={}
    )
    assert broker_config(default).max_message_size == 128 * 1024 * 1024
    path = write(tmp_path, "b.yml", "server: {amqp: {max_message_size: 1000000}}\n")
    assert broker_config(load_settings([path], environ={})).max_message_size == (1_000_000)
    with pytest.raises(ConfigError) as info:
        load_settings(
            [write(tmp_path, "c.yml", "server: {amqp: {max_message_size: 0}}\n")], environ={}
        )
    assert "max_message_size" in str(info.value)


def test_environment_variables_override_the_files(tmp_path):
    path = write(
        tmp_path,
        "c.yml",
        "server: {amqp: {uri: 'amqp://file//'}}\nprocessdispatcher: {database_url: 'sqlite://'}\n",
    )
    settings = load_settings(
        [path], environ={"PD_AMQP_URI": "amqp://env//", "PD_DATABASE_URL": "postgresql://x/y"}
    )
    assert settings.amqp_uri == "amqp://env//"
    assert settings.database_url == "postgresql://x/y"


def test_the_legacy_amqp_keys_build_an_escaped_uri(tmp_path):
    path = write(
        tmp_path,
        "legacy.yml",
        "server:\n  amqp:\n    host: rabbit\n    port: 5673\n    username: u@x\n"
        "    password: p/ss:w\n    vhost: /\n",
    )
    assert load_settings([path], environ={}).amqp_uri == "amqp://u%40x:p%2Fss%3Aw@rabbit:5673/%2F"


def test_legacy_engine_configuration_is_accepted_verbatim(tmp_path):
    path = write(
        tmp_path,
        "pd.yml",
        """
processdispatcher:
  engines:
    engine1: {slots: 4, base_need: 1}
    engine4: {slots: 4, heartbeat_period: 1, heartbeat_warning: 10, heartbeat_missing: 20}
  default_engine: engine1
  process_engines: {a.b.C: engine4}
  restart_throttling_config: {minimum_time_between_starts: 2}
  dispatch_retry_seconds: 30
  launch_type: supd
  static_resources: true
""",
    )
    pd = load_settings([path], environ={}).processdispatcher
    assert pd.engines["engine1"].base_need == 1
    assert pd.engines["engine4"].heartbeat_missing == 20
    assert pd.process_engines == {"a.b.C": "engine4"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("processdispatcher: {engines: {e: {slots: 0}}}", "processdispatcher.engines.e.slots"),
        ("processdispatcher: {engines: {e: {slots: many}}}", "processdispatcher.engines.e.slots"),
        ("processdispatcher: {default_engine: nope}", "default_engine 'nope'"),
        (
            "processdispatcher: {engines: {a: {slots: 1}, b: {slots: 1}}}",
            "default_engine is required",
        ),
        ("processdispatcher: {process_engines: {a.b: ghost}}", "unknown engine 'ghost'"),
        ("eeagent: {name: 'has.dot'}", "eeagent.name"),
        ("eeagent: {ended_logs_max_bytes: 0}", "eeagent.ended_logs_max_bytes: Input should be"),
        ("eeagent: {ended_logs_max_bytes: 10MB}", "eeagent.ended_logs_max_bytes: Input should"),
        ("eeagent: {ended_logs_max_bytes: true}", "eeagent.ended_logs_max_bytes: Value error"),
        ("eeagent: {ended_logs_max_age: -1}", "eeagent.ended_logs_max_age: Input should be"),
        ("eeagent: {ended_logs_max_age: .inf}", "eeagent.ended_logs_max_age: Input should be"),
        ("provisioner: {driver: cloudy}", "provisioner.driver"),
        (
            "processdispatcher: {engines: {e: {slots: 1, heartbeat_warning: null}}}",
            "given together",
        ),
        (
            "processdispatcher: {engines: {e: {slots: 1, heartbeat_warning: 50, "
            "heartbeat_missing: 40}}}",
            "greater than heartbeat_warning",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("key: [unclosed\n", "invalid YAML (line"),
    ],
)
def test_a_bad_file_or_value_is_a_one_line_error_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, "bad.yml", text)
    with pytest.raises(ConfigError) as info:
        load_settings([path], environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings([tmp_path / "absent.yml"], environ={})


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("amqp://guest:secret@host:5672//", "amqp://guest:***@host:5672//"),
        ("amqp://host//", "amqp://host//"),
        ("postgresql+psycopg://pd:pw@db/pd", "postgresql+psycopg://pd:***@db/pd"),
        ("embedded://", "embedded://"),
    ],
)
def test_credentials_are_masked(uri, masked):
    assert mask_uri(uri) == masked


def test_keys_nothing_reads_are_listed_legacy_ones_included(tmp_path):
    # Given a file with misspelt keys, a legacy EPUM key and agent keys
    path = write(
        tmp_path,
        "pd.yml",
        """
procesdispatcher: {engines: {}}
server: {amqp: {uri: "embedded://", hearbeat: 5}}
processdispatcher: {databse_url: "sqlite://", static_resources: true, rpc_workers: 2}
eeagent: {name: a1, poll_interval: 1}
""",
    )
    # Then the unknown keys of the dispatcher's sections are listed, dotted, sorted
    keys = unknown_keys(load_settings([path], environ={}))
    assert keys == [
        "procesdispatcher",
        "processdispatcher.databse_url",
        "processdispatcher.static_resources",
        "server.amqp.hearbeat",
    ]
    assert [key for key in keys if key in LEGACY_IGNORED_KEYS] == [
        "processdispatcher.static_resources"
    ]


ETC = Path(__file__).resolve().parent.parent / "etc"


@pytest.mark.parametrize("path", sorted(ETC.glob("*.yml")), ids=lambda path: path.name)
def test_every_shipped_configuration_file_loads_and_has_no_unknown_key(path):
    # Given a configuration file of etc/ / When it is loaded and checked as each
    # daemon checks it / Then nothing is refused
    settings = load_settings([path], environ={})
    check_unknown_keys(settings, DISPATCHER_SECTIONS)
    check_unknown_keys(settings, AGENT_SECTIONS)


def test_an_unknown_key_with_no_near_valid_key_lists_the_valid_keys_of_its_section(tmp_path):
    # Given two unknown keys, one far from any valid key
    path = write(tmp_path, "pd.yml", "pd: {zzz: 1}\nprocessdispatcher: {zzz: 2}\n")
    settings = load_settings([path], environ={})
    # When the dispatcher's sections are checked / Then the first is named, with its
    # section's valid keys, and the other is counted
    with pytest.raises(ConfigError) as caught:
        check_unknown_keys(settings, DISPATCHER_SECTIONS)
    assert str(caught.value) == (
        "configuration key pd.zzz: unknown key; valid keys under pd: name (and 1 more unknown key)"
    )
