"""Instruction sets: a column of strings read from a local JSON / JSONL / CSV file, a named source or a hub id.

Local files are parsed with the standard library (exact row numbers in errors, no Arrow cache). Named sources
(`advbench`, `alpaca`, ... or `NAME=PATH` for a local copy; see `sources`) apply the reference's filters and column
mappings; other hub ids go through `datasets.load_dataset`, which works offline only for datasets already cached.
Sampling is seeded and keeps file order, so the same (source, n, seed) gives the same prompts on every machine.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from safesteer_interp.errors import SafeSteerError

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv")


def _rows_json(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SafeSteerError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from err
    if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}: take the single list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SafeSteerError(f"{path} is a JSON object; expected a list of rows (or an object holding exactly "
                                 "one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise SafeSteerError(f"{path} must hold a JSON list of rows, not {type(data).__name__}")
    return data


def _rows_jsonl(path: Path) -> list:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SafeSteerError(f"{path} line {number} is not valid JSON ({err.msg})") from err
    return rows


def _rows_csv(path: Path) -> list:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


READERS = {".json": _rows_json, ".jsonl": _rows_jsonl, ".csv": _rows_csv}


def read_rows(path: str | Path, what: str = "prompt file") -> list:
    """The rows of a local .json (a list, or an object holding one list), .jsonl or .csv file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SafeSteerError(f"{what} {path} not found; pass an existing .json/.jsonl/.csv file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SafeSteerError(f"{what} {path} has suffix '{path.suffix}'; use .json, .jsonl or .csv")
    return reader(path)


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
    import datasets

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
    from safesteer_interp.data.sources import load_source, lookup

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


__all__ = ["LOCAL_SUFFIXES", "load_instructions", "read_instructions", "read_rows", "sample"]
