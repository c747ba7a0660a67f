"""All analyses of one run folder: load the models once, share the student rollouts, write RUN/analysis/index.json.

`analyze_run(run)` is what `safesteer-interp analyze --run RUN` calls; the report reads the index it writes
(`report.sections.section_analysis`), so the run's report links every PNG/HTML/JSON the analyses wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from safesteer_interp.core.artifacts import read_json, write_json
from safesteer_interp.errors import SafeSteerError

from . import (
    contrast_sweep,
    divergence,
    gate_form,
    loss_geometry,
    null_space,
    safety_depth,
    sparsity,
    steering_positions,
    training_change,
    why_tokens,
)
from .common import load_inputs, score_groups

ANALYSES = ("sparsity", "divergence", "why_tokens", "training_change", "loss_geometry", "steering_positions",
            "safety_depth", "contrast", "gate_form", "null_space")


def analyze_run(run: str | Path, *, model: str | None = None, only: Sequence[str] | None = None, n_prompts: int = 8,
                samples: int = 2, max_new_tokens: int = 24, seed: int = 0, depth_tokens: int = 64,
                log: Callable[[str], None] = print) -> dict:
    """Run the analyses (all, or `only`) on a run folder and write RUN/analysis/index.json."""
    chosen = list(only or ANALYSES)
    unknown = [a for a in chosen if a not in ANALYSES]
    if unknown:
        raise SafeSteerError(f"unknown analysis {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    inputs = load_inputs(run, model=model, n_prompts=n_prompts, seed=seed)
    if inputs.student is None:
        log(f"no trained student at {inputs.run / 'train' / 'model'}: analyses treat the base model as the student")
    shared = {}
    if {"sparsity", "training_change", "loss_geometry"} & set(chosen):  # one set of student rollouts for all three
        with torch.random.fork_rng():
            shared = score_groups(inputs, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    calls = {"sparsity": lambda: sparsity.analyze(inputs, scored=shared),
             "divergence": lambda: divergence.analyze(inputs, max_new_tokens=max_new_tokens, seed=seed),
             "why_tokens": lambda: why_tokens.analyze(inputs, samples=samples, seed=seed),
             "training_change": lambda: training_change.analyze(inputs, scored=shared),
             "loss_geometry": lambda: loss_geometry.analyze(inputs, scored=shared),
             "steering_positions": lambda: steering_positions.analyze(inputs, max_new_tokens=max_new_tokens),
             "safety_depth": lambda: safety_depth.analyze(inputs, max_new_tokens=depth_tokens),
             "contrast": lambda: contrast_sweep.analyze(inputs, log),
             "gate_form": lambda: gate_form.analyze(inputs, log),
             "null_space": lambda: null_space.analyze(inputs, log)}
    entries = []
    for name in chosen:
        started = time.perf_counter()
        result = calls[name]()
        seconds = round(time.perf_counter() - started, 2)
        log(f"[analysis] {name}: {seconds} s, {len(result['files'])} files")
        entries.append({"name": name, "title": result["title"], "files": result["files"],
                        "headline": result["headline"], "seconds": seconds,
                        **({"skipped": result["skipped"]} if "skipped" in result else {})})
    settings = {"n_prompts": n_prompts, "samples": samples, "max_new_tokens": max_new_tokens, "seed": seed,
                "depth_tokens": depth_tokens,
                "student": "RUN/train/model" if inputs.student is not None else "base (untrained)"}
    path = Path(run) / "analysis" / "index.json"
    # `--only` refreshes some analyses: keep the others' entries (each carries the settings it ran with)
    kept = read_json(path, "analysis index").get("analyses", []) if path.is_file() else []
    fresh = {e["name"] for e in entries}
    merged = [e for e in kept if e.get("name") not in fresh] + [{**e, "settings": settings} for e in entries]
    merged.sort(key=lambda e: ANALYSES.index(e["name"]) if e["name"] in ANALYSES else len(ANALYSES))
    index = {"run": str(Path(run).resolve()), "model": inputs.model_spec, **settings, "analyses": merged}
    write_json(path, index)
    return index


__all__ = ["ANALYSES", "analyze_run"]
