"""Batching, position ids and answer masks: the bookkeeping every later stage relies on."""

from __future__ import annotations

import torch
from conftest import PROMPTS

from safesteer_interp.core.chat import encode_prompts, position_ids_from_mask
from safesteer_interp.core.generation import answer_mask, decode_answers, generate, generate_answers


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_left_padding_aligns_prompt_ends(qwen2):
    _, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[:, 0].all()
    assert (batch.input_ids[:, -1] == tok.convert_tokens_to_ids("assistant")).all()


def test_scoring_forward_matches_generation_logits(qwen2):
    """Teacher-forced logits of a generated sequence equal the logits the sampler used (cumsum positions)."""
    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad():
        out = model.generate(**batch.inputs(), max_new_tokens=4, min_new_tokens=4, do_sample=False, top_k=None,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        seq = out.sequences
        mask = torch.cat([batch.attention_mask, torch.ones(len(PROMPTS), 4, dtype=torch.long)], 1)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    width = batch.input_ids.shape[1]
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(logits[:, width - 1 + step], step_logits, atol=1e-4, rtol=0)


def test_answer_mask_includes_first_eos_only_even_when_pad_is_eos():
    eos = 9
    answers = torch.tensor([[5, 6, 9, 9, 9], [5, 9, 7, 9, 9], [1, 2, 3, 4, 5]])
    assert answer_mask(answers, [eos]).long().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_sampling_is_seeded_and_leaves_global_rng_alone(qwen2):
    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    state = torch.get_rng_state()
    a = generate(model, tok, batch, max_new_tokens=6, do_sample=True, seed=3, num_return_sequences=2)
    b = generate(model, tok, batch, max_new_tokens=6, do_sample=True, seed=3, num_return_sequences=2)
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(decode_answers(tok, a)) == 2 * len(PROMPTS)


def test_generate_answers_batches_in_order(qwen2):
    model, tok = qwen2
    together = generate_answers(model, tok, PROMPTS, max_new_tokens=5)
    one_by_one = [generate_answers(model, tok, [p], max_new_tokens=5)[0] for p in PROMPTS]
    assert together == one_by_one
