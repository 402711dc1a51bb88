"""The documentation stands alone and stays in step with the code.

- README.md and the guides never narrate how the project was made (issue numbers, work sessions)
  and never cite files outside the repository;
- docs/configuration.md's generated key table is exactly `gmptl config --keys`;
- every relative link in the Markdown files points to a file (and heading) that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gmptl.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIG_DOC = REPO / "docs" / "configuration.md"
KEYS_BLOCK = re.compile(r"<!-- config-keys:start[^>]*-->\n(.*?)<!-- config-keys:end -->", re.S)

# User-facing Markdown: README.md, every file under docs/, and the guides beside the files they describe.
GUIDES = sorted(
    [REPO / "README.md", REPO / "cluster" / "README.md", REPO / "tune_spaces" / "README.md"]
    + [p for p in (REPO / "docs").rglob("*") if p.is_file()]
)
# Comments in configs, build files and benchmarks: they must not cite files outside the repository either.
COMMENTED = sorted(
    [REPO / "pyproject.toml", REPO / "Makefile"]
    + list((REPO / "jobs").glob("*.yaml"))
    + list((REPO / "tune_spaces").glob("*.yaml"))
    + list((REPO / "bench").glob("*.py"))
)

OUTSIDE_FILES = [
    (re.compile(r"METHOD\.md"), "a file outside the repository (METHOD.md): link docs/method.md"),
    (re.compile(r"STYLE\.md"), "a file outside the repository (STYLE.md)"),
    (re.compile(r"ENVIRONMENT\.md"), "a file outside the repository (ENVIRONMENT.md)"),
    (re.compile(r"\.\./shared\b"), "a folder outside the repository (../shared)"),
]
NARRATION = [
    (re.compile(r"\bissue\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"\(issue", re.I), "an issue reference"),
    (re.compile(r"\bsession\s+\d+", re.I), "a numbered work session"),
    (re.compile(r"\bwork\s+periods?\b", re.I), "a work period"),
]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def offending_lines(path: Path, rules: list[tuple[re.Pattern[str], str]]) -> list[str]:
    """`file:line: why: text` for every line of ``path`` that matches one of ``rules``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    generated = range(0)
    if path == CONFIG_DOC and (m := KEYS_BLOCK.search(text)):
        first = text.count("\n", 0, m.start(1)) + 1
        generated = range(first, first + m[1].count("\n"))
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, why in rules:
            if pattern.search(line):
                hint = (
                    " (generated from the config schema: fix the description in gmptl/config.py, then run `make docs`)"
                    if number in generated
                    else ""
                )
                found.append(f"{_rel(path)}:{number}: {why}{hint}: {line.strip()}")
    return found


@pytest.mark.parametrize("path", GUIDES, ids=_rel)
def test_guides_do_not_narrate_history_or_cite_outside_files(path):
    found = offending_lines(path, OUTSIDE_FILES + NARRATION)
    for line in found:
        print(line)
    assert not found, "the documentation must stand alone:\n" + "\n".join(found)


@pytest.mark.parametrize("path", COMMENTED, ids=_rel)
def test_configs_and_scripts_do_not_cite_outside_files(path):
    found = offending_lines(path, OUTSIDE_FILES)
    for line in found:
        print(line)
    assert not found, "cite docs/ instead of files outside the repository:\n" + "\n".join(found)


def test_configuration_doc_matches_gmptl_config_keys(capsys):
    m = KEYS_BLOCK.search(CONFIG_DOC.read_text(encoding="utf-8"))
    assert m, f"{_rel(CONFIG_DOC)} lacks the <!-- config-keys:start --> / <!-- config-keys:end --> markers"
    capsys.readouterr()
    assert main(["config", "--keys"]) == 0
    expected = capsys.readouterr().out
    if m[1] != expected:
        have, want = m[1].splitlines(), expected.splitlines()
        stale = [line for line in have if line not in want][:5]
        missing = [line for line in want if line not in have][:5]
        pytest.fail(
            f"{_rel(CONFIG_DOC)}'s config-key table differs from `gmptl config --keys`: run `make docs`.\n"
            + "".join(f"  only in the doc:    {line}\n" for line in stale)
            + "".join(f"  only in the output: {line}\n" for line in missing)
        )


# ------------------------------------------------------------------------------------------ links

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(text):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link that is not a URL, outside code blocks and code spans."""
    text = path.read_text(encoding="utf-8")
    text = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                found.append((number, target))
    return found


MARKDOWN = [p for p in GUIDES if p.suffix == ".md"]


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_relative_links_point_to_existing_files(path):
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{_rel(path)}:{number}: ({target})"
        if not dest.is_relative_to(REPO):
            broken.append(f"{where}: {file_part} is outside the repository")
        elif not dest.exists():
            broken.append(f"{where}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where}: {dest.name} has no heading #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)
