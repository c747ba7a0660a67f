"""Hook layer behaviour on tiny random models: what is recorded, what is edited, and that hooks come off."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, manual_greedy

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.generation import eos_token_ids, generate
from safesteer_interp.core.hooks import (
    ablate_direction,
    add_to_resid,
    cache_activations,
    decoder_layers,
    hook_names,
    hooks,
    n_layers,
)
from safesteer_interp.testing import ARCHITECTURES, tiny_model


def _forward(model, batch):
    with torch.no_grad():
        return model(**batch.inputs(), use_cache=False).logits


def _no_hooks_left(model) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_resid_pre_matches_hidden_states_and_chains_to_resid_post(arch):
    model, tok = tiny_model(arch)
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad(), cache_activations(model, hook_names(model)) as cache:
        out = model(**batch.inputs(), output_hidden_states=True)
    for layer in range(n_layers(model)):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer])
        if layer > 0:
            assert torch.equal(cache[f"blocks.{layer - 1}.hook_resid_post"], cache[f"blocks.{layer}.hook_resid_pre"])
        # a decoder block is resid_pre + attn_out + mlp_out (for Gemma: the post-norm outputs are the writes)
        total = sum(cache[f"blocks.{layer}.hook_{k}"] for k in ("resid_pre", "attn_out", "mlp_out"))
        torch.testing.assert_close(total, cache[f"blocks.{layer}.hook_resid_post"], atol=1e-5, rtol=0)


def test_cache_positions_and_dtype(qwen2):
    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad(), cache_activations(model, ["blocks.1.hook_resid_pre"]) as full:
        model(**batch.inputs())
    with torch.no_grad(), cache_activations(model, ["blocks.1.hook_resid_pre"], positions=slice(-3, None),
                                            dtype=torch.float64) as last:
        model(**batch.inputs())
    assert last["blocks.1.hook_resid_pre"].dtype == torch.float64
    assert torch.equal(last["blocks.1.hook_resid_pre"], full["blocks.1.hook_resid_pre"][:, -3:].double())


@pytest.mark.parametrize("positions", ["all", "prompt", "last", 2])
def test_add_to_resid_adds_exactly_where_asked(qwen2, positions):
    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    vector = torch.randn(model.config.hidden_size)
    name = "blocks.1.hook_resid_pre"
    with torch.no_grad(), cache_activations(model, [name]) as clean:
        model(**batch.inputs())
    with torch.no_grad(), add_to_resid(model, vector, 1, coeff=1.5, positions=positions), \
            cache_activations(model, [name]) as steered:  # registered after the edit, so it sees the edit
        model(**batch.inputs())
    delta = steered[name] - clean[name]
    k = {"all": batch.input_ids.shape[1], "prompt": batch.input_ids.shape[1], "last": 1, 2: 2}[positions]
    torch.testing.assert_close(delta[:, -k:], (1.5 * vector).expand_as(delta[:, -k:]), atol=1e-5, rtol=0)
    assert torch.all(delta[:, :-k] == 0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ablation_removes_the_direction_everywhere(arch):
    model, tok = tiny_model(arch)
    batch = encode_prompts(tok, PROMPTS)
    direction = torch.randn(model.config.hidden_size)
    unit = direction / direction.norm()
    with torch.no_grad(), ablate_direction(model, direction), cache_activations(model, hook_names(model)) as cache:
        model(**batch.inputs())
    worst = max((act @ unit).abs().max().item() for act in cache.values())
    assert worst < 1e-4


def test_hooks_come_off_even_on_error(qwen2):
    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    clean = _forward(model, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_resid(model, torch.randn(64), 0), ablate_direction(model, torch.randn(64)):
            raise RuntimeError("boom")
    assert _no_hooks_left(model)
    assert torch.equal(_forward(model, batch), clean)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("mode", ["add_all", "add_last", "ablate"])
def test_hooked_generate_with_kv_cache_equals_no_cache_loop(arch, mode):
    model, tok = tiny_model(arch, seed=1)
    batch = encode_prompts(tok, PROMPTS)
    vector = 0.5 * torch.randn(model.config.hidden_size)
    width = batch.input_ids.shape[1]

    def edit(total_len):  # the intervention as the no-cache loop sees it
        if mode == "add_all":
            return add_to_resid(model, vector, 1)
        if mode == "ablate":
            return ablate_direction(model, vector)
        mask = torch.zeros(len(PROMPTS), total_len, dtype=torch.bool)
        mask[:, width - 1] = True  # the last prompt token, whatever has been generated since
        return add_to_resid(model, vector, 1, positions=mask)

    with (add_to_resid(model, vector, 1) if mode == "add_all" else ablate_direction(model, vector)
          if mode == "ablate" else add_to_resid(model, vector, 1, positions="last")):
        cached = generate(model, tok, batch, max_new_tokens=6, min_new_tokens=6).sequences
    reference = manual_greedy(model, batch, 6, eos_token_ids(model, tok), edit)
    assert torch.equal(cached, reference)
    assert _no_hooks_left(model)


def test_hooks_work_through_peft_and_disable_adapter_is_the_base_model(qwen2):
    from peft import LoraConfig, get_peft_model

    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    vector = torch.randn(model.config.hidden_size)
    with add_to_resid(model, vector, 1):
        steered_base = _forward(model, batch)
    base = _forward(model, batch)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    assert len(decoder_layers(peft_model)) == n_layers(model)
    assert not torch.equal(_forward(peft_model, batch), base)  # adapters change the output...
    with peft_model.disable_adapter():
        assert torch.equal(_forward(peft_model, batch), base)  # ...and switch off exactly
        with add_to_resid(peft_model, vector, 1):
            assert torch.equal(_forward(peft_model, batch), steered_base)


def test_generic_hooks_reject_unknown_names(qwen2):
    model, _ = qwen2
    with pytest.raises(SafeSteerError, match="unknown hook name 'blocks.0.hook_q'"):
        with hooks(model, {"blocks.0.hook_q": lambda x, kw: x}):
            pass
    with pytest.raises(SafeSteerError, match="layer 3 is out of range: the model has 3 decoder layers"):
        with cache_activations(model, ["blocks.3.hook_resid_pre"]):
            pass
    assert _no_hooks_left(model)
