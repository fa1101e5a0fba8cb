"""Every document the code cites is in the repository, down to the section."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    path
    for folder in ("common", "tools", "apps", "benchmarks", "scripts", "tests")
    for path in (REPO / folder).rglob("*.py")
)
CITATION = re.compile(r"\b((?:docs|bundles)/[\w./-]+\.md)(?:\s+§\s*([\d.]+\d))?")
BARE_SPEC = re.compile(r"\bMETHODS" r"\.md\b")  # the method specification outside the repository


def _citations() -> list[tuple[str, str, str | None]]:
    found = []
    for path in SOURCES:
        for match in CITATION.finditer(path.read_text()):
            found.append((str(path.relative_to(REPO)), match.group(1), match.group(2)))
    return found


def test_the_code_cites_the_method_pages():
    cited = {page for _, page, _ in _citations()}
    assert {"docs/methods/smile.md", "docs/methods/sli2vol.md", "docs/methods/xnet.md"} <= cited


@pytest.mark.parametrize(("source", "page", "section"), _citations())
def test_cited_page_and_section_exist(source, page, section):
    target = REPO / page
    assert target.is_file(), f"{source} cites {page}, which is not in the repository"
    if section:
        headings = re.findall(r"^#+\s+([\d.]+\d)\b", target.read_text(), re.M)
        assert section in headings, f"{source} cites {page} §{section}; its numbered sections are {headings}"


def test_no_code_cites_a_document_outside_the_repository():
    offenders = [str(path.relative_to(REPO)) for path in SOURCES if BARE_SPEC.search(path.read_text())]
    assert offenders == [], f"these cite the specification outside the repository (cite docs/methods/): {offenders}"
