"""What one distillation step did, in numbers: the per-step record of RUN/train/metrics.jsonl.

Sums are accumulated over micro-batches and, under DDP, over processes, then divided once, so a record means the
same thing however the step was split. KL estimates use the sampled tokens (k3, cheap and unbiased) and the full
vocabulary (exact); the safety-token columns say how much of either distribution and of the KL lives on S
(`kl_share_S` is negative while the student under-weights S: the per-token reverse-KL terms there are negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from safesteer_interp.core.generation import Generation
from safesteer_interp.distill.losses import reverse_kl

SUMS = ("tokens", "kl_k3", "kl_full", "kl_on_S", "mass_S_student", "mass_S_teacher", "entropy", "sequences",
        "first_mass_S_student", "first_mass_S_teacher", "length", "finished")


@dataclass
class StepStats:
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUMS, 0.0))
    lengths: list[int] = field(default_factory=list)
    loss: float = 0.0  # already a batch mean (micro-batch losses are pre-divided by the step's sequence count)
    anchor_loss: float = 0.0
    anchor: bool = False  # the anchor baseline is on (its loss is logged even when it is exactly 0)
    has_s: bool = False

    def add(self, part: dict) -> None:
        self.has_s |= part.pop("has_s")
        self.lengths += part.pop("lengths")
        for key, value in part.items():
            self.sums[key] += value

    def summary(self, accelerator=None) -> dict:
        keys = list(SUMS) + ["loss", "anchor_loss", "len_min", "len_max"]
        values = torch.tensor([self.sums[k] for k in SUMS] + [self.loss, self.anchor_loss,
                                                              -min(self.lengths), max(self.lengths)],
                              dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            device = accelerator.device
            summed = accelerator.reduce(values[:-2].to(device), "sum").cpu()
            extremes = accelerator.reduce(values[-2:].to(device), "max").cpu()  # max of -min is -min of min
            values = torch.cat([summed, extremes])
            values[len(SUMS):len(SUMS) + 2] /= accelerator.num_processes  # losses: mean over processes, as DDP grads
        s = dict(zip(keys, values.tolist(), strict=True))
        tokens, seqs = max(s["tokens"], 1.0), max(s["sequences"], 1.0)
        record = {"loss": s["loss"], "kl_k3": s["kl_k3"] / tokens, "kl_full": s["kl_full"] / tokens,
                  "entropy": s["entropy"] / tokens, "len_mean": s["length"] / seqs, "len_min": int(-s["len_min"]),
                  "len_max": int(s["len_max"]), "finished": s["finished"] / seqs, "tokens": int(s["tokens"]),
                  "sequences": int(s["sequences"])}
        if self.anchor:
            record["anchor_loss"] = s["anchor_loss"]
        if self.has_s:
            record.update(mass_S_student=s["mass_S_student"] / tokens, mass_S_teacher=s["mass_S_teacher"] / tokens,
                          first_mass_S_student=s["first_mass_S_student"] / seqs,
                          first_mass_S_teacher=s["first_mass_S_teacher"] / seqs,
                          kl_share_S=s["kl_on_S"] / s["kl_full"] if s["kl_full"] else 0.0)
        return record


@torch.no_grad()
def rollout_stats(student_logp: Float[Tensor, "batch pos vocab"], teacher_logp: Float[Tensor, "batch pos vocab"],
                  rollout: Generation, mask: Bool[Tensor, "batch pos"], safety_ids: Tensor | None,
                  eos_ids: Sequence[int], rows_per_chunk: int = 1) -> dict:
    """Sums over the loss positions of one micro-batch (see `StepStats.summary` for the means).

    The full-vocabulary terms (reverse KL, entropy, mass on S) are built `rows_per_chunk` sequences at a time: at
    152k tokens x 512 positions each temporary is 0.3 GB per sequence, 5 GB for a micro-batch of 16.
    """
    m = mask.to(student_logp.dtype)
    sampled = rollout.answers.unsqueeze(-1)
    log_ratio = (teacher_logp.gather(-1, sampled) - student_logp.gather(-1, sampled)).squeeze(-1)
    k3 = log_ratio.exp() - 1 - log_ratio  # unbiased for KL(student || teacher) under student samples, always >= 0
    lengths = rollout.answer_mask.sum(-1)
    eos = torch.tensor(list(eos_ids), device=rollout.answers.device)
    finished = (torch.isin(rollout.answers, eos) & rollout.answer_mask).any(-1)
    sums = dict.fromkeys(("kl_full", "entropy", "kl_on_S", "mass_S_student", "mass_S_teacher"), 0.0)
    first_s, first_t = 0.0, 0.0
    ids = None if safety_ids is None else safety_ids.to(student_logp.device)
    for start in range(0, student_logp.shape[0], rows_per_chunk):
        s, t, w = (x[start:start + rows_per_chunk] for x in (student_logp, teacher_logp, m))
        p = s.exp()
        sums["kl_full"] += float((reverse_kl(s, t) * w).sum())
        sums["entropy"] += float((-(p * s).sum(-1) * w).sum())
        if ids is not None:
            mass_s, mass_t = p[..., ids].sum(-1), t[..., ids].exp().sum(-1)
            sums["kl_on_S"] += float((reverse_kl(s[..., ids], t[..., ids]) * w).sum())  # the `paper` loss's terms
            sums["mass_S_student"] += float((mass_s * w).sum())
            sums["mass_S_teacher"] += float((mass_t * w).sum())
            first_s, first_t = first_s + float(mass_s[:, 0].sum()), first_t + float(mass_t[:, 0].sum())
    part = {"tokens": float(m.sum()), "kl_k3": float((k3 * m).sum()), "kl_full": sums["kl_full"],
            "entropy": sums["entropy"], "sequences": float(len(rollout)), "length": float(lengths.sum()),
            "finished": float(finished.sum()), "lengths": lengths.tolist(), "has_s": safety_ids is not None}
    if ids is not None:
        part.update(kl_on_S=sums["kl_on_S"], mass_S_student=sums["mass_S_student"],
                    mass_S_teacher=sums["mass_S_teacher"], first_mass_S_student=first_s, first_mass_S_teacher=first_t)
    return part
