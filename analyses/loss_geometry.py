"""Loss geometry: what the paper's restricted reverse KL actually asks of each safety token, beside renorm / binned.

The paper's per-position loss Σ_{v∈S} p_s(v) log(p_s(v)/p_t(v)) is a partial sum: it can be negative, and each term
is minimised at p_s(v) = p_t(v)/e, not at p_t(v). So a token the student holds between p_t/e and p_t is pushed
*down*, away from the teacher. We count how often that happens on the student's rollouts; renorm and binned are
true divergences (never negative) and are shown beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.distill.losses import token_loss

from .common import RunInputs, Scored, Writer, as_float, score_groups


# ----------------------------------------------------------------------------------------------- pure tensors
def zones(student: Float[Tensor, "n k"], teacher: Float[Tensor, "n k"]) -> dict[str, Bool[Tensor, "n k"]]:
    """Where each S token's student log-prob sits: below p_t/e (pushed up), between p_t/e and p_t (pushed *down*,
    away from the teacher), above p_t (pushed down, toward it)."""
    gap = student - teacher  # log(p_s / p_t)
    return {"below_pt_over_e": gap < -1.0, "between": (gap >= -1.0) & (gap < 0.0), "above_pt": gap >= 0.0}


def geometry_numbers(student: Float[Tensor, "batch pos vocab"], teacher: Float[Tensor, "batch pos vocab"],
                     mask: Bool[Tensor, "batch pos"], ids: Int[Tensor, " k"]) -> dict:
    ids = ids.to(student.device)
    losses = {how: token_loss(student, teacher, vocab="safe", how=how, safety_ids=ids)[mask]
              for how in ("paper", "renorm", "binned")}
    s, t = student[mask][:, ids], teacher[mask][:, ids]  # n k
    where = zones(s, t)
    weight = t.exp()  # weigh tokens by the teacher's mass on them: a token neither model uses matters little
    out = {"positions": int(mask.sum())}
    for how, values in losses.items():
        # below -1e-6, not below 0: float rounding leaves a true divergence (binned, renorm) at -1e-9 where it is 0
        out[how] = {"mean": as_float(values.mean()), "frac_negative": as_float((values < -1e-6).float().mean()),
                    "min": as_float(values.min()), "max": as_float(values.max())}
    for zone, m in where.items():
        out[f"frac_{zone}"] = as_float(m.float().mean())
        out[f"frac_{zone}_teacher_weighted"] = as_float((m * weight).sum() / weight.sum())
    out["log_ratio_values"] = [round(float(x), 3) for x in (s - t)[t.exp() > 1e-3].flatten()]
    return out


def first_position(student: Float[Tensor, "batch pos vocab"], teacher: Float[Tensor, "batch pos vocab"],
                   ids: Int[Tensor, " k"], names: Sequence[str], top: int = 5,
                   base: Float[Tensor, "batch pos vocab"] | None = None) -> dict:
    """The first answer token, where refusal is decided: mean p_student, p_teacher and the paper's fixed point
    p_teacher/e for the S tokens the teacher uses (> 1e-3), and the student's own top tokens, in S or not.

    The paper's loss drives each S token to p_teacher/e; whatever mass that frees goes to tokens outside S, which the
    loss does not control. `student_top` shows where it went (e.g. the compliance opener kept, or scattered).
    With `base`, `base_top` lists the untrained model's own top first tokens: the compliance openers the loss must
    beat. One that is in S is pulled to its p_teacher/e (near 0 for a token the teacher avoids); one outside S only
    shrinks with the rest of the vocabulary, so it can stay on top of the refusal opener (whose target is p_t/e).
    """
    ids = ids.to(student.device)
    p_s, p_t = student[:, 0].exp().mean(0), teacher[:, 0].exp().mean(0)  # vocab
    in_s = torch.zeros_like(p_s, dtype=torch.bool)
    in_s[ids] = True
    used = ids[p_t[ids] > 1e-3]
    used = used[p_t[used].argsort(descending=True)].tolist()
    out = {"S": [{"token": names[i], "p_student": as_float(p_s[i]), "p_teacher": as_float(p_t[i]),
                  "p_teacher_over_e": as_float(p_t[i] / math.e)} for i in used],
           "mass_S_student": as_float(p_s[ids].sum()), "mass_S_teacher": as_float(p_t[ids].sum()),
           "mass_S_fixed_point": as_float(p_t[ids].sum() / math.e),
           "student_top": [{"token": names[int(i)], "p_student": as_float(p_s[i]), "in_S": bool(in_s[i])}
                           for i in p_s.topk(min(top, p_s.numel())).indices]}
    if base is not None:
        p_b = base[:, 0].exp().mean(0)
        out["base_top"] = [{"token": names[int(i)], "p_base": as_float(p_b[i]), "p_student": as_float(p_s[i]),
                            "p_teacher": as_float(p_t[i]), "in_S": bool(in_s[i]),
                            "paper_target": as_float(p_t[i] / math.e) if in_s[i] else None}
                           for i in p_b.topk(min(top, p_b.numel())).indices]
    return out


def describe_base_top(row: dict) -> str:
    """One line: a base model's first token, what training made of it, and whether the paper loss controls it."""
    fate = (f"in S: pulled to p_t/e = {row['paper_target']:.3f}" if row["in_S"]
            else "not in S: the paper loss only shrinks it with the rest of the vocabulary")
    return f"{row['token']!r} ({row['p_base']:.3f} base -> {row['p_student']:.3f} student; {fate})"


# ----------------------------------------------------------------------------------------------- plots
def plot(numbers: dict):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for group, colour in (("harmful", "tab:red"), ("harmless", "tab:blue")):
        values = numbers[group]["log_ratio_values"]
        if values:
            axes[0].hist(values, bins=50, alpha=0.5, color=colour, label=f"{group} ({len(values)} token-positions)")
    axes[0].axvline(-1.0, color="k", ls="--", label="p_t/e (minimiser of the paper's term)")
    axes[0].axvline(0.0, color="k", label="p_t (teacher)")
    axes[0].set(title="Where S tokens sit: log(p_student / p_teacher)", xlabel="log ratio (nats); p_t > 1e-3 only",
                ylabel="token-positions (count)")
    axes[0].legend(fontsize=7)
    hows = ("paper", "renorm", "binned")
    x = torch.arange(len(hows)).float()
    for offset, (group, colour) in zip((-0.2, 0.2), (("harmful", "tab:red"), ("harmless", "tab:blue")), strict=True):
        axes[1].bar(x + offset, [numbers[group][h]["frac_negative"] or 0 for h in hows], width=0.4, color=colour,
                    label=group)
    axes[1].set(title="Positions where the restricted loss is negative", xticks=x.tolist(), xticklabels=hows,
                xlabel="restriction", ylabel="fraction of answer positions")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, samples: int = 2, max_new_tokens: int = 24, seed: int = 0,
            scored: dict[str, Scored] | None = None) -> dict:
    scored = scored or score_groups(inputs, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    numbers = {g: geometry_numbers(s.student, s.teacher, s.mask, inputs.safety_ids) for g, s in scored.items()}
    out = Writer(inputs.run, "loss_geometry")
    out.figure("loss_geometry.png", plot(numbers))
    names = inputs.tokenizer.convert_ids_to_tokens(list(range(scored["harmful"].student.shape[-1])))
    harmful = scored["harmful"]
    first = first_position(harmful.student, harmful.teacher, inputs.safety_ids, names, base=harmful.base)
    h = numbers["harmful"]
    headline = {"harmful_first_token_mass_S_student": first["mass_S_student"],
                "harmful_first_token_mass_S_teacher": first["mass_S_teacher"],
                "harmful_first_token_mass_S_teacher_over_e": first["mass_S_fixed_point"],
                "harmful_first_token_student_top": f"{first['student_top'][0]['token']!r} "
                                           f"({first['student_top'][0]['p_student']:.3f}, "
                                           f"{'in' if first['student_top'][0]['in_S'] else 'not in'} S)",
                # the harmful sample mixes refused and gap prompts: the base's refusal opener and its compliance one
                "harmful_first_token_base_top": "; ".join(map(describe_base_top, first["base_top"][:2])),
                "paper_frac_negative_harmful": h["paper"]["frac_negative"],
                "renorm_frac_negative_harmful": h["renorm"]["frac_negative"],
                "binned_frac_negative_harmful": h["binned"]["frac_negative"],
                "frac_S_between_pt_over_e_and_pt_weighted": h["frac_between_teacher_weighted"],
                "frac_S_below_pt_over_e_weighted": h["frac_below_pt_over_e_teacher_weighted"],
                "frac_S_above_pt_weighted": h["frac_above_pt_teacher_weighted"], "e": round(math.e, 6)}
    result = {"name": "loss_geometry", "title": "Loss geometry (paper vs renorm vs binned)", "headline": headline,
              "groups": numbers, "first_token_harmful": {
                  **first, "prompts": "the analysis sample of held-out harmful prompts (refused and gap categories), "
                                      "one student-sampled answer each; mean over rows"}}
    out.json("loss_geometry.json", result)
    return {**result, "files": out.files}


__all__ = ["analyze", "describe_base_top", "first_position", "geometry_numbers", "zones"]
