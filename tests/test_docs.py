"""The project documents itself: every citation of docs/*.md points at a page (and, for the model
and algorithms pages, a section) that exists, and nothing cites material outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: "docs/algorithms.md, P-ShareLoRA step 1": the page, then the section up to punctuation or a
#: word that continues the sentence.
CITATION = re.compile(r"docs/(\w+)\.md(?:, ([A-Za-z][\w\- ]*?))?(?=[).;:,`\]\n]| and | under | step |$)")
#: Sections the code and the README cite, which must stay headings of their pages.
REQUIRED = {
    "model": ["MDP", "Users", "Preferences", "Preference data", "Environments"],
    "algorithms": ["Estimators", "Ridge selection", "P-ShareLoRA", "Per-user refit", "Baselines",
                   "Identifiability", "Planning", "Agents", "Confidence sets"],
    "theory": [],
}


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        paths = [ROOT / line for line in listed.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        paths = [path for path in ROOT.rglob("*") if ".git" not in path.parts]
    return [path for path in paths if path.suffix in (".py", ".md", ".toml") and path.is_file()]


def _headings(page: str) -> set[str]:
    text = (ROOT / "docs" / f"{page}.md").read_text()
    return {line.lstrip("#").strip().lower() for line in text.splitlines() if line.startswith("#")}


def _citations() -> list[tuple[str, str, str | None]]:
    found = []
    for path in _repository_files():
        for match in CITATION.finditer(path.read_text()):
            found.append((str(path.relative_to(ROOT)), match.group(1), match.group(2)))
    return found


def test_the_documentation_pages_have_the_sections_the_project_cites():
    for page, sections in REQUIRED.items():
        headings = _headings(page)
        for section in sections:
            assert section.lower() in headings, (page, section)


def test_every_citation_of_the_docs_names_an_existing_page_and_section():
    citations = _citations()
    assert len(citations) > 30  # the code cites the docs throughout
    for where, page, section in citations:
        assert (ROOT / "docs" / f"{page}.md").is_file(), (where, page)
        if section is not None and page in ("model", "algorithms"):
            assert section.strip().lower() in _headings(page), (where, page, section)


@pytest.mark.parametrize("outside", ["DESIGN.md", "shared/seeds", "seeds/"])
def test_nothing_cites_material_outside_the_repository(outside):
    offenders = [str(path.relative_to(ROOT)) for path in _repository_files()
                 if path.name != "test_docs.py" and outside in path.read_text()]
    assert offenders == []
