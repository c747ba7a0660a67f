"""The refusing-answer direction: where the residual stream sits *while the model is refusing*, read inside answers.

Stage 1's direction is read at the end of the prompt, where the model decides; after a compliant prefix it fades
and adding it no longer brings a refusal back (`deepen`). This one is a difference in means over the first answer
tokens, teacher-forced on the same harmful prompts: a refusal continuation minus a compliant continuation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.chat import encode_texts, first_tokens, render_prompts
from safesteer_interp.core.hooks import cache_activations
from safesteer_interp.errors import SafeSteerError


@torch.no_grad()
def mean_answer_resid(model, tokenizer, instructions: Sequence[str], answers: Sequence[str], layers: Sequence[int],
                      *, n_tokens: int = 12, batch_size: int = 16) -> Float[Tensor, "layer d_model"]:
    """Mean `resid_pre` at `layers` over the first `n_tokens` tokens of each teacher-forced answer (float64)."""
    if len(instructions) != len(answers) or not instructions:
        raise SafeSteerError(f"{len(answers)} answers for {len(instructions)} instructions: pass one answer each "
                             "(and at least one)")
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    total, count = torch.zeros(len(layers), model.config.hidden_size, dtype=torch.float64), 0
    with cache_activations(model, names, device="cpu", dtype=torch.float64) as store:
        for start in range(0, len(instructions), batch_size):
            prompts = render_prompts(tokenizer, instructions[start:start + batch_size])
            cut = [first_tokens(tokenizer, a, n_tokens)[0] for a in answers[start:start + batch_size]]
            batch = encode_texts(tokenizer, [p + a for p, a in zip(prompts, cut, strict=True)])
            model(input_ids=batch.input_ids.to(model.device), attention_mask=batch.attention_mask.to(model.device))
            width, lengths = batch.input_ids.shape[1], batch.attention_mask.sum(1).tolist()
            for row, (prompt, length) in enumerate(zip(prompts, lengths, strict=True)):
                begin = width - length + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                for i, name in enumerate(names):  # left padding: the answer is the row's last columns
                    total[i] += store[name][row, begin:].sum(0)
                count += width - begin
    if count == 0:
        raise SafeSteerError("every answer is empty: nothing to average")
    return total / count


def answer_directions(model, tokenizer, instructions: Sequence[str], refusing: Sequence[str],
                      complying: Sequence[str], layers: Sequence[int], *, n_tokens: int = 12,
                      ) -> dict[int, Float[Tensor, " d_model"]]:
    """layer -> mean over refusing answers minus mean over complying answers (raw: its norm is the gap)."""
    gap = (mean_answer_resid(model, tokenizer, instructions, refusing, layers, n_tokens=n_tokens)
           - mean_answer_resid(model, tokenizer, instructions, complying, layers, n_tokens=n_tokens))
    return {layer: gap[i].float() for i, layer in enumerate(layers)}


__all__ = ["answer_directions", "mean_answer_resid"]
