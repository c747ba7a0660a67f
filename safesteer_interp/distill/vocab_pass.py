"""The loss and the step statistics over the vocabulary, a chunk of answer positions at a time.

Logits exist for one chunk at a time: both models' logits are made from final-norm states, give the chunk's share of
the loss (`losses.token_loss`, unchanged: the set S is gathered from the chunk's log-probs) and of the statistics, and
the loss's gradient w.r.t. the student's states (and a trained head) is taken there and then. Backward only scales
those gradients: no [batch, pos, vocab] tensor outlives its chunk, and nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from safesteer_interp.core.anatomy import unembed
from safesteer_interp.core.generation import Generation
from safesteer_interp.core.scoring import logits_from_states
from safesteer_interp.distill.losses import token_loss
from safesteer_interp.distill.metrics import add_sums, position_sums

CHUNK_LOGITS = 6 * 2**20  # logits per chunk and model (24 MiB in float32; 128 positions of a 49k vocabulary)


@dataclass(frozen=True)
class LossSpec:
    """Which loss: `losses.token_loss`'s options, and the sampling temperature the logits are divided by."""

    vocab: str = "safe"
    kind: str = "reverse"
    how: str = "paper"
    safety_ids: Tensor | None = None
    top_k: int = 50
    alpha: float = 0.5
    temperature: float = 1.0


def chunk_loss(s_logits: Float[Tensor, "n vocab"], t_logp: Float[Tensor, "n vocab"],
               spec: LossSpec) -> tuple[Float[Tensor, " n"], Float[Tensor, "n vocab"]]:
    """(per-position loss, student log-probs) of a chunk: student logits (with gradients), teacher log-probs."""
    s_logp = torch.log_softmax(s_logits, -1)  # on CPU torch's fused log-softmax beats a log-sum-exp and a gather
    per_token = token_loss(s_logp[None], t_logp[None], vocab=spec.vocab, kind=spec.kind, how=spec.how,
                           safety_ids=spec.safety_ids, top_k=spec.top_k, alpha=spec.alpha)[0]
    return per_token, s_logp


def _upcast(logits: Tensor, temperature: float) -> Tensor:
    """Logits for the softmax: float32 at least (bf16 under autocast; float64 kept), divided by the temperature (a
    full-vocabulary pass skipped at 1, where it changes nothing)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return logits if temperature == 1.0 else logits / temperature


class _GradientsKnown(torch.autograd.Function):
    """A value whose gradients were computed along with it; backward scales them by the upstream gradient."""

    @staticmethod
    def forward(ctx, run, *inputs):
        value, ctx.gradients = run(*inputs)
        return value

    @staticmethod
    def backward(ctx, upstream):
        return (None, *(upstream * g for g in ctx.gradients))


def vocab_pass(student, teacher, student_states: Float[Tensor, "batch new d_model"],
               teacher_states: Float[Tensor, "batch new d_model"], rollout: Generation, mask: Bool[Tensor, "batch new"],
               n_sequences: int, spec: LossSpec, stats: bool = True) -> tuple[Float[Tensor, ""], dict]:
    """The micro-batch's loss, reduced as `losses.reduce_loss` (per-answer means over `mask`, summed, divided by the
    step's `n_sequences`), and the `metrics.position_sums` of its answer positions (empty without `stats`).

    `student` / `teacher` are the (unwrapped) models whose heads turn the states into logits.
    """
    weight = mask.to(torch.promote_types(student_states.dtype, torch.float32))  # the dtype of the log-probs
    coef = weight / weight.sum(-1, keepdim=True).clamp(min=1) / n_sequences
    keep = mask.clone()
    if stats:
        keep[:, 0] = True  # the first answer position is always counted by the first-token mass statistics
    rows, cols = keep.nonzero(as_tuple=True)
    device = student_states.device
    picked = (rows.to(device), cols.to(device))
    head = [p for p in unembed(student).parameters() if p.requires_grad]  # a trained head (full FT) gets gradients
    sums: dict = {}
    ids = None if spec.safety_ids is None else spec.safety_ids.to(device)
    spec = LossSpec(**{**spec.__dict__, "safety_ids": ids})
    targets = (teacher_states[picked], coef[rows, cols].to(device), weight[rows, cols].to(device),
               (cols == 0).to(device), rollout.answers[rows, cols].to(device))

    def run(states: Tensor, *params: Tensor) -> tuple[Tensor, list[Tensor]]:
        chunk = max(1, CHUNK_LOGITS // max(1, unembed(student).weight.shape[0]))
        grads = [torch.zeros_like(states), *(torch.zeros_like(p) for p in params)]
        total = torch.zeros((), dtype=weight.dtype, device=device)
        for start in range(0, states.shape[0], chunk):
            part = slice(start, start + chunk)
            h = states[part].detach().requires_grad_()
            t_states, c, w, first, sampled = (x[part] for x in targets)
            with torch.no_grad():
                t_logits = logits_from_states(teacher, t_states.to(next(teacher.parameters()).device))
                t_logp = torch.log_softmax(_upcast(t_logits.to(device), spec.temperature), -1)
            with torch.enable_grad():
                s_logits = _upcast(logits_from_states(student, h), spec.temperature)
                per_token, s_logp = chunk_loss(s_logits, t_logp, spec)
                value = (per_token * c).sum()
                found = torch.autograd.grad(value, [h, *params], allow_unused=True)
            total += value.detach()
            grads[0][part] = found[0]
            for g, f in zip(grads[1:], found[1:], strict=True):
                if f is not None:
                    g += f
            if stats:
                add_sums(sums, position_sums(s_logp.detach(), t_logp, sampled, w, first, ids))
        return total, grads

    return _GradientsKnown.apply(run, student_states[picked], *head), sums


__all__ = ["CHUNK_LOGITS", "LossSpec", "chunk_loss", "vocab_pass"]
