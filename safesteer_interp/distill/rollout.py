"""On-policy rollouts: the student samples answers, then any model scores exactly those tokens (teacher forcing).

A rollout is a left-padded prompt block followed by right-padded answers. Scoring reuses the sampler's attention
mask and cumulative position ids, so the student's scores are the very distributions it sampled from, and the
logits at column c predict the token at column c + 1 (only the answer span is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.chat import encode_prompts, position_ids_from_mask
from safesteer_interp.core.generation import generate


@dataclass(frozen=True)
class Rollout:
    """Sampled answers with their prompts; `answers`/`answer_mask` are the answer columns only."""

    sequences: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    prompt_length: int
    prompt_index: Int[Tensor, " batch"]  # which prompt (of the step) each row answers

    @property
    def answers(self) -> Int[Tensor, "batch new"]:
        return self.sequences[:, self.prompt_length:]

    @property
    def answer_mask(self) -> Bool[Tensor, "batch new"]:
        return self.attention_mask[:, self.prompt_length:].bool()  # generated tokens up to and incl. the first EOS

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def rows(self, start: int, stop: int) -> Rollout:
        """A micro-batch, trimmed of columns that are padding in every row (exact: positions come from the mask)."""
        mask = self.attention_mask[start:stop]
        used = mask.bool().any(0)
        first = int(used[:self.prompt_length].long().argmax())
        last = int(used.nonzero().max()) + 1
        return Rollout(self.sequences[start:stop, first:last], mask[:, first:last], self.prompt_length - first,
                       self.prompt_index[start:stop])


@torch.no_grad()
def sample_rollout(model, tokenizer, instructions: Sequence[str], *, samples: int, max_new_tokens: int,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Rollout:
    """`samples` answers per instruction from the model as it is now (pure temperature sampling, top_k = 0)."""
    was_training = model.training
    model.eval()  # sampling never sees dropout or gradient checkpointing
    try:
        batch = encode_prompts(tokenizer, instructions)
        out = generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, do_sample=True,
                       temperature=temperature, top_p=top_p, num_return_sequences=samples, seed=seed)
    finally:
        model.train(was_training)
    index = torch.arange(len(instructions), device=out.sequences.device).repeat_interleave(samples)
    return Rollout(out.sequences, out.attention_mask, out.prompt_length, index)


def answer_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> Float[Tensor, "batch new vocab"]:
    """Full-vocabulary log-probs of the next token at every answer position (row t predicts answers[:, t]).

    Only the logits that predict answer tokens are computed (`logits_to_keep`), which is what makes scoring long
    prompts with large vocabularies affordable; they are upcast to float32 before the softmax.
    """
    n_new = rollout.sequences.shape[1] - rollout.prompt_length
    mask = rollout.attention_mask
    logits = model(input_ids=rollout.sequences, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, logits_to_keep=n_new + 1).logits
    return torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)


__all__ = ["Rollout", "answer_logprobs", "sample_rollout"]
