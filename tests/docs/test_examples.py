"""The examples in README.md and docs/ are real.

* Every ``pd-cli ...`` command in a fenced block of README.md or docs/*.md parses
  with the real click command (options, choices, value types).
* Fenced blocks preceded by ``<!-- test: run -->`` are run, line by line and in
  order, through ``CliRunner`` against a real dispatcher on RabbitMQ with a fake
  agent (the ``Cluster`` of ``tests/cli/test_commands.py``); every line must exit 0,
  and a line ending in a ``# → TEXT`` comment must print ``TEXT``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cli.pdcli import main as pd_cli
from tests.cli.test_commands import Cluster

REPO = Path(__file__).resolve().parents[2]
#: Documents whose examples are checked (cli.md is generated --help text).
DOCUMENTS = sorted(
    [REPO / "README.md", *(p for p in (REPO / "docs").glob("*.md") if p.name != "cli.md")]
)
RUN_MARKER = "<!-- test: run -->"
_FENCE = re.compile(r"^```")
SHELLS = ("sh", "bash", "shell", "console")
#: A ``# → TEXT`` comment: the text the line's output must contain.
_EXPECTED = re.compile(r"#\s*→\s*(.+)$")
_SUBSHELL = re.compile(r"\$\((pd-cli [^)]*)\)")


def fenced_blocks(path: Path) -> Iterator[tuple[bool, str, list[tuple[int, str]]]]:
    """Yield ``(runnable, language, [(line number, text)])`` per fenced block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    inside, runnable, language, marked = False, False, "", False
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        if _FENCE.match(line.strip()):
            if inside:
                yield runnable, language, block
                inside, block = False, []
            else:
                inside, runnable, marked = True, marked, False
                language = line.strip()[3:].strip()
            continue
        if inside:
            block.append((number, line))
        elif line.strip():
            marked = line.strip() == RUN_MARKER


def shell_blocks(path: Path) -> Iterator[tuple[bool, list[tuple[int, str]]]]:
    """The ``sh`` blocks of ``path`` (diagrams and help texts have no language)."""
    for runnable, language, block in fenced_blocks(path):
        if language in SHELLS:
            yield runnable, block


def write_example_files(directory: Path) -> None:
    """Write each YAML block that starts with ``# NAME`` as file NAME in ``directory``."""
    for path in DOCUMENTS:
        for _runnable, language, block in fenced_blocks(path):
            if language in ("yaml", "yml") and block and block[0][1].startswith("# "):
                name = block[0][1][2:].strip()
                if re.fullmatch(r"[\w.-]+\.ya?ml", name):
                    (directory / name).write_text("\n".join(line for _, line in block) + "\n")


def pd_cli_commands(lines: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """The ``pd-cli`` invocations in a block, as argument lists without ``pd-cli``."""
    found = []
    for number, line in lines:
        text = line.strip()
        candidates = _SUBSHELL.findall(text)
        if text.startswith("pd-cli "):
            candidates = [text]
        for candidate in candidates:
            words = shlex.split(candidate, comments=True)
            for stop in ("|", "&", ">", "&&", ";"):
                if stop in words:
                    words = words[: words.index(stop)]
            found.append((number, words[1:]))
    return found


def all_commands() -> list[Any]:
    params = []
    for path in DOCUMENTS:
        for _runnable, block in shell_blocks(path):
            for number, args in pd_cli_commands(block):
                rel = path.relative_to(REPO)
                params.append(pytest.param(args, id=f"{rel}:{number}"))
    return params


def parse(command: click.Command, args: list[str], parent: click.Context | None = None) -> None:
    """Parse ``args`` as click would, down to the leaf command, without running it."""
    ctx = command.make_context(command.name or "pd-cli", list(args), parent=parent)
    if isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, "a group needs a command"
        _name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None
        parse(sub, rest, ctx)


def test_the_docs_have_pd_cli_examples():
    assert len(all_commands()) > 30


@pytest.mark.parametrize("args", all_commands())
def test_every_pd_cli_example_parses(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files the examples name are the docs' own YAML blocks.
    write_example_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        parse(pd_cli, args)
    except click.exceptions.Exit as exc:  # --help and friends
        assert exc.exit_code == 0
    except click.UsageError as exc:
        pytest.fail(f"pd-cli {shlex.join(args)}: {exc.format_message()}")


RUNNABLE = [
    pytest.param(path, id=str(path.relative_to(REPO)))
    for path in DOCUMENTS
    if any(runnable for runnable, _ in shell_blocks(path))
]


def test_the_guide_and_readme_have_runnable_examples():
    assert {p.values[0].name for p in RUNNABLE} >= {"guide.md", "README.md"}


@pytest.mark.rabbitmq
@pytest.mark.parametrize("path", RUNNABLE)
def test_runnable_examples_succeed_against_a_real_dispatcher(
    path: Path, tmp_path: Path, amqp_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_example_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(tmp_path, amqp_uri)
    # the examples use the embedded dispatcher's engine, `default`
    cluster.client.add_engine({"engine_id": "default", "slots": 4})
    ran = 0
    try:
        for runnable, block in shell_blocks(path):
            if not runnable:
                continue
            for number, args in pd_cli_commands(block):
                ran += 1
                result = CliRunner().invoke(
                    pd_cli,
                    ["--sysname", cluster.sysname, "--timeout", "20", *args],
                    env=cluster.env(),
                )
                assert result.exit_code == 0, (
                    f"{path.name}:{number}: pd-cli {shlex.join(args)} exited "
                    f"{result.exit_code}: {result.output}"
                )
                expected = _EXPECTED.search(dict(block)[number])
                if expected is not None:
                    assert expected.group(1).strip() in result.output, (
                        f"{path.name}:{number}: pd-cli {shlex.join(args)} did not print "
                        f"{expected.group(1).strip()!r}: {result.output}"
                    )
    finally:
        cluster.close()
    assert ran >= 4
