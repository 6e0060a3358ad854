"""supervisord configuration: whatever the agent writes, supervisord reads back exactly.

These tests parse the generated file with supervisord's own configuration code
(what ``reloadConfig`` runs), without starting a supervisord.
"""

from __future__ import annotations

import shlex
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from supervisor.options import ServerOptions

from eeagent.control import ProgramSpec
from eeagent.parameters import program_name
from eeagent.supdconf import (
    ENV_SHIM,
    PROGRAM_DEFAULTS,
    SupervisordFiles,
    command_line,
    config_value,
    environment_value,
    program_options,
    render_config,
)
from tests.support.hypothesis_profiles import examples

# Any text an argument, value or path may hold: everything but NUL and CR.
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=30
)
AWKWARD = st.sampled_from(
    [
        "",
        " ",
        "a b",
        "%",
        "%%",
        "%(here)s",
        "%(ENV_HOME)s",
        " ;x",
        "\t#x",
        ";",
        "#",
        "'",
        '"',
        "'\"",
        "\n",
        " \n ",
        "\\",
        "$(id)",
        "ü",
        "\u2003;",
        "a=b",
        "=",
        "-C",
        "--",
    ]
)
WORD = st.one_of(TEXT, AWKWARD, st.lists(st.one_of(TEXT, AWKWARD), max_size=4).map("".join))
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


def files_in(directory: Path) -> SupervisordFiles:
    return SupervisordFiles(
        config=str(directory / "supervisord.conf"),
        socket=str(directory / "supd.sock"),
        pidfile=str(directory / "supd.pid"),
        logfile=str(directory / "supd.log"),
        childlogdir=str(directory / "logs"),
        identifier="pd-eeagent-test",
    )


def parsed_back(directory: Path, spec: ProgramSpec) -> tuple[list[str], dict[str, str], str | None]:
    """What supervisord would exec for ``spec``: (argv, added environment, directory)."""
    files = files_in(directory)
    Path(files.childlogdir).mkdir(exist_ok=True)
    options = program_options(spec, str(directory / "out"), str(directory / "err"))
    Path(files.config).write_text(render_config(files, {spec.name: options}), encoding="utf-8")
    server = ServerOptions()
    server.configfile = files.config
    server.process_config(do_usage=False)
    (group,) = server.process_group_configs
    (process,) = group.process_configs
    argv = shlex.split(process.command)  # what supervisord's get_execv_args does
    env = dict(process.environment or {})
    workdir = process.directory
    if argv[0] == ENV_SHIM:  # what env(1) does with its arguments
        argv = argv[1:]
        if argv[0] == "-C":
            workdir, argv = argv[1], argv[2:]
        assert argv[0] == "--"
        argv = argv[1:]
        while argv and "=" in argv[0]:
            name, value = argv[0].split("=", 1)
            env[name] = value
            argv = argv[1:]
    return argv, env, workdir


@settings(max_examples=examples(150), deadline=None)
@given(
    exec_=WORD.filter(lambda word: word != "" and "=" not in word),
    args=st.lists(WORD, max_size=5),
    env=st.dictionaries(ENV_NAME, WORD, max_size=4),
    workdir=st.none() | WORD.map(lambda word: "/" + word),
)
def test_any_argv_env_and_directory_survive_supervisords_parser(
    tmp_path_factory: pytest.TempPathFactory,
    exec_: str,
    args: list[str],
    env: dict[str, str],
    workdir: str | None,
) -> None:
    directory = tmp_path_factory.mktemp("conf")
    spec = ProgramSpec(name="p-1", argv=(exec_, *args), env=env, working_directory=workdir)
    assert parsed_back(directory, spec) == ([exec_, *args], env, workdir)


def test_plain_values_are_written_without_the_env_shim() -> None:
    spec = ProgramSpec(
        name="p-1",
        argv=("sleep", "600"),
        env={"A": "one two", "B": "50%", "C": 'say "hi" now'},
        working_directory="/srv/my app",
    )
    options = program_options(spec, "/l/out", "/l/err")
    assert options["command"] == "sleep 600"
    assert options["environment"] == 'A="one two",B="50%%",C=\'say "hi" now\''
    assert options["directory"] == "/srv/my app"


def test_values_supervisord_cannot_hold_go_through_the_env_shim() -> None:
    spec = ProgramSpec(
        name="p-1",
        argv=("prog",),
        env={"EDGE": "'quoted'"},
        working_directory="/srv/a ;b",
    )
    options = program_options(spec, "/l/out", "/l/err")
    assert options["command"].startswith(f"{ENV_SHIM} -C ")
    assert "environment" not in options and "directory" not in options


def test_an_exec_containing_equals_cannot_use_the_env_shim() -> None:
    spec = ProgramSpec(name="p-1", argv=("a=b",), env={"EDGE": "'q'"})
    with pytest.raises(ValueError, match="exec contains '='"):
        program_options(spec, "/l/out", "/l/err")


def test_every_program_gets_the_safe_defaults() -> None:
    options = program_options(ProgramSpec(name="p-1", argv=("true",)), "/l/out", "/l/err")
    assert options["autostart"] == "false"
    assert options["startsecs"] == "0"
    assert options["startretries"] == "0"
    assert options["autorestart"] == "false"
    assert options["stopasgroup"] == options["killasgroup"] == "true"
    assert options["stdout_logfile"] == "/l/out" and options["stderr_logfile"] == "/l/err"
    assert set(PROGRAM_DEFAULTS) <= set(options)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [("/plain", "/plain"), ("/100%", "/100%%"), ("/a b", "/a b"), ("/a;b", "/a;b")],
)
def test_config_value_escapes_percent(text: str, escaped: str) -> None:
    assert config_value(text) == escaped


@pytest.mark.parametrize("text", [" lead", "trail ", "a ;b", "a #b", "x\ny", "%(here)s"])
def test_config_value_refuses_what_the_parser_would_change(text: str) -> None:
    assert config_value(text) is None


@pytest.mark.parametrize("value", ["'lead", 'trail"', "both ' and \"", "a ;b", "a\nb", "%(here)s"])
def test_environment_value_refuses_what_supervisord_would_change(value: str) -> None:
    assert environment_value({"A": value}) is None


def test_command_line_refuses_nul_and_carriage_return() -> None:
    with pytest.raises(ValueError, match="NUL or carriage return"):
        command_line(["a\rb"])


def test_the_daemon_sections_point_at_the_agents_files(tmp_path: Path) -> None:
    text = render_config(files_in(tmp_path), {})
    assert f"file = {tmp_path}/supd.sock" in text
    assert "chmod = 0700" in text
    assert "nodaemon = true" in text
    assert "[program:" not in text


def test_a_path_supervisord_cannot_hold_is_refused(tmp_path: Path) -> None:
    bad = files_in(tmp_path / "a ;b")
    with pytest.raises(ValueError, match="cannot be written"):
        render_config(bad, {})


@given(st.text(min_size=1, max_size=40), st.integers(min_value=0, max_value=10**6))
def test_every_upid_gets_a_valid_unique_program_name(upid: str, round: int) -> None:
    name = program_name(upid, round)
    assert set(name) <= set(string.ascii_letters + string.digits + "_.-")
    assert name.endswith(f"-{round}")
    assert name != program_name(upid + "x", round)
    assert name != program_name(upid, round + 1)
