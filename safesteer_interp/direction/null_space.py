"""The null-space steering map (AlphaSteer, Sheng et al., ICLR 2026): a matrix Δ with h Δ ≈ 0 for a benign prompt's
residual h and h Δ ≈ r (stage 1's direction) for a harmful one, so a teacher adding `coeff * h Δ` steers harm and,
by construction rather than by a threshold, leaves the benign prompts it was fitted on alone.

Δ = Q W. Q holds the trailing eigenvectors of Σ h hᵀ over benign train prompts (`ratio` of d_model: the directions
benign prompts barely use), and W is the ridge regression of the harmful train prompts' projected residuals onto r:
W = (ZᵀZ + λ I)⁻¹ Zᵀ R, Z = H_harm Q, each row of R = r (AlphaSteer's Δ̃ = (XᵀX + λPᵀP)⁺XᵀR, X = H P, P = QQᵀ,
written in Q's basis). The residual is read where stage 1's direction was: its layer, its prompt position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.artifacts import read_json, read_tensors, write_json, write_tensors
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import RowMap, cache_activations, check_layer
from safesteer_interp.errors import SafeSteerError


@torch.no_grad()
def prompt_states(model, tokenizer, prompts: Sequence[str], layer: int, pos: int,
                  batch_size: int = 32) -> Float[Tensor, "n d_model"]:
    """Each prompt's `blocks.{layer}.hook_resid_pre` at prompt position `pos` (-1: last token), float32 on the CPU."""
    if not prompts:
        raise SafeSteerError("no prompts to read: the prompt list is empty")
    if not isinstance(pos, int) or pos >= 0:
        raise SafeSteerError(f"prompt position {pos!r} must be a negative int counted from the prompt's end")
    name = f"blocks.{check_layer(model, layer)}.hook_resid_pre"
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, list(prompts[start:start + batch_size])).to(device)
        with cache_activations(model, [name], positions=slice(pos, pos + 1 or None), dtype=torch.float32) as cache:
            model(**batch.inputs(), use_cache=False)
        rows.append(cache[name][:, 0].cpu())
    return torch.cat(rows)


def null_basis(benign: Float[Tensor, "n d_model"], ratio: float) -> tuple[Float[Tensor, "d_model k"],
                                                                           Float[Tensor, " d_model"]]:
    """(Q, eigenvalues): the round(ratio * d_model) eigenvectors of Σ h hᵀ (benign rows) with the smallest
    eigenvalues, and every eigenvalue in ascending order (how little benign prompts use each kept direction)."""
    if not 0 < ratio < 1:
        raise SafeSteerError(f"null-space ratio {ratio} must be in (0, 1): the share of d_model kept")
    if benign.ndim != 2 or benign.shape[0] == 0:
        raise SafeSteerError(f"benign states have shape {tuple(benign.shape)}; expected [n > 0, d_model]")
    gram = benign.double().T @ benign.double()
    values, vectors = torch.linalg.eigh(gram)  # ascending
    k = max(1, round(ratio * benign.shape[1]))
    return vectors[:, :k].float(), values.float()


def fit_map(benign: Float[Tensor, "n_benign d_model"], harmful: Float[Tensor, "n_harmful d_model"],
            target: Float[Tensor, " d_model"], ratio: float, ridge: float) -> Float[Tensor, "d_model d_model"]:
    """Δ = Q (ZᵀZ + λI)⁻¹ Zᵀ R with Q = `null_basis(benign, ratio)`, Z = harmful Q, each row of R = target."""
    if ridge <= 0:
        raise SafeSteerError(f"ridge {ridge} must be > 0 (AlphaSteer's is 10)")
    if harmful.ndim != 2 or harmful.shape[0] == 0 or harmful.shape[1] != benign.shape[1]:
        raise SafeSteerError(f"harmful states have shape {tuple(harmful.shape)}; expected [n > 0, "
                             f"{benign.shape[1]}] like the benign ones")
    basis, _values = null_basis(benign, ratio)
    z = harmful.double() @ basis.double()  # [n, k]
    targets = target.double().expand(harmful.shape[0], -1)  # [n, d_model]
    weights = torch.linalg.solve(z.T @ z + ridge * torch.eye(z.shape[1], dtype=z.dtype), z.T @ targets)  # [k, d]
    return (basis.double() @ weights).float()


def map_share(states: Float[Tensor, "n d_model"], matrix: Float[Tensor, "d_model d_model"],
              target: Float[Tensor, " d_model"]) -> Float[Tensor, " n"]:
    """How much of `target` the map adds per row: (h Δ) · r / |r|², 1 on a harmful prompt it reproduces, ~0 on a
    benign one."""
    return (states.float() @ matrix.float()) @ target.float() / target.float().square().sum()


@dataclass(frozen=True)
class SteeringMap:
    """A fitted map and where it reads: `blocks.{layer}.hook_resid_pre` at prompt position `pos`."""

    matrix: Float[Tensor, "d_model d_model"]
    layer: int
    pos: int
    ratio: float  # the share of d_model kept as the benign null space
    ridge: float
    reason: str = ""  # why this (ratio, ridge), in words
    fit: dict = field(default_factory=dict, compare=False)  # sets, sizes, val rates per candidate, seconds

    def row_map(self) -> RowMap:
        return RowMap(self.layer, self.matrix, self.pos)


def save_map(folder: str | Path, steering: SteeringMap, record: dict | None = None) -> dict:
    """Write `folder/null_space.safetensors` (the matrix) and `folder/null_space.json` (the caller's `record`, then
    where the map reads, its ratio and ridge, the reason and the fit's provenance). Returns the JSON's content."""
    folder = Path(folder)
    write_tensors(folder / "null_space.safetensors", {"matrix": steering.matrix.float()},
                  {"axes": "d_model d_model",
                   "what": "AlphaSteer's steering map: the teacher adds coeff * (h @ matrix)",
                   "where": "null_space.json beside this file: layer, pos, ratio, ridge"})
    content = {**(record or {}), "layer": steering.layer, "pos": steering.pos, "ratio": steering.ratio,
               "ridge": steering.ridge, "hook": f"blocks.{steering.layer}.hook_resid_pre", "reason": steering.reason,
               **steering.fit}
    write_json(folder / "null_space.json", content)
    return content


def load_map(folder: str | Path) -> SteeringMap:
    """Read a map written by `save_map`, with a one-line error naming the file when it is missing or malformed."""
    folder = Path(folder)
    tensors, meta_path = folder / "null_space.safetensors", folder / "null_space.json"
    meta = read_json(meta_path, "null-space steering map")
    matrix = read_tensors(tensors, "null-space steering map").get("matrix")
    if matrix is None or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not torch.isfinite(matrix).all():
        raise SafeSteerError(f"{tensors} holds no finite square tensor 'matrix'; refit the map")
    try:
        layer, pos, ratio, ridge = int(meta["layer"]), int(meta["pos"]), float(meta["ratio"]), float(meta["ridge"])
    except (KeyError, TypeError, ValueError) as err:
        raise SafeSteerError(f"{meta_path} lacks a valid layer / pos / ratio / ridge ({type(err).__name__}: {err}); "
                             "refit the map") from err
    if pos >= 0 or layer < 0:
        raise SafeSteerError(f"{meta_path}: layer {layer}, pos {pos} break layer >= 0, pos < 0; refit the map")
    known = {"layer", "pos", "ratio", "ridge", "hook", "reason"}
    return SteeringMap(matrix, layer, pos, ratio, ridge, str(meta.get("reason", "")),
                       {k: v for k, v in meta.items() if k not in known})


__all__ = ["SteeringMap", "fit_map", "load_map", "map_share", "null_basis", "prompt_states", "save_map"]
