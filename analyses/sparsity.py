"""Safety-token sparsity: how much of the student-teacher divergence the small set S actually carries.

KL(student ‖ teacher) at a position is a sum of per-token terms p_s(v) log(p_s(v)/p_t(v)); splitting that sum into
v ∈ S and v ∉ S says whether the divergence is localized on S (and at the first answer positions), and the same
split of KL(student ‖ base) on harmless prompts says where training's drift went.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .common import RunInputs, Scored, Writer, as_float, score_groups

EARLY = 3  # "the first few answer tokens": positions 1..3


# ----------------------------------------------------------------------------------------------- pure tensors
def in_set(vocab: int, ids: Int[Tensor, " k"]) -> Bool[Tensor, " vocab"]:
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[ids.long().cpu()] = True
    return mask


def kl_terms(student: Float[Tensor, "batch pos vocab"],
             other: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, "batch pos vocab"]:
    """p_s(v) (log p_s(v) - log p_o(v)): summing over v gives KL(student ‖ other); single terms can be < 0."""
    return student.exp() * (student - other)


def split_kl(student: Float[Tensor, "batch pos vocab"], other: Float[Tensor, "batch pos vocab"],
             ids: Int[Tensor, " k"]) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """(full-vocabulary KL, the part of it summed over S) at every position."""
    terms = kl_terms(student, other)
    on_set = in_set(terms.shape[-1], ids).to(terms.device)
    return terms.sum(-1), (terms * on_set).sum(-1)


def set_mass(logp: Float[Tensor, "batch pos vocab"], ids: Int[Tensor, " k"]) -> Float[Tensor, "batch pos"]:
    return logp.exp()[..., ids.long().to(logp.device)].sum(-1)


def ratio(part: Float[Tensor, "..."], whole: Float[Tensor, "..."], mask: Bool[Tensor, "..."]) -> float:
    """Σ part / Σ whole over masked entries: the share of the *total* divergence (NaN if there is none)."""
    total = (whole * mask).sum()
    return float((part * mask).sum() / total) if float(total) != 0 else float("nan")


def bootstrap_ratio(part: Float[Tensor, "batch pos"], whole: Float[Tensor, "batch pos"],
                    mask: Bool[Tensor, "batch pos"], n: int = 500, seed: int = 0) -> list[float | None]:
    """5th-95th percentile of `ratio` when whole rollouts (rows) are resampled: shares of a small total are noisy."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, part.shape[0], (n, part.shape[0]), generator=gen)
    m = mask.float()
    totals = (whole * m)[rows].sum((1, 2))
    shares = (part * m)[rows].sum((1, 2)) / totals
    shares = shares[totals != 0]
    if shares.numel() < 2:
        return [None, None]
    return [as_float(shares.quantile(0.05)), as_float(shares.quantile(0.95))]


def position_index(mask: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """1-based position within the answer (answers are contiguous from column 0)."""
    return mask.long().cumsum(-1)


def per_position(values: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> list[float | None]:
    """Mean over rows at each answer position (None where no row reaches it)."""
    counts = mask.sum(0)
    means = (values * mask).sum(0) / counts.clamp(min=1)
    return [as_float(m) if c else None for m, c in zip(means, counts, strict=True)]


def sparsity_numbers(student: Float[Tensor, "batch pos vocab"], teacher: Float[Tensor, "batch pos vocab"],
                     base: Float[Tensor, "batch pos vocab"], mask: Bool[Tensor, "batch pos"],
                     ids: Int[Tensor, " k"], early: int = EARLY) -> dict:
    """Every number of the sparsity analysis for one group of rollouts (see the module docstring)."""
    kl_full, kl_set = split_kl(student, teacher, ids)
    drift_full, drift_set = split_kl(student, base, ids)
    forward_full, forward_set = split_kl(teacher, student, ids)  # KL(teacher ‖ student): mass the student misses
    teacher_mass = set_mass(teacher, ids)
    index = position_index(mask)
    first, later = mask & (index <= early), mask & (index > early)
    n = int(mask.sum())
    return {
        "positions": n,
        "teacher_mass_S_ge_10pct": as_float(((teacher_mass >= 0.1) & mask).sum() / max(n, 1)),
        "teacher_mass_S_ge_50pct": as_float(((teacher_mass >= 0.5) & mask).sum() / max(n, 1)),
        "student_mass_S_mean": as_float((set_mass(student, ids) * mask).sum() / max(n, 1)),
        "teacher_mass_S_mean": as_float((teacher_mass * mask).sum() / max(n, 1)),
        "kl_student_teacher": as_float((kl_full * mask).sum() / max(n, 1)),  # nats per answer token
        f"kl_pos_1_{early}": as_float((kl_full * first).sum() / first.sum().clamp(min=1)),
        f"kl_pos_gt_{early}": as_float((kl_full * later).sum() / later.sum().clamp(min=1)),
        "kl_share_S": as_float(ratio(kl_set, kl_full, mask)),
        f"kl_share_S_pos_1_{early}": as_float(ratio(kl_set, kl_full, first)),
        f"kl_share_S_pos_gt_{early}": as_float(ratio(kl_set, kl_full, later)),
        f"forward_kl_share_S_pos_1_{early}": as_float(ratio(forward_set, forward_full, first)),
        f"forward_kl_share_S_pos_gt_{early}": as_float(ratio(forward_set, forward_full, later)),
        "ci90": {f"kl_share_S_pos_1_{early}": bootstrap_ratio(kl_set, kl_full, first),
                 f"kl_share_S_pos_gt_{early}": bootstrap_ratio(kl_set, kl_full, later),
                 "drift_share_S": bootstrap_ratio(drift_set, drift_full, mask)},
        "drift_kl_student_base": as_float((drift_full * mask).sum() / max(n, 1)),
        "drift_share_S": as_float(ratio(drift_set, drift_full, mask)),
        "drift_share_not_S": as_float(ratio(drift_full - drift_set, drift_full, mask)),
        "by_position": {"kl_full": per_position(kl_full, mask), "kl_S": per_position(kl_set, mask),
                        "teacher_mass_S": per_position(teacher_mass, mask),
                        "share_S": [as_float(ratio(kl_set[:, j], kl_full[:, j], mask[:, j])) if mask[:, j].any()
                                    else None for j in range(mask.shape[1])],
                        "forward_share_S": [as_float(ratio(forward_set[:, j], forward_full[:, j], mask[:, j]))
                                            if mask[:, j].any() else None for j in range(mask.shape[1])]},
        "teacher_mass_S_values": [round(float(x), 4) for x in teacher_mass[mask]],
    }


# ----------------------------------------------------------------------------------------------- plots
def plot(numbers: dict, set_fraction: float):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for group, colour in (("harmful", "tab:red"), ("harmless", "tab:blue")):
        g = numbers[group]
        axes[0].hist(g["teacher_mass_S_values"], bins=20, range=(0, 1), alpha=0.55, color=colour, label=group)
        shares = g["by_position"]["share_S"]
        axes[1].plot(range(1, len(shares) + 1), [float("nan") if s is None else s for s in shares], "o-",
                     color=colour, label=f"{group}: KL(student‖teacher) share on S")
        forward = g["by_position"]["forward_share_S"]
        axes[1].plot(range(1, len(forward) + 1), [float("nan") if s is None else s for s in forward], "x--",
                     color=colour, label=f"{group}: KL(teacher‖student) share on S")
        kl = g["by_position"]["kl_full"]
        axes[2].plot(range(1, len(kl) + 1), [float("nan") if s is None else s for s in kl], "o-", color=colour,
                     label=f"{group}: full vocab")
        kl_s = g["by_position"]["kl_S"]
        axes[2].plot(range(1, len(kl_s) + 1), [float("nan") if s is None else s for s in kl_s], "x--",
                     color=colour, label=f"{group}: on S")
    axes[0].set(title=f"Teacher mass on S per answer position (|S|/|V| = {set_fraction:.3f})",
                xlabel="teacher probability mass on S", ylabel="answer positions (count)")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(title="Share of the KL carried by S (reverse: solid, forward: dashed)",
                xlabel="answer position (1 = first token)",
                ylabel="Σ KL terms on S / full KL")
    axes[2].set(title="KL(student‖teacher) by answer position", xlabel="answer position (1 = first token)",
                ylabel="nats per token (mean over rollouts)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, samples: int = 2, max_new_tokens: int = 24, seed: int = 0,
            scored: dict[str, Scored] | None = None) -> dict:
    """Sparsity on student rollouts to harmful and harmless prompts; writes RUN/analysis/sparsity/."""
    scored = scored or score_groups(inputs, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    vocab = scored["harmful"].teacher.shape[-1]
    ids = inputs.safety_ids
    numbers = {g: sparsity_numbers(s.student, s.teacher, s.base, s.mask, ids) for g, s in scored.items()}
    set_fraction = ids.numel() / vocab
    out = Writer(inputs.run, "sparsity")
    out.figure("sparsity.png", plot(numbers, set_fraction))
    headline = {"S_over_V": as_float(set_fraction), "S": int(ids.numel()), "V": vocab,
                "kl_pos_1_3_harmful": numbers["harmful"][f"kl_pos_1_{EARLY}"],
                "kl_pos_gt_3_harmful": numbers["harmful"][f"kl_pos_gt_{EARLY}"],
                "kl_share_S_pos_1_3_harmful": numbers["harmful"][f"kl_share_S_pos_1_{EARLY}"],
                "kl_share_S_pos_1_3_harmful_ci90": numbers["harmful"]["ci90"][f"kl_share_S_pos_1_{EARLY}"],
                "kl_share_S_pos_gt_3_harmful": numbers["harmful"][f"kl_share_S_pos_gt_{EARLY}"],
                "forward_kl_share_S_pos_1_3_harmful": numbers["harmful"][f"forward_kl_share_S_pos_1_{EARLY}"],
                "forward_kl_share_S_pos_gt_3_harmful": numbers["harmful"][f"forward_kl_share_S_pos_gt_{EARLY}"],
                "harmless_drift_share_S": numbers["harmless"]["drift_share_S"],
                "harmless_drift_share_S_ci90": numbers["harmless"]["ci90"]["drift_share_S"],
                "harmless_drift_share_not_S": numbers["harmless"]["drift_share_not_S"],
                "harmless_drift_kl": numbers["harmless"]["drift_kl_student_base"],
                "teacher_mass_S_ge_50pct_harmful": numbers["harmful"]["teacher_mass_S_ge_50pct"]}
    result = {"name": "sparsity", "title": "Safety-token sparsity", "headline": headline,
              "student": "trained" if inputs.student is not None else "base (untrained)", "groups": numbers}
    out.json("sparsity.json", result)
    return {**result, "files": out.files}


__all__ = ["analyze", "bootstrap_ratio", "in_set", "kl_terms", "per_position", "ratio", "set_mass",
           "sparsity_numbers", "split_kl"]
