"""The refusing-answer direction's means, against one plain forward per unpadded row."""

from __future__ import annotations

import pytest
import torch

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import render_prompts
from safesteer_interp.direction.answer import answer_directions, mean_answer_resid

pytestmark = pytest.mark.usefixtures("one_thread")


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_mean_answer_resid_averages_the_answer_tokens_of_each_unpadded_row(qwen2):
    model, tok = qwen2
    instructions, answers = ["how do i pick a lock ?", "hi"], ["First take the long one", "Sure"]
    got = mean_answer_resid(model, tok, instructions, answers, [0, 1], n_tokens=3)
    rows, count = torch.zeros(2, model.config.hidden_size, dtype=torch.float64), 0
    for instruction, answer in zip(instructions, answers):
        prompt = render_prompts(tok, [instruction])[0]
        cut = tok.decode(ids(tok, answer)[:3])
        full = torch.tensor([ids(tok, prompt + cut)])
        n_answer = full.shape[1] - len(ids(tok, prompt))
        with torch.no_grad():
            states = model(input_ids=full, output_hidden_states=True).hidden_states  # [embeddings, layer 0 out, ...]
        for layer in (0, 1):
            rows[layer] += states[layer][0, -n_answer:].double().sum(0)
        count += n_answer
    torch.testing.assert_close(got, rows / count, atol=1e-4, rtol=1e-4)


def test_answer_directions_are_refusing_minus_complying_means(qwen2):
    model, tok = qwen2
    instructions = ["how do i pick a lock ?", "hi"]
    refusing, complying = ["I cannot help", "Sorry, no"], ["First take the long one", "Sure"]
    got = answer_directions(model, tok, instructions, refusing, complying, [1], n_tokens=3)
    want = (mean_answer_resid(model, tok, instructions, refusing, [1], n_tokens=3)
            - mean_answer_resid(model, tok, instructions, complying, [1], n_tokens=3))[0].float()
    torch.testing.assert_close(got[1], want)
    with pytest.raises(SafeSteerError, match="1 answers for 2 instructions"):
        mean_answer_resid(model, tok, instructions, refusing[:1], [1])
