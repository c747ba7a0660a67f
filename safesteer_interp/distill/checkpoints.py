"""Training checkpoints that make `--resume` exact: same final weights as a run that was never interrupted.

Everything random in a step is seeded from (seed, step, rank), so a step's outcome depends only on the weights
and optimizer state it starts from. A checkpoint therefore holds exactly those (safetensors + JSON, no pickles),
written into a temporary folder that is renamed into place; `latest.json` is switched last, atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from safesteer_interp.core.artifacts import read_json, read_tensors, write_json, write_tensors
from safesteer_interp.errors import SafeSteerError


def checkpoint_root(train_dir: Path) -> Path:
    return Path(train_dir) / "checkpoints"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                plain["state"].setdefault(str(pid), {})[key] = value
    return tensors, plain


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict) -> None:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in plain["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(train_dir: Path, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    extra: dict, keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNN/ atomically, point latest.json at it, keep the newest `keep` folders."""
    root = checkpoint_root(train_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_tensors(tmp / "weights.safetensors", {k: v.detach() for k, v in params.items()})
    tensors, plain = _optimizer_tensors(optimizer)
    write_tensors(tmp / "optimizer.safetensors", tensors)
    write_json(tmp / "state.json", {"step": step, "optimizer": plain, **extra})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"step": step, "dir": final.name})
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(train_dir: Path) -> Path | None:
    pointer = checkpoint_root(train_dir) / "latest.json"
    if not pointer.is_file():
        return None
    folder = checkpoint_root(train_dir) / read_json(pointer, "checkpoint pointer")["dir"]
    if not (folder / "state.json").is_file():
        raise SafeSteerError(f"{pointer} points at {folder}, which is incomplete; delete {pointer.parent} to "
                             "restart the training")
    return folder


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore trainable weights and optimizer state in place; returns state.json (step, config, ...)."""
    state = read_json(folder / "state.json", "checkpoint state")
    weights = read_tensors(folder / "weights.safetensors", "checkpoint weights")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        raise SafeSteerError(f"checkpoint {folder} holds different trainable parameters than this model "
                             f"({len(weights)} vs {len(params)} tensors); resume with the same model and "
                             "--lora-r/--full-ft as the original run")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    _load_optimizer(optimizer, read_tensors(folder / "optimizer.safetensors", "optimizer state"), state["optimizer"])
    return state


__all__ = ["checkpoint_root", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
