"""Batching, position ids and answer masks: the bookkeeping every later stage relies on."""

from __future__ import annotations

import torch
from conftest import PROMPTS

from safesteer_interp.core.chat import encode_prompts, position_ids_from_mask
from safesteer_interp.core.generation import answer_mask, decode_answers, generate, generate_answers
from safesteer_interp.core.scoring import forward_logits


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


def _hf_greedy(model, batch, steps, eos, pad):
    with torch.no_grad():
        return model.generate(**{k: v for k, v in batch.inputs().items() if k != "position_ids"}, max_new_tokens=steps,
                              do_sample=False, top_k=None, top_p=None, temperature=None, eos_token_id=eos,
                              pad_token_id=pad)


def test_greedy_until_done_matches_generate_as_rows_finish(qwen2):
    """Finished rows leave the batch (`greedy_until_done`): the same tokens as `model.generate`, which keeps computing
    them, with and without a steering hook that tells the prefill from decoding."""
    from safesteer_interp.core.generation import greedy_until_done
    from safesteer_interp.core.hooks import add_to_resid

    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS)
    free = _hf_greedy(model, batch, 8, [tok.pad_token_id], tok.pad_token_id)[:, batch.input_ids.shape[1]:]
    # pretend that one of the generated tokens is EOS: the one at which the rows finish at the most different steps
    def finish(stop):
        return [next((t for t, x in enumerate(row.tolist()) if x == stop), None) for row in free]

    stop = max(sorted(set(free.flatten().tolist())), key=lambda x: len(set(finish(x))))
    assert len(set(finish(stop))) >= 3  # e.g. rows ending at steps 1, 2 and 5 and one running to the end
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for positions in (None, "all", "prompt", "last"):
        with add_to_resid(model, vector, 1, 4.0, positions=positions) if positions else torch.no_grad():
            expected = _hf_greedy(model, batch, 8, [stop], tok.pad_token_id)
            ours = greedy_until_done(model, batch, max_new_tokens=8, eos_ids=[stop], pad_id=tok.pad_token_id)
        assert torch.equal(ours, expected), positions
    with torch.no_grad():
        plain = generate(model, tok, batch, max_new_tokens=8)  # the path `generate` takes for plain greedy decoding
    expected = _hf_greedy(model, batch, 8, sorted({tok.eos_token_id, *(
        [model.generation_config.eos_token_id] if isinstance(model.generation_config.eos_token_id, int) else
        model.generation_config.eos_token_id or [])}), tok.pad_token_id)
    assert torch.equal(plain.sequences, expected)


def test_a_generation_config_with_a_logits_processor_is_decoded_by_generate(qwen2):
    from safesteer_interp.core.generation import plain_greedy

    model, _ = qwen2
    assert plain_greedy(model)
    model.generation_config.repetition_penalty = 1.3
    assert not plain_greedy(model)
    model.generation_config.repetition_penalty = 1.0
    model.generation_config.num_beams = 2
    assert not plain_greedy(model)


def test_prefix_shared_logits_match_a_plain_forward_under_ablation(qwen2):
    """The template prefix every prompt opens with runs once; the next-token log-probs are the plain forward's, with
    and without an edit that treats every position alike (ablation: the candidate scoring of stage 1). A hook that
    may treat positions differently turns the sharing off."""
    from safesteer_interp.core.chat import common_prefix
    from safesteer_interp.core.hooks import ablate_direction, hooks
    from safesteer_interp.core.scoring import next_token_logprobs, prefix_shared_logits

    model, tok = qwen2
    system = "You are a careful assistant who answers briefly."
    batch = encode_prompts(tok, PROMPTS, system)
    prefix, rests = common_prefix(batch)
    rendered = tok(tok.apply_chat_template([{"role": "system", "content": system}], tokenize=False),
                   add_special_tokens=False)["input_ids"]
    assert len(prefix) > len(rendered) and prefix[:len(rendered)].tolist() == rendered  # system turn + user opener
    assert [len(prefix) + len(r) for r in rests] == batch.attention_mask.sum(1).tolist()
    assert len(common_prefix(encode_prompts(tok, PROMPTS))[0]) >= 2  # so next_token_logprobs shares below
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for edit in (torch.no_grad, lambda: ablate_direction(model, direction)):
        with edit():
            shared = next_token_logprobs(model, tok, PROMPTS, batch_size=3)
            one_row = prefix_shared_logits(model, batch)
            with hooks(model, {"blocks.0.hook_resid_pre": lambda x, kwargs: x}):  # position-dependent: no sharing
                plain = next_token_logprobs(model, tok, PROMPTS, batch_size=3)
                plain_system = forward_logits(model, batch, last=1)[:, -1]
        assert torch.allclose(shared, plain, atol=1e-4), (shared - plain).abs().max()
        assert torch.allclose(one_row, plain_system, atol=1e-4)
    one = encode_prompts(tok, ["hi", "hi"])  # identical prompts keep their last token out of the prefix
    assert [len(r) for r in common_prefix(one)[1]] == [1, 1]


def test_generation_runs_the_common_prefix_once_with_the_same_answers(qwen2):
    """Without hooks, `generate` computes the prompts' common prefix (here a system turn) once and lays the prompts out
    prefix first: the same greedy and sampled answers as the left-padded batch, which it still decodes whenever a hook
    that may treat positions differently is on the model, and the prompts come back left-padded."""
    from safesteer_interp.core.chat import prefix_first
    from safesteer_interp.core.hooks import hooks

    model, tok = qwen2
    batch = encode_prompts(tok, PROMPTS, "You are a careful assistant who answers briefly.")
    laid_out, n = prefix_first(batch)
    assert n > 10 and laid_out.attention_mask[:, :n].all() and laid_out.attention_mask[:, -1].all()
    assert torch.equal(laid_out.position_ids[:, -1], batch.position_ids[:, -1])
    # greedy_until_done, HF's greedy search, HF's sampling
    for options in ({}, {"min_new_tokens": 6}, {"do_sample": True, "seed": 3, "min_new_tokens": 6}):
        shared = generate(model, tok, batch, max_new_tokens=6, **options)
        with hooks(model, {"blocks.0.hook_resid_pre": lambda x, kwargs: x}):  # a no-op hook: no sharing
            plain = generate(model, tok, batch, max_new_tokens=6, **options)
        assert torch.equal(shared.sequences, plain.sequences), options
        assert torch.equal(shared.attention_mask, plain.attention_mask), options
        assert decode_answers(tok, shared) == decode_answers(tok, plain)
