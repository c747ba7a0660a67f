"""Chat prompts as tensors: the tokenizer's own template, left padding, masks and cumulative position ids.

Scoring forwards pass `position_ids = cumsum(mask) - 1` exactly as `generate` derives them, so a teacher-forced
score of a sampled answer sees the same numbers the sampler saw. Left padding aligns the end of every prompt,
which makes "the last k prompt tokens" the same slice `[:, -k:]` for every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from safesteer_interp.errors import SafeSteerError


@dataclass(frozen=True)
class ChatBatch:
    """A left-padded batch of token ids ready for a forward pass or `generate`."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]

    def to(self, device: str | torch.device) -> ChatBatch:
        return ChatBatch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device))

    def inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for `model(**batch.inputs())`."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def position_ids_from_mask(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions that count real tokens only (pads get 0), as HF `generate` does for left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def batch_from_ids(input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]) -> ChatBatch:
    return ChatBatch(input_ids, attention_mask, position_ids_from_mask(attention_mask))


def common_prefix(batch: ChatBatch) -> tuple[Int[Tensor, " prefix"], list[Int[Tensor, " rest"]]]:
    """(the longest run of tokens every row opens with, e.g. a template's system turn, and each row's real tokens
    after it); every row keeps at least its last token after the prefix."""
    rows = [ids[mask.bool()] for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]
    shortest = min(len(row) for row in rows) - 1
    heads = torch.stack([row[:shortest] for row in rows])
    n = int((heads == heads[0]).all(0).long().cumprod(0).sum()) if shortest > 0 else 0
    return rows[0][:n], [row[n:] for row in rows]


def prefix_first(batch: ChatBatch) -> tuple[ChatBatch, int]:
    """The batch laid out as [common prefix | padding | rest of each prompt], and the prefix length: the same real
    tokens, positions and last column as left padding (padding is masked wherever it sits), with the prefix in the
    same columns of every row, so that its keys and values can be computed once for all of them."""
    prefix, rests = common_prefix(batch)
    n, width = len(prefix), max(len(rest) for rest in rests)
    pad = batch.input_ids[batch.attention_mask == 0]
    ids = batch.input_ids.new_full((len(rests), n + width), int(pad[0]) if len(pad) else 0)
    mask = batch.attention_mask.new_zeros((len(rests), n + width))
    ids[:, :n], mask[:, :n] = prefix, 1
    for row, rest in enumerate(rests):
        ids[row, n + width - len(rest):], mask[row, n + width - len(rest):] = rest, 1
    return batch_from_ids(ids, mask), n


def _messages(instruction: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return [*messages, {"role": "user", "content": instruction}]


# Reasoning templates (Qwen3 style) open the answer with a think block unless told not to; with thinking off the
# generation prompt itself ends in a closed, empty block (`<think>\n\n</think>\n\n`). Every stage reads "the answer"
# as the tokens right after the prompt (refusal score = first answer token, safety tokens = first H answer positions,
# rollouts, judges), so prompts are rendered with thinking off: the think block becomes part of the post-instruction
# template and the first generated token is the answer. Templates without the switch ignore the extra variable.
TEMPLATE_KWARGS = {"enable_thinking": False}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the block judges skip and S never contains


def render_prompts(tokenizer, instructions: Sequence[str], system: str | None = None) -> list[str]:
    """Each instruction as one user turn (after an optional system turn) plus the generation prompt (thinking off)."""
    if isinstance(instructions, str):
        raise SafeSteerError("instructions must be a list of strings, not a single string")
    if len(instructions) == 0:
        raise SafeSteerError("no instructions to render: the prompt list is empty")
    return [tokenizer.apply_chat_template(_messages(text, system), tokenize=False, add_generation_prompt=True,
                                          **TEMPLATE_KWARGS)
            for text in instructions]


def render_prefilled(tokenizer, instructions: Sequence[str], prefills: Sequence[str]) -> list[str]:
    """Chat prompts whose assistant turn has already begun with each row's prefill ("" leaves it a plain prompt)."""
    if len(prefills) != len(instructions):
        raise SafeSteerError(f"{len(prefills)} prefills for {len(instructions)} instructions: pass one per "
                             "instruction ('' for none)")
    return [text + prefill for text, prefill in zip(render_prompts(tokenizer, instructions), prefills, strict=True)]


def first_tokens(tokenizer, text: str, k: int) -> tuple[str, int]:
    """(the text of `text`'s first k tokens, how many there were): a prefill or an answer cut to k tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:k]
    return tokenizer.decode(ids), len(ids)


def prefill_lengths(tokenizer, instructions: Sequence[str], prefills: Sequence[str]) -> list[int]:
    """Per row, how many tokens its prefill adds after the plain chat prompt (0 for ""): where the request ends in
    the prefilled prompt block. The plain prompt's tokens must be a prefix of the prefilled one's."""
    plain, begun = (tokenizer(texts, add_special_tokens=False)["input_ids"] for texts in (
        render_prompts(tokenizer, instructions), render_prefilled(tokenizer, instructions, prefills)))
    for i, (a, b) in enumerate(zip(plain, begun, strict=True)):
        if b[:len(a)] != a:
            raise SafeSteerError(f"prefill {i} ({prefills[i][:40]!r}) merges with the chat template's last token; "
                                 "begin it with a word, not with punctuation that joins the template")
    return [len(b) - len(a) for a, b in zip(plain, begun, strict=True)]


def encode_texts(tokenizer, texts: Sequence[str]) -> ChatBatch:
    """Tokenize already-rendered chat texts (the template carries its own BOS, so none is added)."""
    enc = tokenizer(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    return batch_from_ids(enc["input_ids"], enc["attention_mask"])


def encode_prompts(tokenizer, instructions: Sequence[str], system: str | None = None) -> ChatBatch:
    """Render and tokenize chat prompts as one left-padded batch."""
    if tokenizer.padding_side != "left":
        raise SafeSteerError("the tokenizer pads on the right; load it with load_model/load_tokenizer "
                             "or set tokenizer.padding_side = 'left'")
    return encode_texts(tokenizer, render_prompts(tokenizer, instructions, system))


def post_instruction_length(tokenizer, system: str | None = None) -> int:
    """Number of template tokens after the instruction up to the end of the generation prompt.

    Found from the tokenizer's own template: render a probe instruction and count the tokens that start after it
    (e.g. ChatML `<|im_end|> \\n <|im_start|> assistant \\n`, plus `<think>\\n\\n</think>\\n\\n` for a reasoning
    template, rendered with thinking off).
    """
    probe = "Describe the ocean"
    text = render_prompts(tokenizer, [probe], system)[0]
    end = text.rfind(probe) + len(probe)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return sum(1 for start, _stop in enc["offset_mapping"] if start >= end)


def post_instruction_tokens(tokenizer, system: str | None = None) -> list[str]:
    """The post-instruction template tokens as strings (for artifacts and plots)."""
    k = post_instruction_length(tokenizer, system)
    ids = tokenizer(render_prompts(tokenizer, ["Describe the ocean"], system)[0], add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids[len(ids) - k:])


def has_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (some templates drop or reject it)."""
    marker = "SYSTEM-ROLE-PROBE"
    try:
        return marker in render_prompts(tokenizer, ["hi"], system=marker)[0]
    except Exception:  # templates raise TemplateError for unsupported roles
        return False
