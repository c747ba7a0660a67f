"""First-answer-token report: batched, padded probabilities equal single-prompt forwards; the S bookkeeping is exact."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import add_to_resid
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.distill import openers
from safesteer_interp.teacher import SteeredTeacher


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_first_token_probs_equal_one_prompt_at_a_time(qwen2, positions):
    model, tok = qwen2
    torch.manual_seed(3)
    direction = Direction(torch.randn(model.config.hidden_size) * 4.0, 1, -1, coeff=1.5)
    teacher = SteeredTeacher(model, tok, direction, positions=positions)
    base, steered = openers.first_token_probs(teacher, PROMPTS, batch_size=2)  # batches of 2: left padding inside
    hand_base, hand_steered = [], []
    with torch.no_grad():
        for prompt in PROMPTS:
            inputs = encode_prompts(tok, [prompt]).inputs()
            hand_base.append(model(**inputs).logits[0, -1].softmax(-1))
            # one prompt-only forward is a prefill: "prompt" steers every token there, as "all" does
            with add_to_resid(model, direction.vector, 1, 1.5, "all" if positions == "prompt" else positions):
                hand_steered.append(model(**inputs).logits[0, -1].softmax(-1))
    torch.testing.assert_close(base, torch.stack(hand_base).mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(steered, torch.stack(hand_steered).mean(0), atol=1e-6, rtol=0)
    assert (steered - base).abs().max() > 1e-3  # the steering did something to compare against


def test_rows_mark_s_membership_and_the_papers_target():
    p_base = torch.tensor([0.7, 0.2, 0.06, 0.04])
    p_teacher = torch.tensor([0.05, 0.8, 0.1, 0.05])
    names = ["Sure.", "I'm", "I", "x"]
    rows = openers.opener_rows(p_base, p_teacher, torch.tensor([1, 2]), names, top=3)
    assert [(r["token"], r["in_S"]) for r in rows] == [("Sure.", False), ("I'm", True), ("I", True)]
    assert rows[0]["paper_target"] is None and rows[1]["paper_target"] == pytest.approx(0.8 / math.e, abs=1e-6)
    by_teacher = openers.opener_rows(p_base, p_teacher, torch.tensor([1, 2]), names, top=2, rank_by="teacher")
    assert [r["token"] for r in by_teacher] == ["I'm", "I"]
    # outside S, used by the base (>= 0.1) and avoided by the teacher: only "Sure."
    assert [r["token"] for r in openers.uncontrolled(rows)] == ["Sure."]
    with_sure = openers.opener_rows(p_base, p_teacher, torch.tensor([0, 1]), names, top=3)
    assert openers.uncontrolled(with_sure) == []


def test_report_notes_uncontrolled_openers_for_paper_and_renorm_only(qwen2, monkeypatch):
    model, tok = qwen2
    vocab = model.config.vocab_size
    p_base, p_teacher = torch.full((vocab,), 0.1 / (vocab - 2)), torch.full((vocab,), 0.1 / (vocab - 2))
    p_base[5], p_base[6], p_teacher[5], p_teacher[6] = 0.6, 0.3, 0.05, 0.85  # 5: compliance, 6: refusal opener
    monkeypatch.setattr(openers, "first_token_probs", lambda *a, **k: (p_base, p_teacher))
    teacher = SteeredTeacher(model, tok, Direction(torch.zeros(model.config.hidden_size), 1, -1))
    name = tok.convert_ids_to_tokens(5)
    report = openers.opener_report(teacher, PROMPTS, torch.tensor([6, 7]))
    assert [r["token"] for r in report["uncontrolled_openers"]] == [name]
    assert report["note"].startswith(f"first answer token on the training prompts, not in S: {name!r} "
                                     "(base 0.60, teacher 0.05). The paper loss")
    assert report["mass_S_base"] == pytest.approx(0.3 + 0.1 / (vocab - 2), abs=1e-6)
    assert openers.opener_report(teacher, PROMPTS, torch.tensor([6, 7]), restrict="binned")["note"] is None
    assert openers.opener_report(teacher, PROMPTS, torch.tensor([5, 6]))["note"] is None  # S holds it
    assert openers.opener_report(teacher, PROMPTS, None)["note"] is None  # full / top-K vocabulary: no S
