"""Run-folder artifacts: safetensors for tensors, JSON/JSONL for records, always written atomically.

Every write goes to a temporary file in the same folder and is renamed into place, so an interrupted stage never
leaves a half-written artifact behind. Nothing here unpickles: tensors are safetensors, metadata is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from safesteer_interp.errors import SafeSteerError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return Path(path)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return Path(path)


def read_jsonl(path: str | Path, what: str = "records", *, skip_torn: bool = False) -> list[dict]:
    """One record per non-empty line. `skip_torn`: drop lines that do not parse (the torn last line of a stage that
    was killed mid-append) instead of raising an error that names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SafeSteerError(f"{what} not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if not skip_torn:
                raise SafeSteerError(f"{what} {path} line {number} is not valid JSON ({err.msg}); delete the file "
                                     "and rerun the stage that writes it") from err
    return records


def read_json(path: str | Path, what: str = "artifact"):
    path = Path(path)
    if not path.is_file():
        raise SafeSteerError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SafeSteerError(f"{what} {path} is not valid JSON (line {err.lineno}: {err.msg}); "
                             "delete it and rerun the stage that writes it") from err


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """safetensors file; `metadata` values must be strings (use JSON for structure)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _sort_metadata(Path(tmp))
    return Path(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with the metadata keys sorted, so that the same tensors give the same bytes.

    safetensors keeps `__metadata__` in a hash map, so its key order (and the file's checksum) changes from one
    process to the next. The header is JSON padded with spaces to a fixed length; a sorted re-dump of the same
    keys and values is never longer, so it is written back in place and the tensor offsets stay valid.
    """
    with path.open("r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        sorted_header = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(sorted_header) > size:  # escaping differs from the writer's: keep the original, still valid
            return
        handle.seek(8)
        handle.write(sorted_header.ljust(size, b" "))


def read_tensors(path: str | Path, what: str = "tensor artifact") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise SafeSteerError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SafeSteerError(f"{what} {path} is corrupt ({err}); delete it and rerun the stage that writes it") from err
