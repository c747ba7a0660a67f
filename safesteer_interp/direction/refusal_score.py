"""The refusal score: log-odds that a model's first answer token opens a refusal.

Refusal openers are not hand-written per model family: they are read off the model itself, as the first tokens of
its greedy answers to harmful prompts that the refusal judge marks as refusals (an override list is accepted).
score(x) = log P_ref - log(1 - P_ref), with P_ref the next-token probability mass on those tokens after prompt x.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.generation import GreedyAnswers
from safesteer_interp.core.scoring import next_token_logprobs
from safesteer_interp.errors import SafeSteerError


@dataclass(frozen=True)
class RefusalTokens:
    ids: list[int]
    tokens: list[str]
    source: str  # "derived" (from the model's refusals), "override" or "judge-openers" (the latent path)
    counts: dict[str, int]  # how many judged refusals opened with each token


class NoRefusals(SafeSteerError):
    """The model refused none of the harmful prompts: its refusal tokens cannot be read off its own answers."""


def derive_refusal_tokens(model, tokenizer, harmful: Sequence[str], judge, *, max_new_tokens: int = 24,
                          min_share: float = 0.05, batch_size: int = 64,
                          answers: GreedyAnswers | None = None) -> RefusalTokens:
    """First tokens of the model's greedy refusals to `harmful` (each kept if it opens >= min_share of them);
    `answers`: a stage's memo of the unedited model's greedy answers (else generated here)."""
    answers = answers or GreedyAnswers(model, tokenizer, max_new_tokens, batch_size)
    firsts: Counter[int] = Counter(first for first, text in answers.rows(harmful) if judge.is_refusal(text))
    total = sum(firsts.values())
    if total == 0:
        raise NoRefusals(f"the model refused none of {len(harmful)} harmful prompts, so no refusal tokens can be "
                             "derived; pass them with --refusal-tokens (e.g. 'I,Sorry')")
    ids = [i for i, n in firsts.most_common() if n / total >= min_share]
    return RefusalTokens(ids, tokenizer.convert_ids_to_tokens(ids), "derived",
                         {tokenizer.convert_ids_to_tokens(i): n for i, n in firsts.most_common()})


def refusal_tokens_from_strings(tokenizer, words: Sequence[str]) -> RefusalTokens:
    """An override list: each entry must be exactly one token of the vocabulary."""
    ids = []
    for word in words:
        found = tokenizer.convert_tokens_to_ids(word)
        if found is None or found == tokenizer.unk_token_id:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise SafeSteerError(f"refusal token '{word}' is not a single token of this tokenizer "
                                     f"(it encodes to {len(encoded)} tokens); pass single tokens")
            found = encoded[0]
        ids.append(int(found))
    return RefusalTokens(ids, tokenizer.convert_ids_to_tokens(ids), "override", {})


def judge_openers(tokenizer, phrases: Sequence[str]) -> RefusalTokens:
    """The first token of each refusal phrase of the judge ("I'm sorry" -> "I", "As an AI" -> "As"), as an answer
    would open with it: refusal tokens for a model that has no refusals of its own to read them from."""
    firsts = (tokenizer(phrase, add_special_tokens=False)["input_ids"][:1] for phrase in phrases)
    ids = list(dict.fromkeys(first[0] for first in firsts if first and first[0] != tokenizer.unk_token_id))
    if not ids:
        raise SafeSteerError("none of the judge's refusal phrases starts with a token of this vocabulary; pass "
                             "--refusal-tokens")
    return RefusalTokens(ids, tokenizer.convert_ids_to_tokens(ids), "judge-openers", {})


def log_odds(probs: Float[Tensor, "batch vocab"], ids: Sequence[int], eps: float = 1e-8) -> Float[Tensor, " batch"]:
    """log P_ref - log(1 - P_ref), in float64 (the reference's formula, eps 1e-8)."""
    p_ref = probs[:, list(ids)].sum(-1)
    return torch.log(p_ref + eps) - torch.log(1 - p_ref + eps)


def refusal_scores(model, tokenizer, instructions: Sequence[str], ids: Sequence[int],
                   **kwargs) -> Float[Tensor, " batch"]:
    """Per-prompt refusal log-odds under whatever hooks are active."""
    return log_odds(next_token_logprobs(model, tokenizer, instructions, **kwargs).exp(), ids)
