"""Scoring: a model's next-token log-probabilities, computed one way for every stage.

A scoring forward runs a left-padded batch with position ids from the attention mask (as `generate` derives them),
keeps only the logits it needs (`logits_to_keep`) and upcasts them before the softmax. Hooks active around a call
apply, so the steered teacher, an ablated model and the student all score through these few functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.chat import ChatBatch, encode_prompts
from safesteer_interp.core.generation import Generation


def forward_logits(model, batch: ChatBatch, last: int | None = None) -> Float[Tensor, "batch pos vocab"]:
    """Logits of `batch` on the model's device; `last=k` keeps only the last k positions (no [pos, vocab] tensor)."""
    device = next(model.parameters()).device
    kwargs = {} if last is None else {"logits_to_keep": last}
    return model(**batch.to(device).inputs(), use_cache=False, **kwargs).logits


@torch.no_grad()
def next_token_logprobs(model, tokenizer, instructions: Sequence[str], *,
                        batch_size: int = 32) -> Float[Tensor, "batch vocab"]:
    """float64 log-probabilities of the first answer token after each chat prompt (on CPU)."""
    out = []
    for start in range(0, len(instructions), batch_size):
        logits = forward_logits(model, encode_prompts(tokenizer, instructions[start:start + batch_size]), last=1)[:, -1]
        out.append(torch.log_softmax(logits.double(), -1).cpu())
    return torch.cat(out)


def answer_logprobs(model, generation: Generation, temperature: float = 1.0) -> Float[Tensor, "batch new vocab"]:
    """float32 log-probs of the next token at every answer position (row t predicts `generation.answers[:, t]`).

    Teacher forcing over prompt + answer columns with the sampler's own mask and positions, so a student scores
    exactly the distributions it sampled from. Only the logits that predict answer tokens are computed: the
    prompt's last column predicts answer token 0, and the final column predicts nothing we score.
    """
    n_new = generation.sequences.shape[1] - generation.prompt_length
    batch = generation.as_batch()
    logits = forward_logits(model, batch, last=n_new + 1)
    return torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)


__all__ = ["answer_logprobs", "forward_logits", "next_token_logprobs"]
