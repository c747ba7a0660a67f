"""The teacher is the same weights seen through hooks: its scores match hand-built forwards and its own samples."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import batch_from_ids, encode_prompts
from safesteer_interp.core.generation import generate
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


# ----------------------------------------------------------------------------------------------- the gated teacher
def _gated(model, tok, prompts, positions="all"):
    """A gated teacher (steering layer 1, gate read at layer 1 on the last prompt token) whose threshold sits between
    the prompts' second and third highest projections: it passes exactly two of them."""
    from safesteer_interp.core.hooks import RowGate, cache_activations
    from safesteer_interp.teacher import GatedTeacher

    direction = _direction(model, scale=4.0)
    with torch.no_grad(), cache_activations(model, ["blocks.1.hook_resid_pre"], positions=slice(-1, None)) as rec:
        model(**encode_prompts(tok, prompts).inputs(), use_cache=False)
    projection = rec["blocks.1.hook_resid_pre"][:, 0].float() @ direction.unit
    high = projection.sort(descending=True).values
    assert high[1] > high[2], "the prompts' projections must differ"
    gate = RowGate(layer=1, unit=direction.unit, threshold=float((high[1] + high[2]) / 2), pos=-1)
    passed = (projection >= gate.threshold).nonzero().flatten().tolist()
    return GatedTeacher(model, tok, Direction(direction.vector, 1, -1, coeff=1.5, positions=positions), gate), passed


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_gated_teacher_is_the_steered_teacher_on_passed_rows_and_the_base_on_the_others(qwen2, positions):
    from safesteer_interp.core.hooks import row_bound_hooks

    model, tok = qwen2
    prompts = PROMPTS
    gated, passed = _gated(model, tok, prompts, positions)
    assert _fired(gated, tok, prompts).nonzero().flatten().tolist() == passed and len(passed) == 2
    steered = SteeredTeacher(model, tok, gated.direction, positions=positions)
    # generation: each row as the steered teacher's or the base model's own greedy answer, generated alone
    gen = gated.generate(prompts, max_new_tokens=5)
    for i, prompt in enumerate(prompts):
        alone = (steered.generate([prompt], max_new_tokens=5) if i in passed else
                 generate(model, tok, encode_prompts(tok, [prompt]), max_new_tokens=5))
        assert tok.decode(gen.answers[i][gen.answer_mask[i]]) == tok.decode(alone.answers[0][alone.answer_mask[0]])
    # teacher forcing over prompt + answer: the steered teacher's logits on passed rows, the base's elsewhere
    P = gen.prompt_length
    batch = batch_from_ids(gen.sequences, gen.attention_mask)
    scored, want_steered, want_base = (gated.logits(batch, prompt_length=P), steered.logits(batch, prompt_length=P),
                                       steered.base_logits(batch))
    for i in range(len(prompts)):
        keep = batch.attention_mask[i].bool()
        want = want_steered if i in passed else want_base
        torch.testing.assert_close(scored[i][keep], want[i][keep], atol=1e-4, rtol=0)
    assert gated.shares_prompt_pass is False and not row_bound_hooks(model)  # hooks came off
    if positions == "all":  # no prompt_length: a batch of prompts only, which end at its last column
        prompts_only = encode_prompts(tok, prompts)
        torch.testing.assert_close(gated.logits(prompts_only, last=1)[passed],
                                   steered.logits(prompts_only, last=1)[passed], atol=1e-4, rtol=0)


def _fired(teacher, tok, prompts):
    with torch.no_grad(), teacher.active():
        teacher.model(**encode_prompts(tok, prompts).inputs(), use_cache=False)
    return teacher.last_gate["fired"]


def test_a_gate_read_after_the_steered_layer_is_refused(qwen2):
    from safesteer_interp.core.hooks import RowGate
    from safesteer_interp.teacher import GatedTeacher

    model, tok = qwen2
    direction = _direction(model, layer=0)
    teacher = GatedTeacher(model, tok, direction, RowGate(layer=1, unit=direction.unit, threshold=0.0))
    with pytest.raises(SafeSteerError, match="at or before"):
        teacher.generate(PROMPTS[:1], max_new_tokens=2)
