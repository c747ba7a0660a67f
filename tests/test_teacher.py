"""The teacher is the same weights seen through hooks: its scores match hand-built forwards and its own samples."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import batch_from_ids, encode_prompts
from safesteer_interp.core.hooks import add_to_resid
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.teacher import SAFETY_SYSTEM_PROMPT, PromptTeacher, SteeredTeacher


def _direction(model, layer=1, scale=2.0):
    torch.manual_seed(3)
    return Direction(torch.randn(model.config.hidden_size) * scale, layer, -1, coeff=1.5)


def _plain(model, batch):
    with torch.no_grad():
        return model(**batch.inputs(), use_cache=False).logits


def test_vector_teacher_scores_like_a_manual_hook(qwen2):
    model, tok = qwen2
    teacher = SteeredTeacher(model, tok, _direction(model))
    batch = encode_prompts(tok, PROMPTS)
    with add_to_resid(model, teacher.direction.vector, 1, coeff=1.5):
        manual = _plain(model, batch)
    full = teacher.logits(batch)
    torch.testing.assert_close(full, manual, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.logits(batch, last=3), full[:, -3:], atol=1e-5, rtol=0)
    base = teacher.base_logits(batch, last=2)
    torch.testing.assert_close(base, _plain(model, batch)[:, -2:], atol=1e-5, rtol=0)
    assert (full[:, -2:] - base).abs().max() > 0.5  # coeff 1.5 of a norm-2 vector moves the logits
    assert teacher.coeff == 1.5 and SteeredTeacher(model, tok, teacher.direction, coeff=0.5).coeff == 0.5
    assert all(not m._forward_pre_hooks for m in model.modules())  # hooks came off


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_teacher_forced_scores_reproduce_the_teachers_own_greedy_samples(qwen2, positions):
    model, tok = qwen2
    teacher = SteeredTeacher(model, tok, _direction(model, scale=4.0), positions=positions)
    gen = teacher.generate(PROMPTS, max_new_tokens=4, min_new_tokens=4)
    ids, P = gen.sequences, gen.prompt_length
    batch = batch_from_ids(ids, torch.cat([gen.attention_mask[:, :P], torch.ones_like(ids[:, P:])], 1))
    forced = teacher.logits(batch, last=5, prompt_length=P)[:, :-1].argmax(-1)
    assert torch.equal(forced, ids[:, P:])
    if positions == "prompt":  # the answer tokens' own residuals are not steered, only what they attend to
        with add_to_resid(model, teacher.direction.vector, teacher.direction.layer, teacher.coeff, "all"):
            everywhere = _plain(model, batch)
        steered = teacher.logits(batch, prompt_length=P)
        torch.testing.assert_close(steered[:, :P], everywhere[:, :P], atol=1e-5, rtol=0)
        assert (steered[:, P:] - everywhere[:, P:]).abs().max() > 0.1
    if positions == "last":
        with pytest.raises(SafeSteerError, match="prompt_length"):
            teacher.logits(batch)
        # steering the last prompt token only: the answer tokens' own residuals are untouched, so the base and the
        # teacher agree on everything before the prompt's end
        steered, base = teacher.logits(batch, prompt_length=P), teacher.base_logits(batch)
        torch.testing.assert_close(steered[:, :P - 1], base[:, :P - 1], atol=1e-5, rtol=0)
        assert (steered[:, P - 1] - base[:, P - 1]).abs().max() > 0.1


def test_prompt_teacher_contrasts_a_safety_system_prompt_with_an_empty_one(qwen2):
    model, tok = qwen2
    teacher = PromptTeacher(model, tok, system="please help")
    steered, base = teacher.encode(["hi"]), teacher.base_encode(["hi"])
    words = tok.convert_ids_to_tokens
    assert words(steered.input_ids[0])[:5] == ["<|im_start|>", "system", "please", "help", "<|im_end|>"]
    assert words(base.input_ids[0])[:3] == ["<|im_start|>", "system", "<|im_end|>"]  # the reference's empty system
    torch.testing.assert_close(teacher.logits(steered), _plain(model, steered), atol=1e-6, rtol=0)
    assert PromptTeacher(model, tok).system == SAFETY_SYSTEM_PROMPT and teacher.kind == "prompt"


def test_teacher_shares_weights_with_a_peft_student(qwen2):
    from peft import LoraConfig, get_peft_model

    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    clean = _plain(model, batch)
    direction = _direction(model)
    with add_to_resid(model, direction.vector, 1, coeff=1.5):
        clean_steered = _plain(model, batch)
    student = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert (_plain(student, batch) - clean).abs().max() > 1e-3  # the adapters change the student
    teacher = SteeredTeacher(student, tok, direction)
    torch.testing.assert_close(teacher.base_logits(batch), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.logits(batch), clean_steered, atol=1e-5, rtol=0)


def test_a_teacher_with_further_directions_adds_each_at_its_layer(qwen2):
    model, tok = qwen2
    width = model.config.hidden_size
    first = Direction(torch.randn(width), layer=1, pos=-1, coeff=2.0)
    second = Direction(torch.randn(width), layer=0, pos=0, coeff=0.5)
    batch = encode_prompts(tok, PROMPTS[:2])
    with SteeredTeacher(model, tok, first, also=(second,)).active(), torch.no_grad():
        got = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with add_to_resid(model, first.vector, 1, 2.0), add_to_resid(model, second.vector, 0, 0.5), torch.no_grad():
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, want)
    with pytest.raises(SafeSteerError, match="further directions steer every position"):
        SteeredTeacher(model, tok, first, also=(Direction(torch.randn(width), layer=0, pos=0, positions="prompt"),))
