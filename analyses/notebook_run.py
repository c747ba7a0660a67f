"""A small SafeSteer run for the notebooks: every stage on the organism with small settings, built once and reused.

Notebooks take `SAFESTEER_RUN` (an existing run folder) if set; otherwise they call `small_run()`, which runs the
pipeline into a cache folder keyed by the model's weights, so the three notebooks (and CI) share one run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from safesteer_interp.core.models import resolve_model_path
from safesteer_interp.pipeline import ORGANISM_DIRECTION, RunConfig, run_pipeline


def small_config(model: str = "organism") -> RunConfig:
    """Settings that finish in a few minutes on two CPU cores: every stage, with few prompts, samples and steps.

    Two distillation steps do not make a safe student; the notebooks need a run of the real pipeline, not a good one.
    """
    return RunConfig(model=model, k=20, horizon=3, samples=2, n_prompts=8, max_new_tokens=12, prompts_per_step=4,
                     eval_per_group=3, eval_per_task=1, direction={**ORGANISM_DIRECTION, "n_train": 16, "n_val": 8,
                                                                     "max_new_tokens": 8})


def cache_folder(model: str) -> Path:
    weights = Path(resolve_model_path(model)) / "model.safetensors"
    stamp = f"{weights.resolve()}:{weights.stat().st_mtime_ns}:{weights.stat().st_size}" if weights.is_file() else model
    key = hashlib.sha256(f"{stamp}:{small_config(model)}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"safesteer-notebook-run-{key}"


def small_run(model: str | None = None, out: str | Path | None = None, log=print) -> Path:
    """`SAFESTEER_RUN` if set, else a small run of `model` (default: SAFESTEER_MODEL or the organism), cached."""
    if out is None and os.environ.get("SAFESTEER_RUN"):
        return Path(os.environ["SAFESTEER_RUN"])
    model = model or os.environ.get("SAFESTEER_MODEL", "organism")
    folder = Path(out) if out is not None else cache_folder(model)
    run_pipeline(folder, small_config(model), log=log)  # stages already done are reused
    return folder


__all__ = ["cache_folder", "small_config", "small_run"]
