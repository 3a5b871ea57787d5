"""The README's tour matches the tree, and every relative link in README.md and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "pipelines", "serving")


def tour() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick tour")
    return readme[start:readme.index("```", readme.index("```", start) + 3)]


def test_the_tour_names_every_module_and_nothing_that_is_gone():
    text = tour()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", text))
    modules = {path.name for package in PACKAGES for path in (ROOT / package).glob("*.py") if path.name != "__init__.py"}
    bench = {path.name for path in (ROOT / "bench").glob("*.py") if path.name != "__init__.py"}
    assert modules - named == set(), "modules missing from the README's tour"
    assert named - modules - bench == set(), "the README's tour names files that do not exist"


def test_relative_links_in_the_readme_and_docs_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
