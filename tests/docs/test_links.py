"""The docs speak of this repository only, and their links lead somewhere.

* Every relative Markdown link in README.md, CHANGELOG.md and docs/ names a file of
  the repository, and its ``#fragment`` a heading of that file.
* No comment, docstring or document points outside the repository (another
  checkout's paths, section numbers of documents kept elsewhere); the design
  decisions it cites are the numbered ones of docs/architecture.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")])
#: Source trees whose comments and docstrings are checked (those that exist).
SOURCE_TREES = ("dashi", "pdcommon", "dispatcher", "eeagent", "cli", "tests", "bench", "scripts")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*```")
#: Text that only makes sense with documents kept outside the repository.
_OUTSIDE = re.compile(r"\.\./shared|shared/(?:design|reference)/|/work/|§")
_DECISION = re.compile(r"\bdecisions? (\d+)(?: and (\d+))?")


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a Markdown file outside fenced blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            inside = not inside
        elif not inside:
            yield number, line


def _anchors(path: Path) -> set[str]:
    """The fragment ids of ``path``'s headings, as GitHub derives them."""
    found = set()
    for _, line in _prose_lines(path):
        if line.startswith("#"):
            text = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def _links() -> list[object]:
    params = []
    for document in DOCUMENTS:
        for number, line in _prose_lines(document):
            for target in _LINK.findall(line):
                if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # not a URL
                    rel = document.relative_to(REPO)
                    params.append(pytest.param(document, target, id=f"{rel}:{number}"))
    return params


def test_the_docs_have_relative_links() -> None:
    assert len(_links()) > 10


@pytest.mark.parametrize(("document", "target"), _links())
def test_every_relative_link_leads_to_a_file_and_heading(document: Path, target: str) -> None:
    path, _, fragment = target.partition("#")
    destination = (document.parent / path).resolve() if path else document
    # Then the file exists inside the repository
    assert destination.exists(), f"{target}: no such file"
    assert destination.is_relative_to(REPO), f"{target}: outside the repository"
    # And the fragment, if any, names one of its headings
    if fragment and destination.suffix == ".md":
        assert fragment in _anchors(destination), f"{target}: no such heading"


def _texts() -> Iterator[tuple[Path, str]]:
    this = Path(__file__).resolve()
    for tree in SOURCE_TREES:
        for path in sorted((REPO / tree).rglob("*")):
            if path.suffix in (".py", ".sh", ".md") and path.resolve() != this:
                yield path, path.read_text(encoding="utf-8")
    for path in [*DOCUMENTS, *sorted((REPO / "etc").glob("*"))]:
        yield path, path.read_text(encoding="utf-8")


def _decision_count() -> int:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Decisions", 1)[1].split("\n## ", 1)[0]
    return len(re.findall(r"^\d+\. ", section, re.MULTILINE))


def test_nothing_points_outside_the_repository() -> None:
    # Given every source file and document
    # Then none names a path or a section of a document kept elsewhere
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path, text in _texts()
        for number, line in enumerate(text.splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert found == []


def test_every_decision_cited_is_one_of_docs_architecture() -> None:
    # Given the numbered decisions of docs/architecture.md
    count = _decision_count()
    assert count >= 9
    # Then every "decision N" cited in the code and docs is one of them
    cited = [
        (f"{path.relative_to(REPO)}:{number}", int(n))
        for path, text in _texts()
        for number, line in enumerate(text.splitlines(), 1)
        for match in _DECISION.finditer(line)
        for n in match.groups()
        if n is not None
    ]
    assert cited
    assert [(where, n) for where, n in cited if not 1 <= n <= count] == []
