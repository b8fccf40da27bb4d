"""The project's documents link only what the repository holds.

Every Markdown file of the repository (README, CONTRIBUTING, CHANGELOG, docs/, the
test folders' READMEs) is read as GitHub renders it: links inside code blocks and
code spans are not links. A relative link must reach a file or folder inside the
repository, and a ``#fragment`` must name a heading of the document it points at.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"build", "dist", "var", "bench-results", "node_modules"}


def documents() -> list[Path]:
    found = []
    for path in ROOT.rglob("*.md"):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        found.append(path)
    return sorted(found)


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)((?:(?!\n\n).)+?)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def prose(text: str, *, spans: bool = True) -> str:
    """The text with fenced code blocks (and code spans, unless ``spans`` is False)
    blanked out; line numbers are kept."""
    lines, fence = [], ""
    for line in text.split("\n"):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opened:
            fence = opened.group(1)
            lines.append("")
        else:
            lines.append(line)
    body = "\n".join(lines)
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), body) if spans else body


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference link."""
    body = prose(text)
    found = [(m.start(1), m.group(1)) for m in _INLINE_LINK.finditer(body)]
    found += [(m.start(1), m.group(1)) for m in _REFERENCE.finditer(body)]
    return sorted((body.count("\n", 0, at) + 1, target) for at, target in found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped,
    spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    out = set()
    for line in prose(path.read_text(), spans=False).split("\n"):
        found = _HEADING.match(line)
        if found is None:
            continue
        base = slug(found.group(1))
        out.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return out | set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text()))


def broken_links(path: Path) -> list[str]:
    problems = []
    where = path.relative_to(ROOT)
    for line, target in links(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: ... (not a file of the repository)
        file_part, _, fragment = target.partition("#")
        goal = (path.parent / file_part).resolve() if file_part else path
        if file_part.startswith("/") or not goal.is_relative_to(ROOT):
            problems.append(f"{where}:{line}: {target} points outside the repository")
        elif not goal.exists():
            problems.append(f"{where}:{line}: {target} does not exist")
        elif fragment and goal.suffix == ".md" and fragment not in anchors(goal):
            problems.append(
                f"{where}:{line}: {target}: {goal.relative_to(ROOT)} has no heading "
                f"with the anchor #{fragment}"
            )
    return problems


DOCUMENTS = documents()


def test_the_documents_a_newcomer_reads_first_are_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/architecture.md"} <= names
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_of_the_repository(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_names_the_shared_notes_outside_the_repository(path: Path) -> None:
    lines = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for i, line in enumerate(path.read_text().split("\n"), 1)
        if "../shared" in line
    ]
    assert not lines, "these lines point outside the repository:\n" + "\n".join(lines)


def test_the_link_reader_ignores_code_and_follows_anchors(tmp_path: Path) -> None:
    text = (
        "# Title: one `code` word\n"
        "See [a](a.md#part-two) and [b][ref], not `[c](c.md)`.\n"
        "```sh\n[d](d.md)\n# not a heading\n```\n"
        "[ref]: <b.md>\n"
    )
    assert links(text) == [(2, "a.md#part-two"), (7, "b.md")]
    (tmp_path / "a.md").write_text("## Part two\n```\n# Part three\n```\n## Part two\n")
    assert anchors(tmp_path / "a.md") == {"part-two", "part-two-1"}
    assert slug("Title: one `code` word (2026-12-02) — x") == "title-one-code-word-2026-12-02--x"
