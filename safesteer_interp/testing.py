"""Tiny randomly initialised chat models of real HF architectures, built offline in milliseconds.

Tests (ours and users') exercise the exact code path of real models on these: same classes, same chat
templating, same hooks, only hidden sizes of a few dozen. Weights use std 0.1 so that activations and logits are
far from uniform and parity checks are meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Qwen3-style reasoning template: ChatML whose generation prompt, when the caller passes enable_thinking=False,
# already holds a closed, empty think block, so the answer starts right after it. Earlier assistant turns keep only
# the text after their think block, as reasoning templates do.
REASONING_TEMPLATE = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
THINK_TOKENS = ["<think>", "</think>"]  # added, not special (as in Qwen3): decoding keeps them in the text
SPECIALS = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
WORDS = ("system user assistant the a an to of and is how do i can you me tell write make help please what why "
         "sorry cannot sure here step cake bread garden water plant python code list repeat reverse one two three "
         "four five six seven eight nine ten plus minus ocean describe hi hello bomb weapon steal hack . , ? !").split()

ARCHITECTURES = ("qwen2", "llama", "qwen3", "mistral", "gemma2", "gemma3", "phi3")


def tiny_tokenizer(reasoning: bool = False) -> PreTrainedTokenizerFast:
    """A word-level ChatML tokenizer (whitespace, newlines included, only separates words: ChatML renders as
    `<|im_end|> <|im_start|> assistant`, so the post-instruction template is three tokens).

    `reasoning=True`: the Qwen3-style `REASONING_TEMPLATE` with `<think>` / `</think>` as added tokens (with
    thinking off the post-instruction template is `<|im_end|> <|im_start|> assistant <think> </think>`)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["\n"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", unk_token="<|unk|>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    fast.chat_template = CHATML_TEMPLATE
    if reasoning:
        fast.add_tokens(THINK_TOKENS)
        fast.chat_template = REASONING_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_config(arch: str, tokenizer, *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4,
                n_kv_heads: int = 2, d_mlp: int = 128, tie_embeddings: bool = False):
    """A transformers config of `arch` at toy size."""
    classes = {"qwen2": Qwen2Config, "llama": LlamaConfig, "qwen3": Qwen3Config, "mistral": MistralConfig,
               "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig, "phi3": Phi3Config}
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    extra = {"head_dim": d_model // n_heads} if arch in ("qwen3", "mistral", "gemma2", "gemma3") else {}
    return classes[arch](vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=d_mlp,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                         max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=tie_embeddings,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **extra)


def tiny_model(arch: str = "qwen2", *, seed: int = 0, reasoning: bool = False, **config_kwargs):
    """(model, tokenizer): a random `arch` causal LM in eval mode with a ChatML (or reasoning) tokenizer."""
    tokenizer = tiny_tokenizer(reasoning)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer


def save_tiny_model(directory: str | Path, arch: str = "qwen2", **kwargs) -> Path:
    """Write a tiny model + tokenizer folder that `load_model(path)` reads like any real checkpoint."""
    model, tokenizer = tiny_model(arch, **kwargs)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
