"""Every doc the code cites is in the repository, and every cited section exists.

Citations are "METHOD §N" / "ARCHITECTURE §N" (also "docs/METHOD.md §N", lists "§1, §9, §10",
"§9/§10" and ranges "§3–§6"), resolved against the "## §N." headings of docs/METHOD.md and
docs/ARCHITECTURE.md. Nothing may point at the workspace's ../shared folder or at a
CONTRACTS file, which a clone does not have.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
DOCS = {"METHOD": REPOSITORY / "docs" / "METHOD.md", "ARCHITECTURE": REPOSITORY / "docs" / "ARCHITECTURE.md"}
SKIPPED_FOLDERS = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"}
SOURCE_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".txt"}
SCRIPTS = ("run", ".ci/run")

SECTION = r"§\d+"
CITATION = re.compile(rf"\b(?:docs/)?(METHOD|ARCHITECTURE)(?:\.md)?((?:\s*(?:,|/|–|-|and)?\s*{SECTION})+)")
HEADING = re.compile(r"^#+\s*§(\d+)\.", re.MULTILINE)
FORBIDDEN = (re.compile(r"\.\./shared"), re.compile(r"CONTRACTS"))


def _sources() -> list[Path]:
    files = [path for path in REPOSITORY.rglob("*")
             if path.is_file() and path.suffix in SOURCE_SUFFIXES
             and not SKIPPED_FOLDERS & set(path.relative_to(REPOSITORY).parts)]
    files += [REPOSITORY / script for script in SCRIPTS if (REPOSITORY / script).is_file()]
    return sorted(files)


def _sections(document: Path) -> set[int]:
    return {int(number) for number in HEADING.findall(document.read_text(encoding="utf-8"))}


def cited_sections(text: str) -> list[tuple[str, int]]:
    """(document, section) of every citation in `text`; a range §a–§b cites every section in it."""
    cited = []
    for match in CITATION.finditer(text):
        document, tail = match[1], match[2]
        numbers = [int(number) for number in re.findall(r"§(\d+)", tail)]
        ranges = re.findall(r"§(\d+)\s*[–-]\s*§(\d+)", tail)
        for start, end in ranges:
            numbers.extend(range(int(start), int(end) + 1))
        cited.extend((document, number) for number in numbers)
    return cited


def test_the_parser_reads_lists_ranges_and_paths():
    text = ("(METHOD §1, §9, §10; ARCHITECTURE §3) METHOD §3–§5 and docs/METHOD.md §8; "
            "METHOD §9/§10. CbMLC §4 is another paper's")
    assert sorted(cited_sections(text)) == sorted(
        [("METHOD", 1), ("METHOD", 9), ("METHOD", 10), ("ARCHITECTURE", 3), ("METHOD", 3), ("METHOD", 5),
         ("METHOD", 3), ("METHOD", 4), ("METHOD", 5), ("METHOD", 8), ("METHOD", 9), ("METHOD", 10)])


def test_the_cited_documents_exist_with_numbered_sections():
    for name, document in DOCS.items():
        assert document.is_file(), f"{document.relative_to(REPOSITORY)} is missing"
        sections = _sections(document)
        assert sections == set(range(1, max(sections) + 1)), f"{name}: sections not numbered 1..n: {sorted(sections)}"


def test_every_citation_resolves_to_an_existing_section():
    sections = {name: _sections(document) for name, document in DOCS.items()}
    unresolved, count = [], 0
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for document, number in cited_sections(text):
            count += 1
            if number not in sections[document]:
                unresolved.append(f"{path.relative_to(REPOSITORY)}: {document} §{number}")
    assert count > 50, f"only {count} citations found: the pattern no longer matches the docstrings"
    assert not unresolved, "citations of sections that do not exist:\n" + "\n".join(unresolved)


@pytest.mark.parametrize("pattern", FORBIDDEN, ids=lambda pattern: pattern.pattern)
def test_nothing_cites_files_a_clone_does_not_have(pattern):
    offenders = [f"{path.relative_to(REPOSITORY)}:{number}"
                 for path in _sources() if path != Path(__file__).resolve()
                 for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, f"{pattern.pattern} cited in: {offenders}"


def test_readme_links_to_the_docs():
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPOSITORY / target).is_file(), target
    assert "docs/METHOD.md" in readme and "docs/ARCHITECTURE.md" in readme
