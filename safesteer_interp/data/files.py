"""Local data files: the rows of a .json (a list, or an object holding one list), .jsonl or .csv file.

Parsed with the standard library so errors give exact row / line numbers and nothing is cached. Both the
instruction sets (`prompts`) and the named sources (`sources`) read their local copies through `read_rows`.
"""

from __future__ import annotations

import csv
import json
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


__all__ = ["LOCAL_SUFFIXES", "read_rows"]
