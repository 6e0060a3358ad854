"""Write docs/cli.md from the commands' own --help texts.

.venv/bin/python scripts/cli_reference.py            # rewrite docs/cli.md
.venv/bin/python scripts/cli_reference.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.dispatcher import main as pd_dispatcher
from cli.eeagent import main as pd_eeagent
from cli.pdcli import main as pd_cli

TARGET = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _walk(command: click.Command, path: list[str]) -> list[list[str]]:
    paths = [path]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            paths.extend(_walk(command.commands[name], [*path, name]))
    return paths


def render() -> str:
    parts = [
        "# CLI reference\n",
        "Generated from the commands' `--help` by `scripts/cli_reference.py`; a test keeps it current.\n",
    ]
    runner = CliRunner()
    for prog, command in (
        ("pd-dispatcher", pd_dispatcher),
        ("pd-eeagent", pd_eeagent),
        ("pd-cli", pd_cli),
    ):
        for path in _walk(command, []):
            result = runner.invoke(command, [*path, "--help"], prog_name=prog, terminal_width=100)
            title = " ".join([prog, *path])
            parts.append(f"## `{title}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
