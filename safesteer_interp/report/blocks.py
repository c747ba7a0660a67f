"""Report blocks (heading, paragraph, table, image, "not run" note) and their two renderers.

Sections build lists of neutral blocks; `render_markdown` writes them with relative image paths, `render_html` as
one self-contained page (inline CSS, base64 images) that opens offline.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


# ----------------------------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


@dataclass(frozen=True)
class NotRun:
    what: str
    hint: str


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ----------------------------------------------------------------------------------------------- renderers
def render_markdown(title: str, blocks: Sequence, root: Path) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, NotRun):
            lines += [f"*Not run:* {block.what}. {block.hint}", ""]
        elif isinstance(block, Image):
            lines += [f"![{block.caption}]({os.path.relpath(block.path, root)})", ""]
        elif isinstance(block, Table):
            def cell(text) -> str:
                return str(text).replace("|", "\\|").replace("\n", " ")

            lines += ["| " + " | ".join(map(cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(cell, row)) + " |" for row in block.rows] + [""]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.notrun { background: #fff7e0; border-left: 4px solid #e0a800; padding: .5em 1em; }
.meta { color: #666; font-size: 0.85em; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "–"


def render_html(title: str, blocks: Sequence, subtitle: str = "") -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>", f"<p class=\"meta\">{e(subtitle)}</p>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, NotRun):
            parts.append(f"<p class=\"notrun\"><strong>Not run:</strong> {e(block.what)}. {e(block.hint)}</p>")
        elif isinstance(block, Image):
            if Path(block.path).is_file():  # inline: the page must open with no network and no sibling files
                parts.append(f"<figure><img src=\"{_data_uri(Path(block.path))}\" alt=\"{e(block.caption)}\">"
                             f"<figcaption>{e(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p class=\"notrun\">Image missing: {e(str(block.path))}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{e(str(h))}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td class=\"num\">{e(str(c))}</td>" if _is_number(str(c))
                                            else f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


__all__ = ["Heading", "Image", "NotRun", "Para", "Table", "fmt", "render_html", "render_markdown"]
