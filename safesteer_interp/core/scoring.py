"""Scoring: a model's next-token log-probabilities, computed one way for every stage.

A scoring forward runs a left-padded batch with position ids from the attention mask (as `generate` derives them),
keeps only the logits it needs (`logits_to_keep`) and upcasts them before the softmax. Hooks active around a call
apply, so the steered teacher, an ablated model and the student all score through these few functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from jaxtyping import Float, Int
from torch import Tensor

from safesteer_interp.core.anatomy import base_model, final_norm, unembed
from safesteer_interp.core.chat import ChatBatch, encode_prompts, position_ids_from_mask
from safesteer_interp.core.generation import Generation, cached_length, kv_cache, prefix_cache
from safesteer_interp.core.hooks import position_dependent_hooks

View = Callable[[Tensor, int], AbstractContextManager]  # (input ids of a forward, its prompt columns) -> context


def forward_logits(model, batch: ChatBatch, last: int | None = None) -> Float[Tensor, "batch pos vocab"]:
    """Logits of `batch` on the model's device; `last=k` keeps only the last k positions (no [pos, vocab] tensor)."""
    device = next(model.parameters()).device
    kwargs = {} if last is None else {"logits_to_keep": last}
    return model(**batch.to(device).inputs(), use_cache=False, **kwargs).logits


@torch.no_grad()
def next_token_logprobs(model, tokenizer, instructions: Sequence[str], *,
                        batch_size: int = 32) -> Float[Tensor, "batch vocab"]:
    """float64 log-probabilities of the first answer token after each chat prompt (on CPU). Unless a hook on the
    model treats positions differently, the tokens every prompt of a batch opens with (a chat template's system
    turn: 24 of Qwen's ~45) run once (`prefix_shared_logits`)."""
    out = []
    for start in range(0, len(instructions), batch_size):
        batch = encode_prompts(tokenizer, instructions[start:start + batch_size])
        shared = not position_dependent_hooks(model)
        logits = prefix_shared_logits(model, batch) if shared else forward_logits(model, batch, last=1)[:, -1]
        out.append(torch.log_softmax(logits.double(), -1).cpu())
    return torch.cat(out)


@torch.no_grad()
def prefix_shared_logits(model, batch: ChatBatch) -> Float[Tensor, "batch vocab"]:
    """Last-position logits of a left-padded batch, its common prefix computed once (`generation.prefix_cache`):
    the same numbers up to float rounding."""
    laid_out, cached = prefix_cache(model, batch)
    if cached is None:
        return forward_logits(model, batch, last=1)[:, -1]
    n, device = cached_length(cached), next(model.parameters()).device
    rest = laid_out.to(device)
    return model(input_ids=rest.input_ids[:, n:], attention_mask=rest.attention_mask,
                 position_ids=rest.position_ids[:, n:], use_cache=True, logits_to_keep=1, **cached).logits[:, -1]


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


# ----------------------------------------------------------------------------------------------- hidden states
@contextmanager
def _final_states(model) -> Iterator[list[Tensor]]:
    """Collect the output of the final norm (the states the unembedding reads) of every forward in the block."""
    norm, _ = final_norm(model)
    found: list[Tensor] = []
    handle = norm.register_forward_hook(lambda _m, _a, out: found.append(out[0] if isinstance(out, tuple) else out))
    try:
        yield found
    finally:
        handle.remove()


def _prompt_rows(prompt_index: Int[Tensor, " batch"]) -> tuple[Int[Tensor, " prompts"], Int[Tensor, " batch"]]:
    """(first row of each run of equal prompt indices, which run every row belongs to)."""
    starts = torch.ones_like(prompt_index, dtype=torch.bool)
    starts[1:] = prompt_index[1:] != prompt_index[:-1]
    return starts.nonzero().flatten(), starts.long().cumsum(0) - 1


def answer_states(model, generation: Generation, view: View | None = None, *,
                  share_prompt: bool = True) -> Float[Tensor, "batch new d_model"]:
    """Final-norm states at the positions whose logits `answer_logprobs` scores (the last prompt column, then every
    answer column but the last), on the model's device; gradients flow when enabled.

    `share_prompt`: each prompt runs once and its keys and values serve all of its rows, so `samples` answers to one
    prompt cost one prompt pass (the same states up to float rounding). Without it (needed under gradient
    checkpointing, which turns the KV cache off in training) one pass runs over every column. `model` may be
    DDP-wrapped; `view(input_ids, prompt_columns)` is entered around each forward, e.g. the teacher's steering.
    """
    view = view or (lambda _ids, _prompt: nullcontext())
    plain = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    device = next(model.parameters()).device
    g, width = generation.to(device), generation.prompt_length
    positions = position_ids_from_mask(g.attention_mask)
    nothing = torch.zeros(0, dtype=torch.long, device=device)  # logits_to_keep: the head runs on no position
    with _final_states(plain) as found:
        if not share_prompt:
            with view(g.sequences, width):
                model(input_ids=g.sequences, attention_mask=g.attention_mask, position_ids=positions,
                      use_cache=False, logits_to_keep=nothing)
            return found[0][:, width - 1:-1]
        first, row_prompt = _prompt_rows(g.prompt_index)
        cached = kv_cache(plain)
        with view(g.sequences[first, :width], width):
            model(input_ids=g.sequences[first, :width], attention_mask=g.attention_mask[first, :width],
                  position_ids=positions[first, :width], use_cache=True, logits_to_keep=nothing, **cached)
        last_prompt = found[0][row_prompt, -1:]
        if g.sequences.shape[1] == width + 1:
            return last_prompt
        next(iter(cached.values())).batch_select_indices(row_prompt)  # differentiable: a gather of keys/values
        answers = g.sequences[:, width:-1]
        with view(answers, 0):
            model(input_ids=answers, attention_mask=g.attention_mask[:, :-1], position_ids=positions[:, width:-1],
                  use_cache=True, logits_to_keep=nothing, **cached)
        return torch.cat([last_prompt, found[1]], 1)


def logits_from_states(model, states: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows vocab"]:
    """What the model's head makes of final-norm states: the unembedding, and Gemma-2/3's logit soft-capping."""
    logits = unembed(model)(states)
    cap = getattr(base_model(model).config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def reverse_kl(s: Float[Tensor, "batch pos bins"], t: Float[Tensor, "batch pos bins"]) -> Float[Tensor, "batch pos"]:
    """KL(s || t) = sum_v p_s(v) (log p_s(v) - log p_t(v)) from log-probs: mode-seeking, the first argument's own
    mass weighs the error. SafeSteer's loss (`distill.losses`) and the harmless drift (`evaluate.drift`) read it."""
    return (s.exp() * (s - t)).sum(-1)


__all__ = ["answer_logprobs", "answer_states", "forward_logits", "logits_from_states", "next_token_logprobs",
           "prefix_shared_logits", "reverse_kl"]
