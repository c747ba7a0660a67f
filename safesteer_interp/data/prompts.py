"""Instruction sets: a column of strings read from a local JSON / JSONL / CSV file, a named source or a hub id.

Local files are parsed with the standard library (exact row numbers in errors, no Arrow cache). Named sources
(`advbench`, `alpaca`, ... or `NAME=PATH` for a local copy; see `sources`) apply the reference's filters and column
mappings; other hub ids go through `datasets.load_dataset`, which works offline only for datasets already cached.
Sampling is seeded and keeps file order, so the same (source, n, seed) gives the same prompts on every machine.
"""

from __future__ import annotations

import random
from pathlib import Path

from safesteer_interp.data.files import LOCAL_SUFFIXES, read_rows
from safesteer_interp.data.sources import load_source, lookup
from safesteer_interp.errors import SafeSteerError


def _column(rows: list, column: str, where: str) -> list[str]:
    """The `column` of every row (plain strings count as the column itself), checked row by row."""
    if not rows:
        raise SafeSteerError(f"{where} has no rows; it needs at least one '{column}'")
    values = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            value = row
        elif isinstance(row, dict):
            if column not in row:
                found = ", ".join(map(str, list(row)[:8])) or "none"
                raise SafeSteerError(f"{where} row {number} has no '{column}' column (columns: {found}); "
                                     f"pass --column or rename the field")
            value = row[column]
        else:
            raise SafeSteerError(f"{where} row {number} is a {type(row).__name__}; expected an object with "
                                 f"'{column}' or a string")
        if not isinstance(value, str) or not value.strip():
            raise SafeSteerError(f"{where} row {number}: '{column}' must be a non-empty string, got {value!r}")
        values.append(value.strip())
    return values


def _hub_column(name: str, column: str, split: str) -> list[str]:
    import datasets  # lazy: datasets (pyarrow) is heavy and only hub ids need it

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline (ConnectionError), unknown name (FileNotFoundError), bad split (ValueError)
        first = str(err.__cause__ or err).splitlines()[0] if str(err.__cause__ or err) else type(err).__name__
        raise SafeSteerError(f"could not load dataset '{name}' (split '{split}') from the hub or its cache ({first}); "
                             f"pass a local .json/.jsonl/.csv file with an '{column}' column instead") from err
    if column not in data.column_names:
        raise SafeSteerError(f"dataset '{name}' has no '{column}' column (columns: {', '.join(data.column_names)})")
    return _column([{column: v} for v in data[column]], column, f"dataset '{name}'")


def read_instructions(src: str | Path, column: str = "instruction", split: str = "train") -> list[str]:
    """Every instruction of a local file, named source (`NAME` or `NAME=PATH`) or hub dataset, in order.

    A named source uses its own split and maps its native column to `instruction`; `split` applies to hub ids only.
    """
    named = lookup(str(src))
    if named is not None:
        source, local = named
        rows, where = load_source(source, local, want="instructions")
        return _column(rows, column, where)
    path = Path(src).expanduser()
    if path.is_file():
        return _column(read_rows(path), column, str(path))
    text = str(src)
    if path.suffix.lower() in LOCAL_SUFFIXES or text.startswith((".", "/", "~")) or path.is_dir():
        raise SafeSteerError(f"prompt file {text} not found; pass an existing .json/.jsonl/.csv file or a "
                             "dataset name")
    return _hub_column(text, column, split)


def sample(items: list[str], n: int | None, seed: int = 42, what: str = "instructions") -> list[str]:
    """A seeded subset of `n` items in their original order (all of them when n is None)."""
    if n is None:
        return list(items)
    if not 0 < n <= len(items):
        raise SafeSteerError(f"asked for {n} {what} but only {len(items)} are available")
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def load_instructions(src: str | Path, n: int | None = None, seed: int = 42, column: str = "instruction",
                      split: str = "train") -> list[str]:
    """`n` instructions (all when None) sampled with `seed` from a local JSON/JSONL/CSV file or a hub dataset."""
    return sample(read_instructions(src, column, split), n, seed)


__all__ = ["load_instructions", "read_instructions", "sample"]
