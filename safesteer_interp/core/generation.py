"""Generation and answer masks for chat prompts.

Sampling always passes `top_k=0` and `top_p` explicitly: HF applies top-k 50 when it is left out, which would
quietly turn "temperature-1 on-policy samples" into truncated ones. Hooks active around a call apply on the
prefill and on every decoding step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from safesteer_interp.core.anatomy import base_model
from safesteer_interp.core.chat import ChatBatch, batch_from_ids, encode_prompts, prefix_first
from safesteer_interp.core.hooks import hooked, position_dependent_hooks, row_bound_hooks
from safesteer_interp.errors import SafeSteerError


@dataclass(frozen=True)
class Generation:
    """Prompts + answers as one tensor: left-padded prompts, then right-padded answers from column `prompt_length`.

    `generate` returns one; on-policy rollouts, teacher answers and the base's greedy answers are all this type.
    """

    sequences: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]  # 1 on prompt tokens and on answer tokens up to and incl. the first EOS
    prompt_length: int  # padded prompt width: answers start at this column
    prompt_index: Int[Tensor, " batch"]  # which prompt each row answers (the rows of one prompt are consecutive)
    # per row, how many of the prompt block's last columns are a begun answer (`sample_rollout(prefills=...)`), so a
    # gate that reads the request can find where it ends; None: no prefill
    prefill_tokens: Int[Tensor, " batch"] | None = None

    @property
    def answers(self) -> Int[Tensor, "batch new"]:
        return self.sequences[:, self.prompt_length:]

    @property
    def answer_mask(self) -> Bool[Tensor, "batch new"]:
        """Generated tokens up to and including the first EOS, on the answer columns."""
        return self.attention_mask[:, self.prompt_length:].bool()

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def as_batch(self) -> ChatBatch:
        """Prompt + answer columns as one batch for a teacher-forced forward (positions from the mask)."""
        return batch_from_ids(self.sequences, self.attention_mask)

    def to(self, device: str | torch.device) -> Generation:
        return Generation(self.sequences.to(device), self.attention_mask.to(device), self.prompt_length,
                          self.prompt_index.to(device),
                          None if self.prefill_tokens is None else self.prefill_tokens.to(device))

    def rows(self, start: int, stop: int) -> Generation:
        """A micro-batch, trimmed of columns that are padding in every row (exact: positions come from the mask)."""
        mask = self.attention_mask[start:stop]
        used = mask.bool().any(0)
        first = int(used[:self.prompt_length].long().argmax())
        last = int(used.nonzero().max()) + 1
        return Generation(self.sequences[start:stop, first:last], mask[:, first:last], self.prompt_length - first,
                          self.prompt_index[start:stop],
                          None if self.prefill_tokens is None else self.prefill_tokens[start:stop])


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


def kv_cache(model, cache=None) -> dict:
    """`{name: cache}` for a forward or `generate` call: a fresh `DynamicCache` unless one is given, under the
    keyword this transformers version reads (`cache` since 5.x renamed `past_key_values`)."""
    from transformers import DynamicCache  # lazy: transformers is heavy; only cached forwards need it

    hf = base_model(model)
    name = "cache" if "cache" in inspect.signature(type(hf).forward).parameters else "past_key_values"
    return {name: DynamicCache(config=hf.config) if cache is None else cache}


@functools.cache
def _growing_layer() -> type:
    """A cache layer that decodes into spare room: each step's keys and values are written after the filled part
    and views of it are returned, where `DynamicLayer` concatenates, copying the whole cache at every step."""
    from transformers.cache_utils import DynamicLayer  # lazy: transformers is heavy; only sampling needs it

    class GrowingLayer(DynamicLayer):
        room: list[Tensor] | None = None

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            old = self.get_seq_length()
            new = old + key_states.shape[-2]
            moved = old and self.room is not None and self.room[0].data_ptr() != self.keys.data_ptr()
            if self.room is None or self.room[0].shape[-2] < new or moved:  # e.g. after batch_repeat_interleave
                self.room = [x.new_empty((*x.shape[:-2], 2 * new, x.shape[-1])) for x in (key_states, value_states)]
                if old:
                    self.room[0][..., :old, :], self.room[1][..., :old, :] = self.keys, self.values
            self.room[0][..., old:new, :], self.room[1][..., old:new, :] = key_states, value_states
            self.keys, self.values = self.room[0][..., :new, :], self.room[1][..., :new, :]
            return self.keys, self.values

    return GrowingLayer


@torch.no_grad()
def shared_prompt_cache(model, batch: ChatBatch, repeats: int) -> dict:
    """Keys and values of every prompt but its last column, computed once and repeated for each of its `repeats`
    samples (`generate` then runs only the last prompt column in its first step): 1/repeats of the prefill. Its
    full-attention layers decode into spare room (`_growing_layer`) instead of concatenating at every step.

    Only for a model without hooks that tell the prefill from decoding (the first step is not a prefill here)."""
    cached = kv_cache(model)
    cache, growing = next(iter(cached.values())), _growing_layer()
    cache.layers = [growing() if type(layer) is growing.__base__ else layer for layer in cache.layers]
    device = next(model.parameters()).device
    prefix = ChatBatch(*(x[:, :-1].to(device) for x in (batch.input_ids, batch.attention_mask, batch.position_ids)))
    model(**prefix.inputs(), use_cache=True, logits_to_keep=1, **cached)
    cache.batch_repeat_interleave(repeats)
    return cached


MIN_SHARED_PREFIX = 2  # fewer common tokens are not worth the extra forward


@torch.no_grad()
def prefix_cache(model, batch: ChatBatch) -> tuple[ChatBatch, dict | None]:
    """(the batch laid out prefix first (`chat.prefix_first`), a KV cache that already holds the rows' common
    prefix) or (batch, None) for a single row or rows that share fewer than MIN_SHARED_PREFIX tokens. The prefix
    runs once, as one row, and its keys and values are repeated for every row: a chat template's system turn is 24
    of the ~45 tokens of Qwen's HarmBench prompts. Callers continue from column `cached_length(cache)` with the
    whole attention mask."""
    if len(batch) < 2:
        return batch, None
    laid_out, n = prefix_first(batch)
    if n < MIN_SHARED_PREFIX:
        return batch, None
    cached = kv_cache(model)
    device = next(model.parameters()).device
    model(input_ids=laid_out.input_ids[:1, :n].to(device), use_cache=True, logits_to_keep=1, **cached)
    next(iter(cached.values())).batch_repeat_interleave(len(laid_out))
    return laid_out, cached


def cached_length(cached: dict) -> int:
    return next(iter(cached.values())).get_seq_length()


# Generation-config fields that make HF's greedy search more than "argmax until EOS", with their neutral values
# (None, transformers 5's default, is neutral too). A model that sets any other value is decoded by HF itself.
GREEDY_NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
                  "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
                  "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                  "forced_bos_token_id": None, "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": 0,
                  "exponential_decay_length_penalty": None, "guidance_scale": 1.0, "watermarking_config": None,
                  "penalty_alpha": None, "prompt_lookup_num_tokens": None, "stop_strings": None}


def plain_greedy(model) -> bool:
    """Whether HF's greedy search on this model is argmax until EOS (no logits processor of its own config)."""
    config = getattr(model, "generation_config", None)
    return config is not None and all(getattr(config, k, None) in (None, v) for k, v in GREEDY_NEUTRAL.items())


@torch.no_grad()
def greedy_until_done(model, batch: ChatBatch, *, max_new_tokens: int, eos_ids: Sequence[int],
                      pad_id: int, cached: dict | None = None) -> Int[Tensor, "batch pos"]:
    """Greedy decoding that drops each row from the batch once it has emitted EOS: prompt + answer ids, answers
    padded after their EOS, as `model.generate` returns them.

    `generate` keeps computing finished rows until the last one ends; a batch of refusals ("I'm sorry, but I can't
    assist with that.", ~12 tokens) beside one 64-token answer pays 64 full-batch steps. Here the batch shrinks
    (KV cache rows selected away), so the cost follows the tokens actually generated. Hooks see the prefill and
    then one column per step, as under `generate`; the same tokens up to float rounding (batch shapes differ).
    `cached`: a cache that already holds the batch's first columns (`prefix_cache`); the prefill starts after them."""
    device = next(model.parameters()).device
    ids, mask, pos = (x.to(device) for x in (batch.input_ids, batch.attention_mask, batch.position_ids))
    cached = cached or kv_cache(model)
    cache, start = next(iter(cached.values())), cached_length(cached)
    logits = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=pos[:, start:], use_cache=True,
                   logits_to_keep=1, **cached).logits[:, -1]
    answers = torch.full((len(ids), max_new_tokens), pad_id, dtype=ids.dtype, device=device)
    rows, last_pos = torch.arange(len(ids), device=device), pos[:, -1]
    eos = torch.tensor(list(eos_ids), device=device)
    steps = 0
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        answers[rows, step] = token
        steps = step + 1
        alive = ~torch.isin(token, eos)
        if step == max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():  # finished rows leave the batch, their cache rows with them
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, mask, last_pos = rows[keep], token[keep], mask[keep], last_pos[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        last_pos = last_pos + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                       use_cache=True, **cached).logits[:, -1]
    return torch.cat([ids, answers[:, :steps]], dim=1)


@torch.no_grad()
def generate(model, tokenizer, batch: ChatBatch, *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, min_new_tokens: int = 0,
             num_return_sequences: int = 1, seed: int | None = None, share_prompt: bool = False) -> Generation:
    """`model.generate` on a left-padded batch, returning the answer mask alongside the tokens.

    `share_prompt`: run each prompt once for its `num_return_sequences` samples (`shared_prompt_cache`); the same
    tokens up to float rounding; ignored under a hook that treats positions differently (prompt-only steering).
    With one sequence per prompt and no hook on the model that treats positions differently
    (`hooks.position_dependent_hooks`), the prompts' common prefix runs once instead (`prefix_cache`; the prompts
    come back left-padded, as given). Plain greedy decoding runs `greedy_until_done` (finished rows leave the batch)
    instead of `model.generate`."""
    device = next(model.parameters()).device
    prompts, cached = batch, None
    positional = position_dependent_hooks(model)  # a hook that tells the prefill from decoding would misread either
    if num_return_sequences == 1 and not positional:
        batch, cached = prefix_cache(model, batch)
    prompt_length = batch.input_ids.shape[1]  # the same width in both layouts
    # a gate read on the prompt (`hooks.gated_addition`) holds one verdict per row: no row may leave the batch
    if not do_sample and num_return_sequences == 1 and min_new_tokens == 0 and plain_greedy(model) \
            and not row_bound_hooks(model):
        eos = eos_token_ids(model, tokenizer)
        sequences = greedy_until_done(model, batch, max_new_tokens=max_new_tokens, eos_ids=eos,
                                      pad_id=tokenizer.pad_token_id, cached=cached)
        return _generation(prompts, sequences[:, prompt_length:], eos, 1)
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                  num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos_token_ids(model, tokenizer))
    if cached is not None:
        kwargs.update(cached)
    elif share_prompt and num_return_sequences > 1 and batch.input_ids.shape[1] > 1 and not positional:
        kwargs.update(shared_prompt_cache(model, batch, num_return_sequences))  # generate expands tensors only
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        sequences = model.generate(input_ids=batch.input_ids.to(device),
                                   attention_mask=batch.attention_mask.to(device), **kwargs)
    return _generation(prompts, sequences[:, prompt_length:], kwargs["eos_token_id"], num_return_sequences)


def _generation(prompts: ChatBatch, answers: Int[Tensor, "batch new"], eos_ids: Sequence[int],
                repeats: int) -> Generation:
    """The answers behind the left-padded prompts they answer (`repeats` consecutive rows per prompt), masked."""
    device = answers.device
    ids = prompts.input_ids.to(device).repeat_interleave(repeats, 0)
    mask = torch.cat([prompts.attention_mask.to(device).repeat_interleave(repeats, 0).bool(),
                      answer_mask(answers, eos_ids)], dim=1)
    index = torch.arange(len(prompts), device=device).repeat_interleave(repeats)
    return Generation(torch.cat([ids, answers], dim=1), mask.long(), ids.shape[1], index)


def decode_answers(tokenizer, generation: Generation) -> list[str]:
    """Answer text of every row, special tokens (EOS, pads) removed."""
    return [tokenizer.decode(row[keep], skip_special_tokens=True).strip()
            for row, keep in zip(generation.answers, generation.answer_mask, strict=True)]


class GreedyAnswers:
    """An unedited model's greedy answers, each prompt generated once however often a stage asks: stage 1 reads the
    same answers to its harmful train prompts for the refusal openers and for the judged filter, and to its harmful
    val prompts for the filter and the validation's base rates. Hooks must be off while it generates (checked)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, batch_size: int = 64):
        self.model, self.tokenizer, self.max_new_tokens, self.batch_size = model, tokenizer, max_new_tokens, batch_size
        self._memo: dict[str, tuple[int, str]] = {}  # prompt -> (first answer token id, answer text)

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [text for _, text in self.rows(prompts)]

    def rows(self, prompts: Sequence[str]) -> list[tuple[int, str]]:
        """(first answer token id, answer text) per prompt, in order."""
        if hooked(self.model):
            raise SafeSteerError("GreedyAnswers holds the unedited model's answers, but hooks are active on the model; "
                                 "generate steered or ablated answers with generate_answers")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._memo]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            gen = generate(self.model, self.tokenizer, encode_prompts(self.tokenizer, chunk),
                           max_new_tokens=self.max_new_tokens)
            firsts = gen.sequences[:, gen.prompt_length].tolist()
            self._memo.update(zip(chunk, zip(firsts, decode_answers(self.tokenizer, gen), strict=True), strict=True))
        return [self._memo[p] for p in prompts]


def generate_answers(model, tokenizer, instructions: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 64, system: str | None = None,
                     progress: Callable[[int], Callable[[], None]] | None = None, **kwargs) -> list[str]:
    """Decoded answers to chat instructions, in order, generated in left-padded batches. `progress(total batches)`
    returns a tick called after each batch (`core.progress.log_ticks`)."""
    answers: list[str] = []
    starts = range(0, len(instructions), batch_size)
    tick = progress(len(starts)) if progress is not None else lambda: None
    for start in starts:
        batch = encode_prompts(tokenizer, instructions[start:start + batch_size], system)
        answers += decode_answers(tokenizer, generate(model, tokenizer, batch, max_new_tokens=max_new_tokens,
                                                      **kwargs))
        tick()
    return answers
