"""`safesteer-interp datasets`: the named datasets every prompt option accepts, and how to pass a local copy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.data.sources import SEPARATOR, table

console = Console()


def datasets_command(
    assumptions: Annotated[bool, typer.Option("--assumptions", help="also print what each entry assumes about "
                                                                    "the hub version")] = False,
) -> None:
    """List the dataset names (hub id, config, split, columns, filter) and the NAME=PATH local-copy syntax."""
    grid = Table(title="datasets by name (any --harmful / --harmless / --prompts / --lookalike; mmlu: eval --mc; "
                              "capability-*: eval --capability)")
    for column in ("name", "from", "config", "split", "needs columns", "keeps", "maps"):
        grid.add_column(column, overflow="fold")
    rows = table()
    for row in rows:
        grid.add_row(row["name"], row["from"], row["config"] or "-", row["split"], ", ".join(row["columns"]),
                     row["keeps"], row["maps"])
    console.print(grid)
    console.print(f"Offline, pass a local copy with the same columns as NAME{SEPARATOR}PATH, e.g. "
                  f"--harmful advbench{SEPARATOR}data/harmful_behaviors.csv (.json, .jsonl or .csv).", highlight=False)
    console.print("HarmBench by name needs `make real`, which also installs the real models by name: "
                  f"{', '.join(NAMED_MODELS)} (`safesteer-interp presets` describes them).", highlight=False)
    if assumptions:
        for row in rows:
            console.print(f"- {row['name']}: {row['assumed']}", highlight=False)
