"""README.md and docs/: a README a new user reads in five minutes, a results table that is
the renderer's output (figures exist once), and relative links that resolve."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from leadre_model.eval.results_table import END, START, readme_block, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slugs(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file: its headings and explicit ``<a id>``s."""
    found: set[str] = set(ANCHOR.findall(path.read_text()))
    seen: Counter[str] = Counter()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith(("```", "~~~")):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    return found


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: …


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    first_block = re.search(r"```\w*\n(.*?)```", text, flags=re.DOTALL)
    assert first_block is not None
    commands = [ln.split("#")[0].strip() for ln in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    assert "DEMO_OUTPUT" not in text and "TODO" not in text


def test_readme_results_table_is_what_the_renderer_prints() -> None:
    block = readme_block(README)
    assert block == render(ROOT / "docs" / "results", link_from=ROOT), (
        "README's results table is stale: run `leadre report table --write README.md`")
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) >= 3
    # no figure in the table that the renderer did not put there: outside the markers the
    # README's "Results" section has no decimal figures of its own
    section = README.read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    outside = section.replace(block, "")
    assert not re.findall(r"\b0\.\d{2,}", outside), outside


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Top part\n\n[ok](#top-part) [bad](#nope) [file](missing.md) "
                    "`[code](x.md)` [web](https://example.com)\n```\n[fenced](y.md)\n```\n")
    assert relative_links(page) == ["#top-part", "#nope", "missing.md"]
    assert slugs(page) == {"top-part"}


def test_markers_are_the_renderers() -> None:
    assert START in README.read_text() and END in README.read_text()
