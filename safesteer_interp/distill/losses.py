"""Per-token divergences between student and teacher next-token distributions, optionally restricted to a token set.

A restriction maps the two full-vocabulary log-prob tensors onto a few "bins" (all tokens, the tokens of a set S,
or S plus one rest-of-vocabulary bucket); a divergence then sums over the bins. Losses are reduced like the
reference: mean over each sequence's loss positions, then mean over sequences (every answer weighs the same).
"""

from __future__ import annotations

import math

import torch
from einops import repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.scoring import reverse_kl  # KL(s || t): mode-seeking, the student's mass weighs the error
from safesteer_interp.distill.variants import DIVERGENCES, RESTRICTS, VOCABS, Divergence, Restrict, Vocab
from safesteer_interp.errors import SafeSteerError


# ----------------------------------------------------------------------------------------------- token sets
def token_index(teacher_logp: Float[Tensor, "batch pos vocab"], vocab: Vocab,
                safety_ids: Int[Tensor, " k"] | None = None, top_k: int = 50) -> Int[Tensor, "batch pos k"] | None:
    """The token set of every position: None for the full vocabulary, the teacher's top-K, or the global set S."""
    if vocab == "full":
        return None
    if vocab == "topk":
        if not 0 < top_k <= teacher_logp.shape[-1]:
            raise SafeSteerError(f"--top-k {top_k} must be in 1..{teacher_logp.shape[-1]} (the vocabulary size)")
        return teacher_logp.topk(top_k, dim=-1).indices
    if vocab == "safe":
        if safety_ids is None or safety_ids.numel() == 0:
            raise SafeSteerError("--vocab safe needs a non-empty safety-token set S")
        batch, pos = teacher_logp.shape[:2]
        return repeat(safety_ids.to(teacher_logp.device), "k -> batch pos k", batch=batch, pos=pos)
    raise SafeSteerError(f"unknown vocabulary mode '{vocab}'; choose from {', '.join(VOCABS)}")


def _rest_logmass(logp: Float[Tensor, "batch pos vocab"],
                  index: Int[Tensor, "batch pos k"]) -> Float[Tensor, "batch pos 1"]:
    # log of the mass outside the set, as a logsumexp over the complement: exact even when the set holds
    # 1 - 1e-9 of the mass (log1p(-mass) would round to -inf in float32). The fill is finite, not -inf, so that
    # an empty complement gives a finite, zero-mass bucket and no NaN gradients.
    outside = logp.scatter(-1, index, torch.finfo(logp.dtype).min)
    return outside.logsumexp(-1, keepdim=True)


def restrict(student_logp: Float[Tensor, "batch pos vocab"], teacher_logp: Float[Tensor, "batch pos vocab"],
             index: Int[Tensor, "batch pos k"] | None, how: Restrict = "paper",
             ) -> tuple[Float[Tensor, "batch pos bins"], Float[Tensor, "batch pos bins"]]:
    """Both log-prob tensors on the bins of a restriction.

    paper:  log-probs of the tokens in the set, from the full softmax (unnormalised; the published method).
    renorm: the same, renormalised within the set (proper distributions on S; the reference's unwired flag).
    binned: the set plus one rest-of-vocabulary bucket (proper distributions on |S|+1 bins; ours).
    """
    if how not in RESTRICTS:
        raise SafeSteerError(f"unknown restriction '{how}'; choose from {', '.join(RESTRICTS)}")
    if index is None:  # full vocabulary: every variant is the plain full-vocabulary divergence
        return student_logp, teacher_logp
    s, t = student_logp.gather(-1, index), teacher_logp.gather(-1, index)
    if how == "renorm":
        return s - s.logsumexp(-1, keepdim=True), t - t.logsumexp(-1, keepdim=True)
    if how == "binned":
        return (torch.cat([s, _rest_logmass(student_logp, index)], -1),
                torch.cat([t, _rest_logmass(teacher_logp, index)], -1))
    return s, t


# ----------------------------------------------------------------------------------------------- divergences
def forward_kl(s: Float[Tensor, "batch pos bins"], t: Float[Tensor, "batch pos bins"]) -> Float[Tensor, "batch pos"]:
    """sum_v p_t(v) (log p_t(v) - log p_s(v)): mass-covering."""
    return (t.exp() * (t - s)).sum(-1)


def generalized_jsd(s: Float[Tensor, "batch pos bins"], t: Float[Tensor, "batch pos bins"],
                    alpha: float = 0.5) -> Float[Tensor, "batch pos"]:
    """alpha KL(p_t || m) + (1 - alpha) KL(p_s || m) with m = (1 - alpha) p_s + alpha p_t (the reference's form).

    Like the reference, alpha = 1 means reverse KL and alpha = 0 forward KL (the mixture form itself vanishes at
    both ends, so the ends are the plain KLs).
    """
    if not 0.0 <= alpha <= 1.0:
        raise SafeSteerError(f"--alpha {alpha} must be in [0, 1]")
    if alpha == 1.0:
        return reverse_kl(s, t)
    if alpha == 0.0:
        return forward_kl(s, t)
    m = torch.stack([s + math.log(1 - alpha), t + math.log(alpha)]).logsumexp(0)  # log of the mixture, stably
    return alpha * (t.exp() * (t - m)).sum(-1) + (1 - alpha) * (s.exp() * (s - m)).sum(-1)


def divergence(s: Float[Tensor, "batch pos bins"], t: Float[Tensor, "batch pos bins"], kind: Divergence = "reverse",
               alpha: float = 0.5) -> Float[Tensor, "batch pos"]:
    if kind == "reverse":
        return reverse_kl(s, t)
    if kind == "forward":
        return forward_kl(s, t)
    if kind == "jsd":
        return generalized_jsd(s, t, alpha)
    raise SafeSteerError(f"unknown divergence '{kind}'; choose from {', '.join(DIVERGENCES)}")


def token_loss(student_logp: Float[Tensor, "batch pos vocab"], teacher_logp: Float[Tensor, "batch pos vocab"], *,
               vocab: Vocab = "safe", kind: Divergence = "reverse", how: Restrict = "paper",
               safety_ids: Int[Tensor, " k"] | None = None, top_k: int = 50, alpha: float = 0.5,
               ) -> Float[Tensor, "batch pos"]:
    """The per-position loss l_t. With vocab='safe', how='paper', kind='reverse' this is SafeSteer's published loss,
    sum_{v in S} p_s(v) log(p_s(v)/p_t(v)), which is a partial sum and can be negative (each term is minimised at
    p_s(v) = p_t(v)/e, not at p_s = p_t); 'binned' is a true divergence, >= 0 with equality iff the binned
    distributions agree."""
    index = token_index(teacher_logp, vocab, safety_ids, top_k)
    s, t = restrict(student_logp, teacher_logp, index, how)
    return divergence(s, t, kind, alpha)


# ----------------------------------------------------------------------------------------------- reduction
def loss_window(answer_mask: Bool[Tensor, "batch pos"], skip: int = 0, keep: int = 0) -> Bool[Tensor, "batch pos"]:
    """Answer positions counted by the loss: index in [skip, keep) within each answer (keep = 0: no upper bound)."""
    if skip < 0 or keep < 0 or (keep and keep <= skip):
        raise SafeSteerError(f"loss window skip={skip}, keep={keep} is empty or negative; need 0 <= skip < keep "
                             "(or keep = 0 for no upper bound)")
    index = answer_mask.long().cumsum(-1) - 1  # answers are contiguous, so this is the position within the answer
    inside = index >= skip
    if keep:
        inside &= index < keep
    return answer_mask & inside


def sequence_means(per_token: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, " batch"]:
    """Mean of each sequence's masked positions (an empty mask gives 0, as the reference's max(1, count))."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def reduce_loss(per_token: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
                n_sequences: int | None = None) -> Float[Tensor, ""]:
    """Sum of per-sequence means divided by `n_sequences` (default: this batch's size).

    Passing the number of sequences of a whole optimizer step makes micro-batch losses add up to the step's
    batch mean, however the step is split for gradient accumulation.
    """
    return sequence_means(per_token, mask).sum() / (n_sequences or per_token.shape[0])


__all__ = ["divergence", "forward_kl", "generalized_jsd", "loss_window",
           "reduce_loss", "restrict", "reverse_kl", "sequence_means", "token_index", "token_loss"]
