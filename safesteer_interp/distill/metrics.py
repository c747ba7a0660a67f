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
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.generation import Generation
from safesteer_interp.core.scoring import reverse_kl

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
def position_sums(s: Float[Tensor, "*rows vocab"], t: Float[Tensor, "*rows vocab"], sampled: Int[Tensor, " *rows"],
                  weight: Float[Tensor, " *rows"], first: Bool[Tensor, " *rows"], ids: Tensor | None) -> dict:
    """The per-position sums of some answer positions: student and teacher log-probs `s`, `t` there, the sampled
    tokens, the loss-window weight of each position (1 inside, 0 outside) and which are first answer positions."""
    log_ratio = (t.gather(-1, sampled[..., None]) - s.gather(-1, sampled[..., None]))[..., 0]
    k3 = log_ratio.exp() - 1 - log_ratio  # unbiased for KL(student || teacher) under student samples, always >= 0
    p = s.exp()
    kl, entropy = torch.linalg.vecdot(p, s - t), -torch.linalg.vecdot(p, s)  # row dot products: fewer [.., vocab] temps
    sums = {"tokens": float(weight.sum()), "kl_k3": float((k3 * weight).sum()),
            "kl_full": float((kl * weight).sum()), "entropy": float((entropy * weight).sum())}
    if ids is not None:
        mass_s, mass_t = p[..., ids].sum(-1), t[..., ids].exp().sum(-1)
        sums.update(kl_on_S=float((reverse_kl(s[..., ids], t[..., ids]) * weight).sum()),  # the `paper` loss's terms
                    mass_S_student=float((mass_s * weight).sum()), mass_S_teacher=float((mass_t * weight).sum()),
                    first_mass_S_student=float(mass_s[first].sum()), first_mass_S_teacher=float(mass_t[first].sum()))
    return sums


def rollout_sums(rollout: Generation, eos_ids: Sequence[int], has_s: bool) -> dict:
    """The per-answer sums: sequences, lengths (up to and including EOS) and how many answers ended."""
    lengths = rollout.answer_mask.sum(-1)
    eos = torch.tensor(list(eos_ids), device=rollout.answers.device)
    finished = (torch.isin(rollout.answers, eos) & rollout.answer_mask).any(-1)
    return {"sequences": float(len(rollout)), "length": float(lengths.sum()), "finished": float(finished.sum()),
            "lengths": lengths.tolist(), "has_s": has_s}


def add_sums(total: dict, part: dict) -> dict:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value
    return total


@torch.no_grad()
def rollout_stats(student_logp: Float[Tensor, "batch pos vocab"], teacher_logp: Float[Tensor, "batch pos vocab"],
                  rollout: Generation, mask: Bool[Tensor, "batch pos"], safety_ids: Tensor | None,
                  eos_ids: Sequence[int], rows_per_chunk: int = 1) -> dict:
    """Sums over the loss positions of one micro-batch from full log-prob tensors (see `StepStats.summary` for the
    means); `rows_per_chunk` sequences at a time. The step itself adds `position_sums` chunk by chunk as it goes
    (`distill.vocab_pass`), without ever holding these tensors."""
    ids = None if safety_ids is None else safety_ids.to(student_logp.device)
    first = torch.zeros_like(mask)
    first[:, 0] = True
    part = rollout_sums(rollout, eos_ids, safety_ids is not None)
    for start in range(0, student_logp.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        add_sums(part, position_sums(student_logp[rows], teacher_logp[rows], rollout.answers[rows],
                                     mask[rows].to(student_logp.dtype), first[rows], ids))
    return part
