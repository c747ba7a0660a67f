"""Harmless KL drift: how far a policy moved from the base model where it should not have moved at all.

The base model answers harmless prompts greedily; both policies then score those very tokens (teacher forcing) and
the drift is the mean over answer tokens of KL(policy || base) = sum_v p(v) (log p(v) - log p_base(v)) at every
position that predicts an answer token (EOS included). 0 for the base itself; the steered teacher drifts far.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.generation import Generation, decode_answers, generate
from safesteer_interp.core.scoring import answer_logprobs, reverse_kl
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.policies import Policy


@dataclass(frozen=True)
class Drift:
    """Mean per-token KL(policy || base) on the base's greedy harmless answers, with what it was measured on."""

    harmless_kl: float  # token-weighted mean over all answers (nats per token)
    per_prompt: list[float]  # mean over each answer's tokens
    n_tokens: int
    base_answers: list[str]


@torch.no_grad()
def policy_logprobs(policy: Policy, generation: Generation) -> Float[Tensor, "batch new vocab"]:
    """log p(next token) of `policy` at every position that predicts an answer token (float32)."""
    with policy.scoring(generation.sequences, generation.prompt_length):
        return answer_logprobs(policy.model, generation)


def token_kl(policy_logp: Float[Tensor, "batch new vocab"], base_logp: Float[Tensor, "batch new vocab"],
             mask: Bool[Tensor, "batch new"]) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """(sum of per-token KL(policy || base), number of tokens) per answer, over the masked positions."""
    kl = reverse_kl(policy_logp, base_logp.to(policy_logp.device))  # reverse_kl(s, t) is KL(s || t)
    m = mask.to(kl.device, kl.dtype)
    return (kl * m).sum(-1), m.sum(-1)


def base_answers(base: Policy, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                 system: str | None = None, memo: dict | None = None) -> list[Generation]:
    """The base's greedy answers to `prompts`, batch by batch: what every policy's drift is measured on.

    memo: a dict shared by the models of one evaluation (`evaluate_run`): the answers are generated once for all of
    them, the same batches and so the same tokens."""
    key = (id(base.model), base.label, tuple(prompts), max_new_tokens, batch_size, system)
    if memo is not None and key in memo:
        return memo[key]
    generations = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(base.tokenizer, list(prompts[start:start + batch_size]), system)
        with base.active():
            generations.append(generate(base.model, base.tokenizer, batch, max_new_tokens=max_new_tokens))
    if memo is not None:
        memo[key] = generations
    return generations


def base_logprobs(base: Policy, generation: Generation, memo: dict | None) -> Float[Tensor, "batch new vocab"]:
    """The base's log-probs on one batch of its own answers, computed once per evaluation when `memo` is shared:
    every model of a run is measured against the same base on the same answers (float32, on the CPU: 0.6 GB per 16
    answers of 64 tokens over a 152k vocabulary)."""
    key = ("base_logprobs", id(base.model), base.label, id(generation))
    if memo is None:
        return policy_logprobs(base, generation)
    if key not in memo:
        memo[key] = policy_logprobs(base, generation).cpu()
    return memo[key]


def harmless_kl(policy: Policy, base: Policy, prompts: Sequence[str], *, max_new_tokens: int = 32,
                batch_size: int = 16, system: str | None = None, memo: dict | None = None) -> Drift:
    """KL(policy || base) per token on the base's greedy answers to `prompts` (see the module docstring); `memo`
    shares those answers between the policies of one evaluation (`base_answers`)."""
    if not prompts:
        raise SafeSteerError("harmless KL needs at least one harmless prompt")
    sums, counts, answers = [], [], []
    for generation in base_answers(base, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   system=system, memo=memo):
        mask = generation.answer_mask
        kl_sum, n = token_kl(policy_logprobs(policy, generation), base_logprobs(base, generation, memo), mask)
        sums.append(kl_sum.cpu())
        counts.append(n.cpu())
        answers += decode_answers(base.tokenizer, generation)
    total, tokens = torch.cat(sums), torch.cat(counts)
    per_prompt = (total / tokens.clamp(min=1)).tolist()
    mean = float(total.sum() / tokens.sum().clamp(min=1))
    return Drift(mean, per_prompt, int(tokens.sum()), answers)


__all__ = ["Drift", "base_answers", "base_logprobs", "harmless_kl", "policy_logprobs", "token_kl"]
