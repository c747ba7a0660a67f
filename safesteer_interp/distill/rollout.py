"""On-policy rollouts: the student samples answers from its current weights, to be scored and used once.

A rollout is a `Generation`: a left-padded prompt block followed by right-padded answers, `samples` consecutive rows
per prompt. Scoring it (`core.scoring.answer_logprobs`) reuses the sampler's attention mask and positions, so the
student's scores are the very distributions it sampled from (up to float rounding: each prompt is prefilled once for
its samples, and a LoRA student samples with merged weights), and the teacher scores exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from safesteer_interp.core.chat import encode_prompts, encode_texts, prefill_lengths, render_prefilled
from safesteer_interp.core.generation import Generation, generate
from safesteer_interp.distill.student import merged_adapters


@torch.no_grad()
def sample_rollout(model, tokenizer, instructions: Sequence[str], *, samples: int, max_new_tokens: int,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                   prefills: Sequence[str] | None = None) -> Generation:
    """`samples` answers per instruction from the model as it is now (pure temperature sampling, top_k = 0).

    `prefills` (one per instruction, "" for none) begin the assistant turn: they join the prompt block, and the
    answer (what is scored and trained) is what the model writes after them; each row records its prefill's length.
    """
    was_training = model.training
    model.eval()  # sampling never sees dropout or gradient checkpointing
    try:
        batch = (encode_prompts(tokenizer, instructions) if prefills is None
                 else encode_texts(tokenizer, render_prefilled(tokenizer, instructions, prefills)))
        with merged_adapters(model):  # the student samples without hooks: both shortcuts are safe
            rollout = generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature, top_p=top_p, num_return_sequences=samples, seed=seed,
                               share_prompt=True)
        if prefills is None:
            return rollout
        lengths = torch.tensor(prefill_lengths(tokenizer, instructions, prefills))
        return replace(rollout, prefill_tokens=lengths[rollout.prompt_index.cpu()].to(rollout.sequences.device))
    finally:
        model.train(was_training)


__all__ = ["sample_rollout"]
