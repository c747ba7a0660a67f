"""The analysis notebooks are committed without outputs and run top to bottom on the organism (CI executes them).

They share one small run (built once per session here); without the organism checkpoint the execution test skips.
Set SAFESTEER_RUN to execute them against an existing run folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "analyses" / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_stripped():
    assert {p.stem for p in NOTEBOOKS} == {"safety_token_sparsity", "why_these_tokens", "what_training_changed"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


@pytest.fixture(scope="session")
def notebook_run(tmp_path_factory):
    if os.environ.get("SAFESTEER_RUN"):
        return Path(os.environ["SAFESTEER_RUN"])
    from safesteer_interp.core.models import ORGANISM_DIR

    model = os.environ.get("SAFESTEER_MODEL", "organism")
    if model == "organism" and not (ORGANISM_DIR / "config.json").is_file():
        pytest.skip(f"the organism checkpoint is absent at {ORGANISM_DIR} (build it with "
                    "`safesteer-interp organism train --install`); the notebooks run on it")
    from safesteer_interp.analyses.notebook_run import small_run

    return small_run(model, out=tmp_path_factory.mktemp("notebook-run") / "run", log=lambda _line: None)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, notebook_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SAFESTEER_RUN", str(notebook_run))  # the kernel inherits it: no second pipeline run
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in outputs)
    assert (notebook_run / "analysis").is_dir()
