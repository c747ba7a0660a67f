"""Answer openers: the first answer token, where a chat model decides to refuse or to comply.

The paper's loss pulls every safety token v in S towards p_teacher(v)/e and reaches tokens outside S only through the
softmax normaliser. Whether it can demote the base model's compliance opener ("Sure.") is therefore known before
training: is that opener in S? `opener_report` answers it on the training prompts (RUN/train/openers.json).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from safesteer_interp.teacher import Teacher


@torch.no_grad()
def first_token_probs(teacher: Teacher, instructions: Sequence[str], batch_size: int = 32,
                      ) -> tuple[Float[Tensor, " vocab"], Float[Tensor, " vocab"]]:
    """Mean next-token distribution after the generation prompt: (base model, steered teacher), over the prompts."""
    base, steered = 0.0, 0.0
    for i in range(0, len(instructions), batch_size):
        batch = teacher.base_encode(instructions[i:i + batch_size])
        base = base + teacher.base_logits(batch, last=1)[:, -1].float().softmax(-1).sum(0).cpu()
        batch = teacher.encode(instructions[i:i + batch_size])
        width = batch.input_ids.shape[1]  # the whole block is prompt: "prompt"/"last" steer as in generation
        steered = steered + teacher.logits(batch, last=1, prompt_length=width)[:, -1].float().softmax(-1).sum(0).cpu()
    return base / len(instructions), steered / len(instructions)


def opener_rows(p_base: Float[Tensor, " vocab"], p_teacher: Float[Tensor, " vocab"], ids: Int[Tensor, " k"] | None,
                names: Sequence[str], top: int = 5, rank_by: str = "base") -> list[dict]:
    """The `top` first tokens of the base model (or of the teacher), each with both probabilities and whether S holds
    it; an S token's `paper_target` is p_teacher/e, where the paper's loss settles it."""
    in_s = torch.zeros_like(p_base, dtype=torch.bool)
    if ids is not None:
        in_s[ids.cpu()] = True
    ranked = p_base if rank_by == "base" else p_teacher
    return [{"token": names[i], "p_base": round(float(p_base[i]), 6), "p_teacher": round(float(p_teacher[i]), 6),
             "in_S": bool(in_s[i]), "paper_target": round(float(p_teacher[i]) / math.e, 6) if in_s[i] else None}
            for i in ranked.topk(min(top, ranked.numel())).indices.tolist()]


MIN_SHARE = 0.1  # a base opener below this first-token share is not worth a warning


def uncontrolled(rows: Sequence[dict], min_share: float = MIN_SHARE) -> list[dict]:
    """Openers the paper loss cannot demote: outside S, used by the base (>= min_share), avoided by the teacher."""
    return [r for r in rows if not r["in_S"] and r["p_base"] >= min_share and r["p_teacher"] < r["p_base"]]


def opener_report(teacher: Teacher, instructions: Sequence[str], ids: Int[Tensor, " k"] | None,
                  top: int = 5, restrict: str = "paper") -> dict:
    """openers.json: the base's first tokens on the training prompts, the teacher's, and which of them S holds.

    The note (openers outside S) is for `paper` and `renorm`, whose loss has no term for the rest of the vocabulary;
    `binned` pulls the rest-of-vocabulary bucket to the teacher's, which demotes such openers together.
    """
    p_base, p_teacher = first_token_probs(teacher, instructions)
    names = teacher.tokenizer.convert_ids_to_tokens(list(range(p_base.numel())))
    rows = opener_rows(p_base, p_teacher, ids, names, top)
    teacher_rows = opener_rows(p_base, p_teacher, ids, names, top, rank_by="teacher")
    missing = uncontrolled(rows) if ids is not None and restrict in ("paper", "renorm") else []
    note = None
    if missing:
        listed = ", ".join(f"{r['token']!r} (base {r['p_base']:.2f}, teacher {r['p_teacher']:.2f})" for r in missing)
        note = (f"first answer token on the training prompts, not in S: {listed}. The {restrict} loss has no term for "
                "tokens outside S"
                + (" (each S token goes to p_teacher/e, the rest only shrinks together)" if restrict == "paper" else "")
                + ", so these openers can stay above the refusal opener (train/openers.json; analyze --only "
                  "loss_geometry)")
    return {"prompts": len(instructions), "what": "mean first-answer-token probabilities over the training prompts",
            "fields": {"p_base": "probability under the base model (no steering, adapters off)",
                       "p_teacher": "probability under the steered teacher", "in_S": "the token is in the safety set S",
                       "paper_target": "p_teacher / e: where the paper loss settles an S token (null outside S)",
                       "uncontrolled_openers": f"base openers (p_base >= {MIN_SHARE}) outside S that the teacher "
                                               f"avoids; listed for the paper and renorm losses only (this run: "
                                               f"{restrict})"},
            "base_top": rows, "teacher_top": teacher_rows, "uncontrolled_openers": missing, "note": note,
            "mass_S_base": None if ids is None else round(float(p_base[ids.cpu()].sum()), 6),
            "mass_S_teacher": None if ids is None else round(float(p_teacher[ids.cpu()].sum()), 6)}


__all__ = ["first_token_probs", "opener_report", "opener_rows", "uncontrolled"]
