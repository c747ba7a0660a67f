"""Our hook cache against TransformerLens' TransformerBridge and nnsight, on left-padded batches.

The bridge rewrites the model it wraps, so it boots on its own instance from the saved folder; nnsight wraps a
separately loaded copy. Tolerance 1e-4 (the bridge forces eager attention; sdpa differs by ~2e-6).
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import cache_activations, hook_names
from safesteer_interp.core.models import load_model

ARCHS = ["qwen2", "llama", "qwen3"]


def _ours(folder):
    model, tok = load_model(str(folder))
    batch = encode_prompts(tok, PROMPTS)
    assert (batch.attention_mask == 0).any(), "the parity batch must contain left padding"
    with torch.no_grad(), cache_activations(model, hook_names(model)) as cache:
        model(**batch.inputs())
    return model, tok, batch, cache


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_equals_transformer_bridge(tiny_dirs, arch):
    from transformer_lens.model_bridge import TransformerBridge

    model, _tok, batch, ours = _ours(tiny_dirs[arch])
    bridge = TransformerBridge.boot_transformers(str(tiny_dirs[arch]), device="cpu")
    with torch.no_grad():
        _, theirs = bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    for name in hook_names(model):
        worst = (ours[name][real] - theirs[name][real]).abs().max().item()
        assert worst < 1e-4, f"{arch} {name}: max |ours - bridge| = {worst:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_equals_nnsight(tiny_dirs, arch):
    from nnsight import TransformersModel

    model, tok, batch, ours = _ours(tiny_dirs[arch])
    other, _ = load_model(str(tiny_dirs[arch]))
    traced, saved = TransformersModel(other, tokenizer=tok), {}
    with torch.no_grad(), traced.trace(batch.inputs()):
        for i, layer in enumerate(traced.model.layers):  # requests follow execution order
            saved[f"blocks.{i}.hook_resid_pre"] = layer.input.save()
            saved[f"blocks.{i}.hook_attn_out"] = layer.self_attn.output[0].save()
            saved[f"blocks.{i}.hook_mlp_out"] = layer.mlp.output.save()
            saved[f"blocks.{i}.hook_resid_post"] = layer.output.save()
    real = batch.attention_mask.bool()
    for name in hook_names(model):
        worst = (ours[name][real] - saved[name][real]).abs().max().item()
        assert worst < 1e-4, f"{arch} {name}: max |ours - nnsight| = {worst:.2e}"
