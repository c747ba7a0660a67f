"""Continuing an interrupted training: only the same run may resume, and it resumes at its last checkpoint.

A run's identity (config, prompt and direction fingerprints, S, world size) is saved with every checkpoint; resuming
with a different one is refused. Metrics written after the checkpoint (the steps that will be redone) are dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from safesteer_interp.core.artifacts import write_jsonl
from safesteer_interp.core.hooks import RowGate, RowMap
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.distill.checkpoints import latest_checkpoint, load_checkpoint
from safesteer_interp.distill.config import DistillConfig
from safesteer_interp.errors import SafeSteerError


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_identity(cfg: DistillConfig, instructions: Sequence[str], anchor_prompts: Sequence[str],
                 direction: Direction, safety_ids: Tensor | None, world_size: int,
                 prefills: Sequence[str] = (), teacher_also: Sequence[Direction] = (),
                 teacher_gate: RowGate | RowMap | None = None) -> dict:
    """What must not change between a run and its resumption (prefills, the teacher's further directions and its
    gate only where there are any, so that a run trained before they existed still resumes)."""
    return {"config": asdict(cfg), "prompts": fingerprint(list(instructions)),
            "anchor_prompts": fingerprint(list(anchor_prompts)),
            "direction": fingerprint([direction.vector.tolist(), direction.layer, direction.coeff]),
            "safety_ids": None if safety_ids is None else safety_ids.tolist(), "world_size": world_size,
            **({"prefills": fingerprint(list(prefills))} if prefills else {}),
            **({"teacher_also": fingerprint([[d.vector.tolist(), d.layer, d.coeff] for d in teacher_also])}
               if teacher_also else {}),
            **({"teacher_gate": _gate_fingerprint(teacher_gate)} if teacher_gate is not None else {})}


def _gate_fingerprint(gate: RowGate | RowMap) -> str:
    if isinstance(gate, RowMap):
        matrix = hashlib.sha256(gate.matrix.float().contiguous().numpy().tobytes()).hexdigest()
        return fingerprint([matrix, gate.layer, gate.pos])
    return fingerprint([gate.unit.tolist(), gate.layer, gate.threshold, gate.pos])


def gate_record(gate: RowGate | RowMap | None) -> dict:
    """train/config.json's account of the teacher's gate or map ({} without one)."""
    if gate is None:
        return {}
    if isinstance(gate, RowMap):
        return {"map": {"layer": gate.layer, "pos": gate.pos, "what": "the teacher adds coeff * (h @ matrix) per "
                        "prompt, h its resid_pre at (layer, pos): a null-space map (RUN/null-space/)"}}
    return {"gate": {"layer": gate.layer, "pos": gate.pos, "threshold": gate.threshold,
                     "what": "the teacher steers only prompts whose resid_pre at (layer, pos) projects >= threshold "
                             "on the gate's unit vector"}}


def resume_step(train_dir: Path, resume: bool, identity: dict, student: nn.Module, optimizer: torch.optim.Optimizer,
                main_process: bool = True) -> int:
    """The step to start from: the latest checkpoint's (weights and optimizer restored in place) or 0.

    A folder that already holds a run is never trained over silently: without `resume` that is an error.
    """
    metrics = Path(train_dir) / "metrics.jsonl"
    folder = latest_checkpoint(train_dir)
    if resume and folder is not None:
        state = load_checkpoint(folder, student, optimizer)
        changed = [k for k in identity if state["identity"].get(k) != identity[k]]
        if changed:
            raise SafeSteerError(f"cannot resume from {folder}: {', '.join(changed)} differ from the original run "
                                 "(pass the same options, or start a fresh --run)")
        truncate_metrics(metrics, state["step"], main_process)
        return state["step"]
    if folder is not None or metrics.is_file():
        if not resume:
            raise SafeSteerError(f"{train_dir} already holds a training run; pass --resume to continue it "
                                 "or choose a fresh --run folder")
        truncate_metrics(metrics, 0, main_process)  # killed before its first checkpoint: resuming means starting over
    return 0


def truncate_metrics(path: Path, step: int, main_process: bool = True) -> None:
    """Keep the records of steps <= `step` (and drop a last line cut by the kill)."""
    if not path.is_file() or not main_process:
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record.get("step", step + 1) <= step:
            kept.append(record)
    write_jsonl(path, kept)


__all__ = ["fingerprint", "gate_record", "resume_step", "run_identity", "truncate_metrics"]
