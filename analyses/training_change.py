"""What training changed: the student's log-probs against the base model's, on S and off S, and the weight update.

On the student's own answers, Δ log-prob = log p_student - log p_base per vocabulary entry says whether training
moved S tokens (as the loss intends) or everything else; the weight update ΔW of every matrix is compared with the
refusal direction: how much of what ΔW writes to (or reads from) the residual stream lies along r.
"""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .common import RunInputs, Scored, Writer, as_float, score_groups
from .sparsity import in_set, set_mass


# ----------------------------------------------------------------------------------------------- pure tensors
def logprob_shift(student: Float[Tensor, "batch pos vocab"], base: Float[Tensor, "batch pos vocab"],
                  mask: Bool[Tensor, "batch pos"], ids: Int[Tensor, " k"]) -> dict:
    """Mean Δ log-prob of S tokens and of the other tokens (each token weighs the same, and weighted by p_student),
    plus the mass on S before and after."""
    delta = (student - base)[mask]  # n vocab
    on_set = in_set(delta.shape[-1], ids)
    p = student[mask].exp()
    mass_student, mass_base = set_mass(student, ids)[mask], set_mass(base, ids)[mask]
    return {"positions": int(mask.sum()),
            "delta_logp_S": as_float(delta[:, on_set].mean()), "delta_logp_not_S": as_float(delta[:, ~on_set].mean()),
            "delta_logp_S_p_weighted": as_float((p[:, on_set] * delta[:, on_set]).sum() / p[:, on_set].sum()),
            "delta_logp_not_S_p_weighted": as_float((p[:, ~on_set] * delta[:, ~on_set]).sum() / p[:, ~on_set].sum()),
            "mass_S_base": as_float(mass_base.mean()), "mass_S_student": as_float(mass_student.mean()),
            "delta_log_mass_S": as_float((mass_student.log() - mass_base.log()).mean())}


WRITE_MODULES = {"o_proj", "down_proj", "out_proj", "c_proj", "dense", "fc2", "dense_4h_to_h", "embed_tokens", "wte"}


def residual_side(param: str) -> str:
    """'write' for matrices whose output lands in the residual stream (attention / MLP out, embeddings), else 'read'.

    Decided by name, not shape: q/k/v projections are often d_model x d_model too."""
    return "write" if param.split(".")[-2] in WRITE_MODULES else "read"


def write_read_alignment(delta_w: Float[Tensor, "out in"], unit: Float[Tensor, " d_model"], side: str) -> dict:
    """How much of ΔW lies along r̂: ‖r̂ᵀΔW‖/‖ΔW‖_F for a matrix that writes to the residual stream (out = d_model),
    ‖ΔW r̂‖/‖ΔW‖_F for one that reads from it (in = d_model), and |cos| of ΔW's top singular vector on that side
    with r̂. A random direction gives about 1/sqrt(d_model)."""
    norm = delta_w.norm()
    out = {"side": side, "delta_norm": as_float(norm)}
    if float(norm) == 0:
        return out
    u, _s, vh = torch.linalg.svd(delta_w.double(), full_matrices=False)
    if side == "write":
        out["share"] = as_float((unit @ delta_w).norm() / norm)
        out["top_singular_cos"] = as_float((u[:, 0].float() @ unit).abs())
    else:
        out["share"] = as_float((delta_w @ unit).norm() / norm)
        out["top_singular_cos"] = as_float((vh[0].float() @ unit).abs())
    return out


@torch.no_grad()
def weight_update(base, student, unit: Float[Tensor, " d_model"]) -> list[dict]:
    """Alignment of every changed 2-D weight (student − base) with the refusal direction, by layer and module."""
    params = dict(base.named_parameters())
    rows = []
    for name, p in student.named_parameters():
        if p.ndim != 2 or name not in params or p.shape != params[name].shape:
            continue
        delta = p.detach().float() - params[name].detach().float()
        if float(delta.abs().max()) == 0:
            continue
        side = residual_side(name)
        if "embed" in name or "wte" in name:  # [vocab, d_model]: each row is a vector written to the residual
            delta = delta.T
        layer = re.search(r"layers\.(\d+)\.", name)
        rows.append({"param": name, "layer": int(layer.group(1)) if layer else None,
                     "module": name.split(".")[-2], **write_read_alignment(delta, unit, side)})
    return rows


# ----------------------------------------------------------------------------------------------- plots
def plot(shifts: dict, weights: list[dict], d_model: int, scored: dict[str, Scored], ids: Tensor):
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    on_set = in_set(scored["harmful"].student.shape[-1], ids)
    for group, colour in (("harmful", "tab:red"), ("harmless", "tab:blue")):
        s = scored[group]
        delta = (s.student - s.base)[s.mask]
        axes[0].hist(delta[:, on_set].flatten().numpy(), bins=60, alpha=0.5, color=colour, density=True,
                     histtype="step", lw=2, label=f"{group}: S tokens")
        axes[0].hist(delta[:, ~on_set].flatten().numpy(), bins=60, alpha=0.35, color=colour, density=True,
                     label=f"{group}: other tokens")
    axes[0].set(title="Δ log-prob (student − base) on the student's answers", xlabel="nats",
                ylabel="density (per token per position)")
    axes[0].legend(fontsize=7)
    for side, marker in (("write", "o"), ("read", "x")):
        group = [w for w in weights if w["side"] == side and "share" in w]
        axes[1].scatter([w["layer"] if w["layer"] is not None else -1 for w in group], [w["share"] for w in group],
                        marker=marker, label=f"{side}s the residual stream ({len(group)} matrices)")
    axes[1].axhline(1 / math.sqrt(d_model), color="grey", ls="--", label="random direction ≈ 1/√d_model")
    axes[1].set(title="Weight update along the refusal direction", xlabel="decoder layer (-1 = embeddings)",
                ylabel="‖r̂ᵀΔW‖ (writes) or ‖ΔW r̂‖ (reads) / ‖ΔW‖_F")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, samples: int = 2, max_new_tokens: int = 24, seed: int = 0,
            scored: dict[str, Scored] | None = None) -> dict:
    """Student vs base on the student's rollouts, and ΔW vs r; writes RUN/analysis/training_change/."""
    if inputs.student is None:
        return {"name": "training_change", "title": "What training changed", "files": [],
                "headline": {}, "skipped": "no trained student at RUN/train/model"}
    scored = scored or score_groups(inputs, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    ids = inputs.safety_ids
    shifts = {g: logprob_shift(s.student, s.base, s.mask, ids) for g, s in scored.items()}
    unit = inputs.direction.unit.float()
    weights = weight_update(inputs.base, inputs.student, unit)
    d_model = unit.shape[0]
    out = Writer(inputs.run, "training_change")
    out.figure("training_change.png", plot(shifts, weights, d_model, scored, ids))
    writes = [w["share"] for w in weights if w["side"] == "write" and "share" in w]
    reads = [w["share"] for w in weights if w["side"] == "read" and "share" in w]
    # Δ log-prob averaged over tokens includes the shift of the softmax normaliser, shared by every token: the
    # difference S minus not-S is free of it, and is what says whether training singled out S.
    headline = {f"{g}_{k}": shifts[g][k] for g in ("harmful", "harmless")
                for k in ("delta_logp_S", "delta_logp_not_S", "delta_log_mass_S", "mass_S_base", "mass_S_student")}
    headline |= {f"{g}_delta_logp_S_minus_not_S": as_float(shifts[g]["delta_logp_S"] - shifts[g]["delta_logp_not_S"])
                 for g in ("harmful", "harmless")}
    headline |= {"mean_write_share": as_float(sum(writes) / len(writes)) if writes else None,
                 "max_write_share": as_float(max(writes)) if writes else None,
                 "mean_read_share": as_float(sum(reads) / len(reads)) if reads else None,
                 "random_share": as_float(1 / math.sqrt(d_model)), "changed_matrices": len(weights)}
    result = {"name": "training_change", "title": "What training changed", "headline": headline,
              "shifts": shifts, "weights": weights}
    out.json("training_change.json", result)
    return {**result, "files": out.files}


__all__ = ["analyze", "logprob_shift", "residual_side", "weight_update", "write_read_alignment"]
