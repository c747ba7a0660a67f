"""The documentation holds together: every relative link and image in README.md and docs/ resolves (anchors
included, by GitHub's heading slugs), the README stays a front page with the headline near the top, and
docs/architecture.md's Layout table names every library module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SEEDS_HEADER = ("| model | refusal (substring) | refusal (coherent) | sampled T=1 | over-refusal | helpfulness "
                "| capability | harmless KL |")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), an optional "title" after the target; text may span lines
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation except '-' and '_' removed, spaces
    to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown text's headings (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown), re.M):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(markdown: str) -> list[str]:
    """Targets of the links and images in a Markdown text, outside code blocks and code spans."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", markdown)))


def broken_links(markdown: str, page: Path) -> list[str]:
    """The relative links of `markdown` (the text of `page`) whose file is missing or whose anchor is not a
    heading of the Markdown file it points into; web and mail links are not checked."""
    broken = []
    for target in links(markdown):
        if re.match(r"(https?|mailto):", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            text = markdown if file == page else file.read_text()
            if anchor not in anchors(text):
                broken.append(target)
    return broken


def test_the_slugs_follow_github():
    assert slug("Real models on HarmBench") == "real-models-on-harmbench"
    assert slug("What the organism shows (test split, `safesteer-interp run --baselines`, seed 42)") == \
        "what-the-organism-shows-test-split-safesteer-interp-run---baselines-seed-42"
    assert slug("K' auto") == "k-auto"
    assert slug("Stage 1 / 2 / 3 choices") == "stage-1--2--3-choices"
    assert anchors("# A\n\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_the_link_checker_finds_planted_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Real models on HarmBench\n")
    (tmp_path / "figure.png").write_bytes(b"")
    page = tmp_path / "README.md"
    text = ("# Intro\n\n[good](docs/page.md#real-models-on-harmbench), ![figure](figure.png), [self](#intro),\n"
            "[web](https://example.org/missing.md), [mail](mailto:a@b.c), `[in code](nowhere.md)`,\n"
            "```\n[in a block](nowhere.md)\n```\n"
            "[missing file](docs/missing.md), ![missing image](docs/figure.png), [missing anchor](docs/page.md#nope),\n"
            "[missing here](#outro), [an image over\ntwo lines](gone.png)\n")
    page.write_text(text)
    assert broken_links(text, page) == ["docs/missing.md", "docs/figure.png", "docs/page.md#nope", "#outro",
                                        "gone.png"]
    assert broken_links("[fine](docs/page.md) [also](figure.png)", page) == []


def test_every_relative_link_and_image_resolves():
    assert len(DOCS) >= 8
    broken = {str(page.relative_to(ROOT)): bad for page in [README, *DOCS]
              if (bad := broken_links(page.read_text(), page))}
    assert not broken, f"broken relative links: {broken}"


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (a front page has at most 200)"
    top = lines[:80]
    assert SEEDS_HEADER in [line.strip() for line in top], "the 3-seed table is not within the README's first 80 lines"
    assert any("](docs/qwen-seeds.png)" in line for line in top), "docs/qwen-seeds.png is not within the first 80 lines"
    linked = {target.partition("#")[0] for target in links(README.read_text())}
    unlisted = [page.name for page in DOCS if f"docs/{page.name}" not in linked]
    assert not unlisted, f"README.md does not link {unlisted}"


def test_the_architecture_page_names_every_library_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    layout = page[page.index("## Layout"):]
    layout = layout[:layout.index("\n## ") if "\n## " in layout else None]
    rows: dict[str, set[str]] = {}  # folder -> module names in backticks on its rows (continuation rows included)
    folder = ""
    for line in layout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.startswith("|"):
            continue
        folder = cells[0].strip("`") or folder
        rows.setdefault(folder, set()).update(re.findall(r"`(\w+)`", cells[1]))
    missing = []
    for path in (ROOT / "safesteer_interp").rglob("*.py"):
        if path.name == "__init__.py":
            continue
        where = str(path.parent.relative_to(ROOT)) + "/"
        if path.stem not in rows.get(where, set()):
            missing.append(f"{where}{path.name}")
    assert not missing, "docs/architecture.md's Layout table lacks: " + ", ".join(sorted(missing))
