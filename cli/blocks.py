"""Listings that read in an 80-column terminal: one block per entry, a bold name over `field  value` lines.

Wide rich tables squeeze every cell into a narrow strip when the terminal is narrow; a block wraps its values at
spaces only, so ids like `org/name-x` stay whole on one line (`datasets`, `presets`).
"""

from __future__ import annotations

import textwrap

from rich.console import Console
from rich.text import Text


def say(console: Console, text: str, hang: int = 0) -> None:
    """Print `text` wrapped to the console's width (at least 40); continuation lines are indented by `hang`."""
    for line in textwrap.wrap(text, max(console.width, 40), subsequent_indent=" " * hang, break_on_hyphens=False):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def heading(console: Console, text: str) -> None:
    """A block's bold first line."""
    console.print(Text(text, style="bold"))


def field(console: Console, name: str, value: str, key: int) -> None:
    """One `name  value` line of a block: names in the first `key` columns, values (wrapped) after them."""
    say(console, f"  {name:<{key - 3}} {value}", hang=key)
