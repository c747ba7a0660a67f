"""Generation and answer masks for chat prompts.

Sampling always passes `top_k=0` and `top_p` explicitly: HF applies top-k 50 when it is left out, which would
quietly turn "temperature-1 on-policy samples" into truncated ones. Hooks active around a call apply on the
prefill and on every decoding step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from safesteer_interp.core.chat import ChatBatch, encode_prompts


@dataclass(frozen=True)
class Generation:
    """Prompts + answers as one left/right-padded tensor, with the answer span marked."""

    sequences: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]  # 1 on prompt tokens and on answer tokens up to and incl. EOS
    answer_mask: Bool[Tensor, "batch pos"]  # answer tokens up to and including the first EOS
    prompt_length: int  # padded prompt width: answers start at this column


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the generation config's (may be a list) plus the tokenizer's."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def answer_mask(answers: Int[Tensor, "batch new"], eos_ids: Sequence[int]) -> Bool[Tensor, "batch new"]:
    """True on generated tokens up to and including the first EOS (robust when pad == eos)."""
    is_eos = torch.isin(answers, torch.tensor(list(eos_ids), device=answers.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS tokens strictly before each position
    return eos_before == 0


@torch.no_grad()
def generate(model, tokenizer, batch: ChatBatch, *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, min_new_tokens: int = 0,
             num_return_sequences: int = 1, seed: int | None = None) -> Generation:
    """`model.generate` on a left-padded batch, returning the answer mask alongside the tokens."""
    device = next(model.parameters()).device
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                  num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos_token_ids(model, tokenizer))
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        sequences = model.generate(input_ids=batch.input_ids.to(device),
                                   attention_mask=batch.attention_mask.to(device), **kwargs)
    prompt_length = batch.input_ids.shape[1]
    answers = answer_mask(sequences[:, prompt_length:], kwargs["eos_token_id"])
    prompt_mask = batch.attention_mask.to(device).repeat_interleave(num_return_sequences, 0).bool()
    full = torch.cat([prompt_mask, answers], dim=1)
    return Generation(sequences, full.long(), torch.cat([torch.zeros_like(prompt_mask), answers], 1), prompt_length)


def decode_answers(tokenizer, generation: Generation) -> list[str]:
    """Answer text of every row, special tokens (EOS, pads) removed."""
    answers = generation.sequences[:, generation.prompt_length:]
    mask = generation.answer_mask[:, generation.prompt_length:]
    return [tokenizer.decode(row[keep], skip_special_tokens=True).strip()
            for row, keep in zip(answers, mask, strict=True)]


def generate_answers(model, tokenizer, instructions: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 64, system: str | None = None, **kwargs) -> list[str]:
    """Decoded answers to chat instructions, in order, generated in left-padded batches."""
    answers: list[str] = []
    for start in range(0, len(instructions), batch_size):
        batch = encode_prompts(tokenizer, instructions[start:start + batch_size], system)
        answers += decode_answers(tokenizer, generate(model, tokenizer, batch, max_new_tokens=max_new_tokens,
                                                      **kwargs))
    return answers
